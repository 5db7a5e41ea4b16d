import {mkdtemp, readFile, rm, writeFile, mkdir} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {PgiError} from '../../../src/errors.js'
import {checkVersionOfLine} from '../../../src/image/build.js'
import {lockPath} from '../../../src/image/lock.js'
import {loadRecipe, parseRecipe, parseRecipeRef, recipePath} from '../../../src/image/recipe.js'

const MIN = `name: demo
version: 0.1.0
suite: bookworm
kernel: {package: linux-image-cloud-amd64}
packages: [openssh-server]
`

function errorOf(fn: () => unknown): PgiError {
  try {
    fn()
  } catch (e) {
    return e as PgiError
  }
  throw new Error('expected an error')
}

describe('image recipes', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, {recursive: true, force: true})
  })

  it('parses a minimal recipe with defaults', () => {
    const r = parseRecipe(MIN, '/x/image.yaml')
    expect(r.name).toBe('demo')
    expect(r.architecture).toBe('amd64')
    expect(r.components).toEqual(['main'])
    expect(r.disk).toEqual({size: '2G', label: 'root'})
    expect(r.services).toEqual({enable: [], disable: []})
    expect(r.kernel.cmdline).toContain('console=ttyS0')
  })

  it('parses the shipped pgi-tryton recipe', async () => {
    const r = await loadRecipe('pgi-tryton')
    expect(r.name).toBe('pgi-tryton')
    expect(r.suite).toBe('bookworm')
    expect(r.packages).toEqual(expect.arrayContaining(['postgresql-15', 'tryton-server', 'tryton-modules-account-fr', 'tryton-sao', 'cloud-init', 'qemu-guest-agent']))
    expect(r.ports).toEqual({ssh: 22, web: 80, https: 443, jsonrpc: 8000, postgresql: 5432})
    expect(r.digest).toMatch(/^[0-9a-f]{64}$/)
    expect(recipePath('pgi-tryton')).toBe(r.path)
  })

  it('rejects unknown keys with the line number', () => {
    const e = errorOf(() => parseRecipe(MIN + 'colour: blue\n', '/x/image.yaml'))
    expect(e.code).toBe('PGI_IMAGE_INVALID')
    expect(e.message).toContain('unknown key "colour"')
    expect(e.where?.line).toBe(1)
  })

  it('points at the bad line of a nested value', () => {
    const text = MIN + 'files:\n  - {src: files, dest: /}\n  - {src: a, dest: relative/path}\n'
    const e = errorOf(() => parseRecipe(text, '/x/image.yaml'))
    expect(e.message).toContain('/files/1/dest')
    expect(e.where?.line).toBe(8)
  })

  it('refuses duplicate keys, bad versions, bad package names and sources outside the folder', () => {
    expect(errorOf(() => parseRecipe(MIN + 'name: again\n', 'r.yaml')).message).toMatch(/unique/i)
    expect(errorOf(() => parseRecipe(MIN.replace('0.1.0', 'latest'), 'r.yaml')).message).toContain('/version')
    expect(errorOf(() => parseRecipe(MIN.replace('[openssh-server]', '[Open SSH]'), 'r.yaml')).message).toContain('/packages/0')
    expect(errorOf(() => parseRecipe(MIN + 'files: [{src: ../etc, dest: /etc}]\n', 'r.yaml')).message).toContain('inside the recipe folder')
    expect(errorOf(() => parseRecipe(MIN + 'services: {enable: [notaunit]}\n', 'r.yaml')).message).toContain('/services/enable/0')
  })

  it('digests the files a recipe installs (a changed file changes the digest)', async () => {
    const d = await mkdtemp(join(tmpdir(), 'pgi-recipe-'))
    dirs.push(d)
    await mkdir(join(d, 'files'))
    await writeFile(join(d, 'image.yaml'), MIN + 'files: [{src: files, dest: /}]\n')
    await writeFile(join(d, 'files', 'a.conf'), 'one\n')
    const a = await loadRecipe(d)
    expect((await loadRecipe(join(d, 'image.yaml'))).digest).toBe(a.digest)
    await writeFile(join(d, 'files', 'a.conf'), 'two\n')
    const b = await loadRecipe(d)
    expect(b.digest).not.toBe(a.digest)
    expect(await readFile(join(d, 'image.yaml'), 'utf8')).toContain('files')
  })

  it('says where a missing recipe was looked for', async () => {
    await expect(loadRecipe('/nonexistent/image.yaml')).rejects.toMatchObject({code: 'PGI_IMAGE_NOT_FOUND'})
  })
})

describe('image lines (pgi-tryton@1, pgi-tryton@2)', () => {
  const dirs: string[] = []
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, {recursive: true, force: true})
  })

  it('pgi-tryton is line 1 (Debian 12), pgi-tryton@2 line 2 (Debian 13, PostgreSQL 17, Tryton 7.0): one image name', async () => {
    const one = await loadRecipe('pgi-tryton')
    expect(one.line).toBe('1')
    expect((await loadRecipe('pgi-tryton@1')).path).toBe(one.path)
    const two = await loadRecipe('pgi-tryton@2')
    expect(two.path).toBe(join(one.dir, 'image@2.yaml'))
    expect(two).toMatchObject({name: 'pgi-tryton', suite: 'trixie', line: '2'})
    expect(two.version).toMatch(/^2\./)
    expect(two.packages).toEqual(expect.arrayContaining(['postgresql-17', 'tryton-server', 'tryton-modules-account-fr', 'tryton-sao']))
    expect(two.packages).not.toContain('postgresql-15')
    // the same files: one copy of the in-image tools for both lines
    expect(two.files).toEqual(one.files)
    expect(lockPath(two)).toBe(join(one.dir, 'image@2.lock'))
    expect(lockPath(one)).toBe(join(one.dir, 'image.lock'))
  })

  it('a version in the reference, and a line that does not exist', async () => {
    expect(parseRecipeRef('pgi-tryton@2.0.1')).toMatchObject({line: '2', version: '2.0.1'})
    expect((await loadRecipe('pgi-tryton@2.0.1')).requestedVersion).toBe('2.0.1')
    const e = await loadRecipe('pgi-tryton@7').then(() => undefined, (err: PgiError) => err)
    expect(e?.code).toBe('PGI_IMAGE_NOT_FOUND')
    expect(e?.message).toContain('no line 7')
    expect(e?.message).toContain('1 in image.yaml, 2 in image@2.yaml')
  })

  it('refuses a version of another line, and a line file whose version is not of its line', async () => {
    const one = await loadRecipe('pgi-tryton')
    await expect(checkVersionOfLine(one, '1.4.2')).resolves.toBeUndefined()
    const e = await checkVersionOfLine(one, '2.0.0').then(() => undefined, (err: PgiError) => err)
    expect(e).toMatchObject({code: 'PGI_USAGE'})
    expect(e?.suggestions?.[0]).toContain('pgi image build pgi-tryton@2 --version 2.0.0')
    await expect(checkVersionOfLine(one, 'latest')).rejects.toMatchObject({code: 'PGI_USAGE'})
    // a single-line recipe (lab-test, a Région's own) builds any version
    const d = await mkdtemp(join(tmpdir(), 'pgi-recipe-'))
    dirs.push(d)
    await writeFile(join(d, 'image.yaml'), MIN)
    const single = await loadRecipe(d)
    expect(single.line).toBeUndefined()
    await expect(checkVersionOfLine(single, '7.0.0')).resolves.toBeUndefined()
    await writeFile(join(d, 'image@2.yaml'), MIN)
    await expect(loadRecipe(join(d, 'image@2.yaml'))).rejects.toMatchObject({code: 'PGI_IMAGE_INVALID', message: expect.stringContaining('builds the versions 2.x')})
  })
})
