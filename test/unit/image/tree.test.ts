import {chmod, mkdir, mkdtemp, rm, symlink, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {imageDir, recipeDiskBytes as parseSize} from '../../../src/image/build.js'
import {resolveSources} from '../../../src/image/sources.js'
import {digestTree, formatTree, listTree, treeDigest} from '../../../src/image/tree.js'

describe('file trees (reproducibility checks)', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, {recursive: true, force: true})
  })

  async function tree(): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), 'pgi-tree-'))
    dirs.push(d)
    await mkdir(join(d, 'etc'))
    await writeFile(join(d, 'etc', 'a.conf'), 'a\n')
    await writeFile(join(d, 'run.sh'), '#!/bin/sh\n')
    await chmod(join(d, 'run.sh'), 0o755)
    await symlink('etc/a.conf', join(d, 'link'))
    return d
  }

  it('lists paths, types, modes, owners and content hashes, sorted', async () => {
    const d = await tree()
    const entries = await listTree(d)
    expect(entries.map((e) => `${e.type} ${e.path}`)).toEqual(['d /', 'd /etc', 'f /etc/a.conf', 'l /link', 'f /run.sh'])
    expect(entries.find((e) => e.path === '/link')?.content).toBe('etc/a.conf')
    expect(entries.find((e) => e.path === '/run.sh')?.mode).toBe('0755')
    expect(formatTree(entries)).toContain(' /etc/a.conf\n')
  })

  it('the same tree gives the same digest; a mode or a byte changes it', async () => {
    const a = await tree()
    const b = await tree()
    expect(digestTree(await listTree(a))).toBe(digestTree(await listTree(b)))
    await chmod(join(b, 'etc', 'a.conf'), 0o600)
    expect(digestTree(await listTree(a))).not.toBe(digestTree(await listTree(b)))
    const before = await treeDigest(a)
    await writeFile(join(a, 'etc', 'a.conf'), 'b\n')
    expect(await treeDigest(a)).not.toBe(before)
  })

  it('sizes, folders and mirror arguments', async () => {
    expect(parseSize('3G')).toBe(3 * 1024 ** 3)
    expect(parseSize('512M')).toBe(512 * 1024 ** 2)
    expect(() => parseSize('3T')).toThrow(/3G or 2048M/)
    expect(imageDir('/i', 'pgi-tryton', '1.0.0')).toBe('/i/pgi-tryton/1.0.0')
    await expect(resolveSources('/nonexistent.sources', 'bookworm', '/nonexistent-work')).rejects.toMatchObject({code: 'PGI_USAGE'})
    expect(await resolveSources('file:///srv/mirror', 'bookworm', '/nonexistent-work')).toEqual({arg: 'file:///srv/mirror', origin: '--mirror URL', suites: []})
  })
})
