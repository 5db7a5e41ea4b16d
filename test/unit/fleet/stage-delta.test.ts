/**
 * The host side of delta staging that needs no VM: the signed delivery.json read from a store
 * over HTTP (a server on loopback, as nginx serves `pgi image publish` output) or from a folder,
 * and the progress and ETA computed from pgi-stage-delta's status.
 */
import {createServer, type Server} from 'node:http'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import type {AddressInfo} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {describeProgress, loadDelivery, progressOf} from '../../../src/fleet/stage-delta.js'
import {exportTrustedKey, generateSigningKey, keyId, publicKeyOf, signBytes} from '../../../src/image/manifest.js'
import {CHUNK_SIZE, type DeliveryManifest} from '../../../src/image/publish.js'

let tmp: string
let images: string
let store: string
let server: Server
let url: string
const RAW = 'cd'.repeat(32)

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-stage-delta-unit-'))
  images = join(tmp, 'images')
  store = join(tmp, 'store')
  const key = generateSigningKey()
  await exportTrustedKey(images, publicKeyOf(key))
  const d: DeliveryManifest = {
    format: 1,
    name: 'pgi-tryton',
    version: '1.0.1',
    image_manifest_sha256: 'ef'.repeat(32),
    engine: {tool: 'casync', digest: 'sha512-256', compression: 'zstd', chunk_size: CHUNK_SIZE},
    store: 'default.castr',
    index: {file: 'disk.caibx', sha256: 'ab'.repeat(32), size_bytes: 1000},
    raw: {sha256: RAW, size_bytes: 3 * 2 ** 30},
    chunks: {count: 1, distinct: 1, stored_bytes: 10},
    signing: {algorithm: 'ed25519', key_id: keyId(publicKeyOf(key))},
  }
  const bytes = Buffer.from(JSON.stringify(d, null, 2) + '\n')
  await mkdir(join(store, 'pgi-tryton', '1.0.1'), {recursive: true})
  await writeFile(join(store, 'pgi-tryton', '1.0.1', 'delivery.json'), bytes)
  await writeFile(join(store, 'pgi-tryton', '1.0.1', 'delivery.sig'), signBytes(bytes, key))
  // a static server of the store folder, on loopback
  server = createServer((req, res) => {
    readFile(join(store, decodeURIComponent(new URL(req.url!, 'http://x').pathname)))
      .then((b) => res.writeHead(200, {'content-length': b.length}).end(b))
      .catch(() => res.writeHead(404).end('not found'))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`
})

afterAll(async () => {
  await new Promise((r) => server?.close(r))
  if (tmp) await rm(tmp, {recursive: true, force: true})
})

describe('loadDelivery', () => {
  it('reads and verifies delivery.json over HTTP and from a folder: the same digests, the index path in the store', async () => {
    for (const s of [url, store]) {
      const d = await loadDelivery({store: s, name: 'pgi-tryton', version: '1.0.1', imagesRoot: images, rawSha256: RAW})
      expect(d.manifest.raw.sha256).toBe(RAW)
      expect(d.indexPath).toBe('pgi-tryton/1.0.1/disk.caibx')
      expect(d.sha256).toMatch(/^[0-9a-f]{64}$/)
    }
  })

  it('a version the store does not hold, a relative folder, an unreachable server: PGI_STORE_UNREACHABLE naming the file', async () => {
    await expect(loadDelivery({store: url, name: 'pgi-tryton', version: '9.9.9', imagesRoot: images})).rejects.toMatchObject({code: 'PGI_STORE_UNREACHABLE', message: expect.stringMatching(/pgi-tryton\/9\.9\.9\/delivery\.json: HTTP 404/)})
    await expect(loadDelivery({store: 'relative/store', name: 'pgi-tryton', version: '1.0.1', imagesRoot: images})).rejects.toMatchObject({code: 'PGI_STORE_UNREACHABLE', message: expect.stringMatching(/not an http\(s\) URL nor an absolute folder/)})
    await expect(loadDelivery({store: 'http://127.0.0.1:1/', name: 'pgi-tryton', version: '1.0.1', imagesRoot: images})).rejects.toMatchObject({code: 'PGI_STORE_UNREACHABLE'})
  })

  it('a delivery.json listing a malformed patch (a file name outside the version\'s folder): PGI_DELIVERY_INVALID (exit 7)', async () => {
    const key = generateSigningKey()
    const keys = join(tmp, 'patch-keys')
    await exportTrustedKey(keys, publicKeyOf(key))
    const d = JSON.parse(await readFile(join(store, 'pgi-tryton', '1.0.1', 'delivery.json'), 'utf8')) as DeliveryManifest
    const dir = join(store, 'pgi-tryton', '1.0.2')
    await mkdir(dir, {recursive: true})
    const write = async (patches: unknown[]) => {
      const bytes = Buffer.from(JSON.stringify({...d, version: '1.0.2', patches, signing: {algorithm: 'ed25519', key_id: keyId(publicKeyOf(key))}}, null, 2) + '\n')
      await writeFile(join(dir, 'delivery.json'), bytes)
      await writeFile(join(dir, 'delivery.sig'), signBytes(bytes, key))
    }
    const good = {from: '1.0.1', from_raw_sha256: RAW, file: 'from-1.0.1.pgipatch', sha256: 'aa'.repeat(32), size_bytes: 1000, chunks: 3, chunk_bytes: 200_000}
    await write([good])
    expect((await loadDelivery({store, name: 'pgi-tryton', version: '1.0.2', imagesRoot: keys})).manifest.patches).toEqual([good])
    await write([{...good, file: '../1.0.1/disk.caibx'}])
    await expect(loadDelivery({store, name: 'pgi-tryton', version: '1.0.2', imagesRoot: keys})).rejects.toMatchObject({code: 'PGI_DELIVERY_INVALID', exitCode: 7, message: expect.stringMatching(/malformed patch/)})
    await write([{...good, size_bytes: -1}])
    await expect(loadDelivery({store, name: 'pgi-tryton', version: '1.0.2', imagesRoot: keys})).rejects.toMatchObject({code: 'PGI_DELIVERY_INVALID'})
  })

  it('an images folder that does not trust the key, or a local image with other bits: PGI_DELIVERY_INVALID (exit 7)', async () => {
    await expect(loadDelivery({store: url, name: 'pgi-tryton', version: '1.0.1', imagesRoot: join(tmp, 'no-keys')})).rejects.toMatchObject({code: 'PGI_DELIVERY_INVALID', exitCode: 7})
    await expect(loadDelivery({store: url, name: 'pgi-tryton', version: '1.0.1', imagesRoot: images, rawSha256: '00'.repeat(32)})).rejects.toMatchObject({code: 'PGI_DELIVERY_INVALID', exitCode: 7})
  })
})

describe('progress of a staging', () => {
  it('bytes done / total, fetched over every run, and an ETA from the rate since the run started', () => {
    const now = new Date('2026-12-05T10:10:00Z')
    const p = progressOf({state: 'running', phase: 'extract', started: '2026-12-05T10:00:00Z', disk_done: 2 ** 30, disk_total: 3 * 2 ** 30, fetched_total: 12_500_000, runs: 2}, now)
    // 1 GiB in 600 s: 2 GiB more take 1200 s
    expect(p).toEqual({state: 'running', phase: 'extract', diskDone: 2 ** 30, diskTotal: 3 * 2 ** 30, fetched: 12_500_000, runs: 2, etaS: 1200})
    expect(describeProgress(p)).toBe('extract 33% of 3221.2 MB, 12.5 MB fetched, ETA 20 min')
    const v = progressOf({state: 'running', phase: 'verify', started: '2026-12-05T10:00:00Z', disk_done: 3 * 2 ** 30, verify_done: 2 ** 30, disk_total: 3 * 2 ** 30, fetched_total: 1}, now)
    expect(v.diskDone).toBe(2 ** 30)
    expect(v.etaS).toBeUndefined()
    expect(progressOf({state: 'done', phase: 'done', disk_total: 10, disk_done: 3, fetched_total: 5}, now)).toMatchObject({diskDone: 10, diskTotal: 10})
  })

  it('with a binary patch: its bytes received, then the chunks rebuilt from the VM\'s own bytes', () => {
    const now = new Date('2026-12-05T10:10:00Z')
    const f = progressOf({state: 'running', phase: 'patch', started: '2026-12-05T10:00:00Z', disk_total: 3 * 2 ** 30, fetched_bytes: 5_200_000, patch_done: 4_500_000, patch_total: 20_000_000}, now)
    expect(f.patch).toEqual({done: 4_500_000, total: 20_000_000})
    expect(describeProgress(f)).toBe('patch 22% of 20.0 MB, 5.2 MB fetched')
    const r = progressOf({state: 'running', phase: 'rebuild', disk_total: 3 * 2 ** 30, fetched_bytes: 20_700_000, patch_done: 20_000_000, patch_total: 20_000_000, rebuild_done: 1200, rebuild_total: 3383, rebuilt: 1190}, now)
    expect(r.patch).toMatchObject({rebuildDone: 1200, rebuildTotal: 3383, rebuilt: 1190})
    expect(describeProgress(r)).toBe("rebuilding chunks from this VM's bytes: 1200 of 3383, 20.7 MB fetched")
  })
})
