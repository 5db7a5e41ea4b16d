/**
 * `pgi image list` and `pgi image verify` through the bundled CLI, as a technician runs them before
 * a deploy: the images folder from --images-dir or PGI_IMAGES_DIR; a signed image verifies; a
 * modified image or manifest, a missing version or a bad reference is refused with its code, its
 * place and the exit code of the README's table; nothing is written into the folder.
 */
import {appendFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {assertBuilt, runPgi} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'

let tmp: string
let images: string
let env: NodeJS.ProcessEnv

const pgi = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => runPgi(args, {env: {...env, ...extraEnv}, timeoutMs: 60_000})

/** Every file of the folder with its size and modification time: what "nothing written" compares. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, {recursive: true, withFileTypes: true})) {
    if (!e.isFile()) continue
    const p = join(e.parentPath, e.name)
    const s = await stat(p)
    out.push(`${p} ${s.size} ${s.mtimeMs}`)
  }
  return out.sort()
}

beforeAll(async () => {
  assertBuilt()
  tmp = await mkdtemp(join(tmpdir(), 'pgi-image-list-'))
  images = join(tmp, 'images')
  env = {...process.env, PGI_STATE_DIR: join(tmp, 'state'), PGI_IMAGES_DIR: ''}
  await signedTestImage(images, 'pgi-tryton', '1.0.0')
  await signedTestImage(images, 'pgi-tryton', '1.1.0')
  await signedTestImage(images, 'lab-test', '0.1.0')
})

afterAll(async () => {
  if (tmp) await rm(tmp, {recursive: true, force: true})
})

describe('pgi image list', () => {
  it('lists every version with its size, digest and key, from --images-dir or PGI_IMAGES_DIR', async () => {
    const r = await pgi(['image', 'list', '--images-dir', images, '--json'])
    expect(r.exitCode, r.stderr).toBe(0)
    const rows = r.json!.result as {name: string; version: string; sha256: string; keyId: string}[]
    expect(rows.map((x) => `${x.name}@${x.version}`).sort()).toEqual(['lab-test@0.1.0', 'pgi-tryton@1.0.0', 'pgi-tryton@1.1.0'])
    for (const x of rows) expect(x.sha256).toMatch(/^[0-9a-f]{64}$/)
    const viaEnv = await pgi(['image', 'list', '--json'], {PGI_IMAGES_DIR: images})
    expect(viaEnv.json!.result).toEqual(rows)
    const table = await pgi(['image', 'list', '--images-dir', images])
    expect(table.exitCode).toBe(0)
    expect(table.stdout).toContain('pgi-tryton')
    expect(table.stdout).toContain('1.1.0')
  })

  it('an empty folder, or the default one before the first build, lists nothing (exit 0); a named folder that is missing is an error', async () => {
    await mkdir(join(tmp, 'empty'))
    const r = await pgi(['image', 'list', '--images-dir', join(tmp, 'empty'), '--json'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.json!.result).toEqual([])
    const fresh = await pgi(['image', 'list', '--json'], {PGI_STATE_DIR: join(tmp, 'fresh-state'), PGI_IMAGES_DIR: undefined})
    expect(fresh.exitCode, fresh.stderr).toBe(0)
    expect(fresh.json!.result).toEqual([])
    for (const env of [{}, {PGI_IMAGES_DIR: join(tmp, 'none')}]) {
      const bad = await pgi(['image', 'list', ...('PGI_IMAGES_DIR' in env ? [] : ['--images-dir', join(tmp, 'none')]), '--json'], env)
      expect(bad.exitCode, bad.stderr).toBe(2)
      expect(bad.json!.error).toMatchObject({code: 'PGI_IMAGE_NOT_FOUND', message: `images folder ${join(tmp, 'none')}: no such folder`})
    }
  })
})

describe('pgi image verify', () => {
  it('verifies a signed image by version or NAME@VERSION', async () => {
    const before = await snapshot(images)
    for (const ref of ['1.0.0', 'pgi-tryton@1.1.0', 'lab-test@0.1.0']) {
      const r = await pgi(['image', 'verify', ref, '--images-dir', images, '--json'])
      expect(r.exitCode, `${ref}: ${r.stderr}`).toBe(0)
      expect(r.json!.result).toMatchObject({verified: true})
    }
    expect(await snapshot(images)).toEqual(before)
  })

  it('refuses a version that is not there (PGI_IMAGE_NOT_FOUND, the folder named) and a malformed reference (exit 2)', async () => {
    const r = await pgi(['image', 'verify', '9.9.9', '--images-dir', images, '--json'])
    expect(r.exitCode).toBe(1)
    expect(r.json!.error!.code).toBe('PGI_IMAGE_NOT_FOUND')
    expect(r.json!.error!.message).toContain(images)
    const bad = await pgi(['image', 'verify', 'pgi-tryton@', '--images-dir', images, '--json'])
    expect(bad.exitCode).toBe(2)
    expect(bad.stderr + bad.stdout).toMatch(/version/i)
  })

  it('refuses a modified image and a modified manifest (PGI_IMAGE_INVALID, exit 7), changing nothing', async () => {
    const {dir, file} = await signedTestImage(images, 'pgi-tryton', '2.0.0')
    await appendFile(join(dir, file), 'x')
    const before = await snapshot(images)
    const r = await pgi(['image', 'verify', '2.0.0', '--images-dir', images, '--json'])
    expect(r.exitCode).toBe(7)
    expect(r.json!.error!.code).toBe('PGI_IMAGE_INVALID')
    expect(await snapshot(images)).toEqual(before)

    const m = await signedTestImage(images, 'pgi-tryton', '2.0.1')
    const manifestFile = join(m.dir, 'manifest.json')
    const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as {version: string}
    await writeFile(manifestFile, JSON.stringify({...manifest, built_by: 'someone else'}))
    const r2 = await pgi(['image', 'verify', '2.0.1', '--images-dir', images, '--json'])
    expect(r2.exitCode).toBe(7)
    expect(r2.json!.error!.code).toBe('PGI_IMAGE_INVALID')
  })
})
