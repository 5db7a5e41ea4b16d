/**
 * `pgi image publish` through the bundled CLI: a real qcow2 (qemu-img), chunked by the real casync
 * into a store; the next version adds only its new chunks; the real `casync extract`, seeded with
 * the older disk, rebuilds the newer one bit for bit from the store; delivery.json's signature
 * verifies with the image key; bad inputs are refused with their place and nothing is written.
 */
import {execFileSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadTrustedKeys, SIGNING_KEY_SECRET, verifyBytes} from '../../../src/image/manifest.js'
import {chunkPath, parseCaibx, storedChunks, type DeliveryManifest} from '../../../src/image/publish.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, runPgi} from '../../helpers/cli.js'
import {signedQcow2Image} from '../../helpers/signed-image.js'

const MiB = 1024 * 1024
let tmp: string
let images: string
let store: string
let env: NodeJS.ProcessEnv
let v1Raw: string
let v2Sha: string

const pgi = (args: string[]) => runPgi([...args, '--images-dir', images, '--secrets-dir', join(tmp, 'secrets'), '--json'], {env, timeoutMs: 120_000})

beforeAll(async () => {
  assertBuilt()
  tmp = await mkdtemp(join(tmpdir(), 'pgi-publish-'))
  images = join(tmp, 'images')
  store = join(tmp, 'store')
  env = {...process.env, PGI_STATE_DIR: join(tmp, 'state')}
  // 1.0.0: 6 MiB of content in a 64 MiB disk; 1.1.0: the same with 256 KiB changed and 256 KiB added
  const base = randomBytes(6 * MiB)
  const v1 = await signedQcow2Image(images, 'pgi-tryton', '1.0.0', {virtualBytes: 64 * MiB, parts: [{offset: 0, data: base}]})
  const changed = Buffer.from(base)
  randomBytes(256 * 1024).copy(changed, 3 * MiB)
  const v2 = await signedQcow2Image(images, 'pgi-tryton', '1.1.0', {virtualBytes: 64 * MiB, parts: [{offset: 0, data: changed}, {offset: 32 * MiB, data: randomBytes(256 * 1024)}], key: v1.key})
  v2Sha = v2.rawSha256
  v1Raw = join(tmp, 'v1.raw')
  execFileSync('qemu-img', ['convert', '-O', 'raw', join(v1.dir, v1.file), v1Raw])
  const secrets = await SecretStore.open({dir: join(tmp, 'secrets'), recipients: [], env})
  await secrets.put(SIGNING_KEY_SECRET, v1.key)
}, 120_000)

afterAll(async () => {
  if (tmp) await rm(tmp, {recursive: true, force: true})
})

describe('pgi image publish', () => {
  it('writes the chunk store, the index and a signed delivery.json; a republish is a no-op', async () => {
    const r = await pgi(['image', 'publish', '1.0.0', '--store', store])
    expect(r.exitCode, r.stderr).toBe(0)
    const res = r.json!.result
    expect(res.published).toBe(true)
    expect(res.chunks.newChunks).toBe(res.chunks.distinct)
    const dir = join(store, 'pgi-tryton', '1.0.0')
    expect((await readdir(dir)).sort()).toEqual(['delivery.json', 'delivery.sig', 'disk.caibx', 'manifest.json', 'manifest.sig'])
    const deliveryBytes = await readFile(join(dir, 'delivery.json'))
    const delivery = JSON.parse(deliveryBytes.toString()) as DeliveryManifest
    const key = (await loadTrustedKeys(images)).get(delivery.signing.key_id)!
    expect(verifyBytes(deliveryBytes, await readFile(join(dir, 'delivery.sig'), 'utf8'), key)).toBe(true)
    expect(verifyBytes(Buffer.from(deliveryBytes.toString().replace('"1.0.0"', '"1.0.1"')), await readFile(join(dir, 'delivery.sig'), 'utf8'), key)).toBe(false)
    const index = await readFile(join(dir, 'disk.caibx'))
    expect(createHash('sha256').update(index).digest('hex')).toBe(delivery.index.sha256)
    const chunks = parseCaibx(index)
    expect(chunks.reduce((n, c) => n + c.size, 0)).toBe(64 * MiB)
    for (const c of chunks) expect(existsSync(chunkPath(join(store, 'default.castr'), c.id))).toBe(true)
    expect(delivery.raw.size_bytes).toBe(64 * MiB)
    // the same bits again: nothing written, said so
    const again = await pgi(['image', 'publish', '1.0.0', '--store', store])
    expect(again.exitCode, again.stderr).toBe(0)
    expect(again.json!.result.published).toBe(false)
    expect(again.json!.result.chunks.newChunks).toBe(0)
  }, 180_000)

  it('the next version adds only its new chunks, and casync seeded with the old disk rebuilds it bit for bit', async () => {
    const r = await pgi(['image', 'publish', '1.1.0', '--store', store])
    expect(r.exitCode, r.stderr).toBe(0)
    const c = r.json!.result.chunks
    // 512 KiB of new content in 6.25 MiB: a few chunks around each change, far from the whole
    expect(c.newBytes).toBeLessThan(c.storedBytes * 0.35)
    expect(c.newChunks).toBeLessThan(c.distinct)
    const out = join(tmp, 'v2.raw')
    execFileSync('casync', ['extract', `--store=${join(store, 'default.castr')}`, `--seed=${v1Raw}`, join(store, 'pgi-tryton', '1.1.0', 'disk.caibx'), out])
    expect(createHash('sha256').update(await readFile(out)).digest('hex')).toBe(v2Sha)
    // a binary patch from the newest older version of the line, listed in the signed delivery.json
    const delivery = JSON.parse(await readFile(join(store, 'pgi-tryton', '1.1.0', 'delivery.json'), 'utf8')) as DeliveryManifest
    expect(delivery.patches).toHaveLength(1)
    const patch = delivery.patches![0]!
    expect(patch).toMatchObject({from: '1.0.0', file: 'from-1.0.0.pgipatch', chunks: c.newChunks})
    const packBytes = await readFile(join(store, 'pgi-tryton', '1.1.0', patch.file))
    expect(createHash('sha256').update(packBytes).digest('hex')).toBe(patch.sha256)
    expect(packBytes.subarray(0, 8).toString()).toBe('PGIPATCH')
    expect(r.json!.result.patches).toMatchObject([{from: '1.0.0', chunks: c.newChunks}])
  }, 180_000)

  it('--patch-from a version the store does not hold, or with --no-patch: exit 2, the flag named, nothing written', async () => {
    await signedQcow2Image(images, 'pgi-tryton', '1.4.0', {virtualBytes: 16 * MiB, parts: [{offset: 0, data: randomBytes(MiB)}]})
    const before = (await storedChunks(join(store, 'default.castr'))).size
    const unknown = await pgi(['image', 'publish', '1.4.0', '--store', store, '--patch-from', '0.9.0'])
    expect(unknown.exitCode).toBe(2)
    expect(unknown.json!.error!.where).toEqual({flag: 'patch-from'})
    expect(unknown.json!.error!.message).toMatch(/pgi-tryton 0\.9\.0 is not published in/)
    const both = await pgi(['image', 'publish', '1.4.0', '--store', store, '--patch-from', '1.0.0', '--no-patch'])
    expect(both.exitCode).toBe(2)
    expect(existsSync(join(store, 'pgi-tryton', '1.4.0'))).toBe(false)
    expect((await storedChunks(join(store, 'default.castr'))).size).toBe(before)
  }, 180_000)

  it('refuses a tampered image, a store that is a file, and a machine without the signing key; nothing is written', async () => {
    // a flipped byte in the qcow2: the signed manifest no longer matches (exit 7)
    await signedQcow2Image(images, 'pgi-tryton', '1.2.0', {virtualBytes: 16 * MiB, parts: [{offset: 0, data: randomBytes(MiB)}]})
    const q = join(images, 'pgi-tryton', '1.2.0', 'pgi-tryton-1.2.0.qcow2')
    const bytes = await readFile(q)
    bytes[bytes.length - 10] ^= 0xff
    await writeFile(q, bytes)
    const before = (await storedChunks(join(store, 'default.castr'))).size
    const bad = await pgi(['image', 'publish', '1.2.0', '--store', store])
    expect(bad.exitCode).toBe(7)
    expect(bad.json!.error!.code).toBe('PGI_IMAGE_INVALID')
    expect(existsSync(join(store, 'pgi-tryton', '1.2.0'))).toBe(false)
    expect((await storedChunks(join(store, 'default.castr'))).size).toBe(before)
    // --store names a file
    await writeFile(join(tmp, 'a-file'), 'x')
    const notDir = await pgi(['image', 'publish', '1.0.0', '--store', join(tmp, 'a-file', 'store')])
    expect(notDir.exitCode).toBe(2)
    expect(notDir.json!.error!.where).toEqual({flag: 'store'})
    // no signing key in this machine's secret store: refused before the version is written
    await signedQcow2Image(images, 'pgi-tryton', '1.3.0', {virtualBytes: 16 * MiB, parts: [{offset: 0, data: randomBytes(MiB)}]})
    const noKey = await runPgi(['image', 'publish', '1.3.0', '--store', store, '--images-dir', images, '--secrets-dir', join(tmp, 'other-secrets'), '--json'], {env, timeoutMs: 120_000})
    expect(noKey.exitCode).not.toBe(0)
    expect(noKey.json!.error!.code).toBe('PGI_SECRET_MISSING')
    expect(noKey.json!.error!.message).toContain('image-signing/ed25519')
    expect(existsSync(join(store, 'pgi-tryton', '1.3.0'))).toBe(false)
    expect((await storedChunks(join(store, 'default.castr'))).size).toBe(before)
    // no work folder left behind by any of them
    expect((await readdir(store)).filter((f) => f.startsWith('.publish-'))).toEqual([])
  }, 180_000)

  it('parseCaibx refuses what is not a casync blob index', () => {
    expect(() => parseCaibx(Buffer.alloc(200))).toThrow(/not a casync blob index/)
    expect(() => parseCaibx(Buffer.from('hello'))).toThrow(/too short/)
  })
})
