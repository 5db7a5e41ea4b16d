import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {formatDeb822, parseDeb822, parseOneLine, resolveSources, sourcesForSuite, splitSuite} from '../../../src/image/sources.js'

// example host names only (RFC 2606): what pgi reads is the host's own file, never a name of its own
const HOST_DEB822 = `Types: deb
# a comment
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://other.example.org/debian
Suites: bookworm-backports
Components: main
Enabled: no
`

const HOST_ONE_LINE = `# Debian 12
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64] http://mirror.example.org/debian bookworm main
deb http://mirror.example.org/debian bookworm-updates main  # updates
deb-src http://mirror.example.org/debian bookworm main
deb http://mirror.example.org/debian-security bookworm-security main
deb [signed-by=/etc/apt/keyrings/vendor.gpg] http://vendor.example.org/apt nodistro main
`

describe('apt sources for an image suite', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, {recursive: true, force: true})
  })

  it('parses deb822 stanzas, leaving out disabled ones and comments', () => {
    const s = parseDeb822(HOST_DEB822)
    expect(s).toHaveLength(2)
    expect(s[0]).toEqual({types: ['deb'], uris: ['http://mirror.example.org/debian'], suites: ['bookworm', 'bookworm-updates'], components: ['main'], options: [['Signed-By', '/usr/share/keyrings/debian-archive-keyring.gpg']]})
    expect(s[1].types).toEqual(['deb', 'deb-src'])
  })

  it('parses one-line entries with their options', () => {
    const s = parseOneLine(HOST_ONE_LINE)
    expect(s).toHaveLength(5)
    expect(s[0]).toEqual({types: ['deb'], uris: ['http://mirror.example.org/debian'], suites: ['bookworm'], components: ['main'], options: [['Signed-By', '/usr/share/keyrings/debian-archive-keyring.gpg'], ['Architectures', 'amd64']]})
    expect(s[1].components).toEqual(['main'])
    expect(s[2].types).toEqual(['deb-src'])
  })

  it('splits suites into release and pocket', () => {
    expect(splitSuite('trixie')).toEqual(['trixie', ''])
    expect(splitSuite('bookworm-security')).toEqual(['bookworm', '-security'])
    expect(splitSuite('bullseye/updates')).toEqual(['bullseye', '/updates'])
  })

  it('derives trixie, trixie-updates and trixie-security from a Debian 12 host, same URIs and keys', () => {
    const r = sourcesForSuite(parseDeb822(HOST_DEB822), 'trixie')!
    expect(r.from).toBe('bookworm')
    expect(r.sources.map((s) => [s.types, s.uris, s.suites])).toEqual([
      [['deb'], ['http://mirror.example.org/debian'], ['trixie', 'trixie-updates']],
      [['deb'], ['http://mirror.example.org/debian-security'], ['trixie-security']],
    ])
    expect(r.sources[1].components).toEqual(['main', 'contrib'])
    expect(r.sources.every((s) => s.options.some(([k, v]) => k === 'Signed-By' && v.endsWith('debian-archive-keyring.gpg')))).toBe(true)
    // a round trip through the deb822 text gives the same entries
    expect(parseDeb822(formatDeb822(r.sources))).toEqual(r.sources)
  })

  it('leaves out source packages and other repositories\' releases', () => {
    const r = sourcesForSuite(parseOneLine(HOST_ONE_LINE), 'trixie')!
    expect(r.sources.map((s) => s.suites.join(' '))).toEqual(['trixie', 'trixie-updates', 'trixie-security'])
    expect(r.sources.some((s) => s.uris.some((u) => u.includes('vendor')))).toBe(false)
    expect(r.sources.every((s) => s.types.join() === 'deb')).toBe(true)
  })

  it('keeps only the entries of the suite when the sources already list it', () => {
    const both = parseDeb822(HOST_DEB822 + '\nTypes: deb\nURIs: http://mirror.example.org/debian\nSuites: trixie\nComponents: main\n')
    expect(sourcesForSuite(both, 'trixie')!.sources.map((s) => s.suites)).toEqual([['trixie']])
    expect(sourcesForSuite(both, 'bookworm')!.sources.flatMap((s) => s.suites)).toEqual(['bookworm', 'bookworm-updates', 'bookworm-security'])
    expect(sourcesForSuite([], 'trixie')).toBeUndefined()
  })

  it('uses a file of the recipe\'s release as it is, and writes a derived file for another release', async () => {
    const d = await mkdtemp(join(tmpdir(), 'pgi-sources-'))
    dirs.push(d)
    await mkdir(join(d, 'etc', 'sources.list.d'), {recursive: true})
    await writeFile(join(d, 'etc', 'sources.list.d', 'debian.sources'), HOST_DEB822)
    const same = await resolveSources(undefined, 'bookworm', join(d, 'work'), join(d, 'etc'))
    expect(same).toEqual({arg: join(d, 'etc', 'sources.list.d', 'debian.sources'), origin: join(d, 'etc', 'sources.list.d', 'debian.sources'), suites: ['bookworm', 'bookworm-updates', 'bookworm-security']})
    const trixie = await resolveSources(undefined, 'trixie', join(d, 'work'), join(d, 'etc'))
    expect(trixie.arg).toBe(join(d, 'work', 'debian.sources'))
    expect(trixie.origin).toContain('trixie derived from')
    expect(trixie.suites).toEqual(['trixie', 'trixie-updates', 'trixie-security'])
    const text = await readFile(trixie.arg, 'utf8')
    expect(text.split('\n').filter((l) => !l.startsWith('#')).join('\n')).not.toContain('bookworm')
    expect(parseDeb822(text).flatMap((s) => s.suites)).toEqual(['trixie', 'trixie-updates', 'trixie-security'])
    // the override: a one-line file given as --mirror, derived the same way
    await writeFile(join(d, 'snapshot.list'), HOST_ONE_LINE)
    const m = await resolveSources(join(d, 'snapshot.list'), 'trixie', join(d, 'work2'), join(d, 'etc'))
    expect(m.arg).toBe(join(d, 'work2', 'snapshot.sources'))
    expect(m.suites).toEqual(['trixie', 'trixie-updates', 'trixie-security'])
  })

  it('says so when there is nothing to build from', async () => {
    const d = await mkdtemp(join(tmpdir(), 'pgi-sources-'))
    dirs.push(d)
    await mkdir(join(d, 'etc'), {recursive: true})
    await expect(resolveSources(undefined, 'trixie', join(d, 'work'), join(d, 'etc'))).rejects.toMatchObject({code: 'PGI_USAGE', message: expect.stringContaining('no apt sources')})
    await writeFile(join(d, 'src.list'), 'deb-src http://mirror.example.org/debian bookworm main\n')
    await expect(resolveSources(join(d, 'src.list'), 'trixie', join(d, 'work'), join(d, 'etc'))).rejects.toMatchObject({code: 'PGI_USAGE'})
  })
})
