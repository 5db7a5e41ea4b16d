/**
 * `pgi rollout stage --transfer delta|full|auto` and the staging column of `pgi rollout status`,
 * through the bundled CLI (bin/run.js) against a simulated lab whose establishments were deployed
 * by the real `pgi deploy`. The simulated guest is a 1.0.0-like image: it has no pgi-stage-delta
 * (its agent answers a missing program as a shell does, exit 127), so `auto` falls back to the full
 * transfer with that reason and `delta` fails without touching the VM. The store is a folder with
 * a version's delivery.json signed by a key the images folder trusts, as `pgi image publish`
 * writes it; the delta path itself runs in a real guest (test/e2e/rollout/delta.test.ts).
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {exportTrustedKey, generateSigningKey, keyId, publicKeyOf, signBytes} from '../../../src/image/manifest.js'
import type {Secret} from '../../../src/secret.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {assertBuilt, runPgi} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'
import {labInventoryYaml, publishTestDelivery} from './delivery-fixtures.js'
import {startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab
let tmp: string
let inv: string
let invWithStore: string
let store: string
let images: string
let env: NodeJS.ProcessEnv
const V = '2026.12.0'

const inventoryYaml = (extra: Record<string, unknown> = {}) => labInventoryYaml(lab, extra)
const publishDelivery = (dir: string, version: string, key?: Secret) => publishTestDelivery(dir, images, version, key)

const pgi = (args: string[], inventory = inv) => runPgi(['rollout', ...args, '-i', inventory, '--secrets-dir', lab.store.dir, '--images-dir', images, '--json'], {env, timeoutMs: 120_000})

async function vmConfigs(): Promise<Record<string, unknown>[]> {
  const hvs = lab.hypervisors(new (await import('../../../src/io.js')).MemoryIo('warn'))
  const out = []
  for (const e of lab.inventory.establishments) out.push((await (await hvs.get(e.hypervisor)).vmConfig(e.node, e.vmid))!)
  return out
}

beforeAll(async () => {
  assertBuilt()
  lab = await startRolloutLab({nodes: 1, perNode: 2})
  tmp = await mkdtemp(join(tmpdir(), 'pgi-stage-delta-'))
  images = join(tmp, 'images')
  store = join(tmp, 'store')
  await signedTestImage(images, 'pgi-tryton', V)
  await publishDelivery(store, V)
  inv = join(tmp, 'inventory.yaml')
  await writeFile(inv, inventoryYaml())
  invWithStore = join(tmp, 'inventory-store.yaml')
  await writeFile(invWithStore, inventoryYaml({delivery: {store_url: 'http://10.1.255.253:8080/', region_store: store}}))
  env = {...process.env, ...lab.env, CI: 'true', PGI_STATE_DIR: join(tmp, 'state')}
}, 120_000)

afterAll(async () => {
  await lab?.close()
  if (tmp) await rm(tmp, {recursive: true, force: true})
})

describe('pgi rollout stage --transfer (bin/run.js, simulated lab)', () => {
  it('bad flags: an unknown transfer, delta without a store URL, a store URL that is not http(s), --store-url with full — exit 2, nothing staged', async () => {
    const bad = await pgi(['stage', V, '--all', '--transfer', 'rsync'])
    expect(bad.exitCode).toBe(2)
    expect(bad.stdout + bad.stderr).toMatch(/transfer/)
    const noUrl = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store', store])
    expect(noUrl.exitCode).toBe(2)
    expect(noUrl.json?.error).toMatchObject({code: 'PGI_USAGE', where: {flag: 'store-url'}})
    const ftp = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'ftp://store.example/', '--store', store])
    expect(ftp.exitCode).toBe(2)
    expect(ftp.json?.error).toMatchObject({where: {flag: 'store-url'}})
    const full = await pgi(['stage', V, '--all', '--transfer', 'full', '--store-url', 'http://10.1.255.253/'])
    expect(full.exitCode).toBe(2)
    expect(full.json?.error).toMatchObject({where: {flag: 'store-url'}})
    for (const cfg of await vmConfigs()) expect(Object.keys(cfg).filter((k) => /^virtio[2-9]/.test(k))).toEqual([])
  })

  it('an unknown store: delta refuses before touching any VM (PGI_STORE_UNREACHABLE, the flag named); a tampered delivery.json is refused (exit 7)', async () => {
    const r = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'http://10.1.255.253/', '--store', join(tmp, 'no-such-store')])
    expect(r.exitCode).toBe(1)
    expect(r.json?.error).toMatchObject({code: 'PGI_STORE_UNREACHABLE', where: {flag: 'store'}})
    expect(r.json?.error.message).toMatch(/no-such-store.*pgi-tryton\/2026\.12\.0\/delivery\.json/)
    const bad = join(tmp, 'tampered')
    await publishDelivery(bad, V)
    const f = join(bad, 'pgi-tryton', V, 'delivery.json')
    await writeFile(f, (await readFile(f, 'utf8')).replace('"size_bytes": 700000', '"size_bytes": 700001'))
    const t = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'http://10.1.255.253/', '--store', bad])
    expect(t.exitCode).toBe(7)
    expect(t.json?.error).toMatchObject({code: 'PGI_DELIVERY_INVALID'})
    expect(t.json?.error.message).toMatch(/signature does not verify/)
    // signed by a key the images folder does not trust
    const other = join(tmp, 'untrusted')
    await publishDelivery(other, V)
    const key = generateSigningKey()
    const d = join(other, 'pgi-tryton', V)
    const bytes = Buffer.from((await readFile(join(d, 'delivery.json'), 'utf8')).replace(/"key_id": "[0-9a-f]+"/, `"key_id": "${keyId(publicKeyOf(key))}"`))
    await writeFile(join(d, 'delivery.json'), bytes)
    await writeFile(join(d, 'delivery.sig'), signBytes(bytes, key))
    const u = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'http://10.1.255.253/', '--store', other])
    expect(u.exitCode).toBe(7)
    expect(u.json?.error.message).toMatch(/does not trust/)
    for (const cfg of await vmConfigs()) expect(Object.keys(cfg).filter((k) => /^virtio[2-9]/.test(k))).toEqual([])
  })

  it('--transfer delta on guests without pgi-stage-delta: each establishment fails with the reason, no disk is hot-plugged (exit 1)', async () => {
    const r = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'http://10.1.255.253/', '--store', store])
    expect(r.exitCode, r.stderr).toBe(1)
    const rows = r.json!.result.rows as {uai: string; transfer: string; outcome: string; detail: string; error?: {code: string}}[]
    expect(rows).toHaveLength(2)
    for (const row of rows) {
      expect(row).toMatchObject({transfer: 'delta', outcome: 'failed', error: {code: 'PGI_STAGE_FAILED'}})
      expect(row.detail).toMatch(/no pgi-stage-delta/)
    }
    for (const cfg of await vmConfigs()) {
      expect(Object.keys(cfg).filter((k) => /^virtio[2-9]/.test(k))).toEqual([])
      expect(parseDescription(cfg.description as string)?.staged).toBeUndefined()
    }
  })

  it('--transfer auto (the default with delivery: in the inventory): falls back to the full transfer, the reason per establishment; rollout status shows it', async () => {
    const r = await pgi(['stage', V, '--all', '--bwlimit', '4M'], invWithStore)
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.json!.result.transfer).toBe('auto')
    const rows = r.json!.result.rows as {uai: string; transfer: string; outcome: string; fallback?: string}[]
    expect(rows.map((x) => [x.transfer, x.outcome])).toEqual([
      ['full', 'uploaded'],
      ['full', 'uploaded'],
    ])
    for (const row of rows) expect(row.fallback).toBe('its image has no pgi-stage-delta (built before delta delivery)')
    const s = await runPgi(['rollout', 'status', '--all', '-i', invWithStore, '--secrets-dir', lab.store.dir, '--json'], {env, timeoutMs: 60_000})
    expect(s.exitCode, s.stderr).toBe(0)
    const est = s.json!.result.establishments as {uai: string; staging?: {transfer: string; version: string; state: string; reason?: string}}[]
    for (const e of est) expect(e.staging).toEqual({version: V, transfer: 'full', state: 'uploaded', reason: 'its image has no pgi-stage-delta (built before delta delivery)'})
    // the table says it too
    const table = await runPgi(['rollout', 'status', '--all', '-i', invWithStore, '--secrets-dir', lab.store.dir], {env, timeoutMs: 60_000})
    expect(table.stdout).toMatch(/full 2026\.12\.0 uploaded \(its image has no pgi-stage-delta/)
    // an unreadable store under auto: the reason is the store's
    const gone = await pgi(['stage', V, '--all', '--transfer', 'auto', '--store-url', 'http://10.1.255.253/', '--store', join(tmp, 'gone')])
    expect(gone.exitCode, gone.stderr).toBe(0)
    for (const row of gone.json!.result.rows as {outcome: string; fallback?: string}[]) {
      expect(row.outcome).toBe('already-there')
      expect(row.fallback).toMatch(/^store: chunk store .*gone: cannot read pgi-tryton\/2026\.12\.0\/delivery\.json/)
    }
  })

  it('a store holding other bits under the same version is refused (exit 7)', async () => {
    const other = join(tmp, 'other-bits')
    await publishDelivery(other, V)
    const f = join(other, 'pgi-tryton', V, 'delivery.json')
    const key = generateSigningKey()
    await exportTrustedKey(images, publicKeyOf(key))
    const bytes = Buffer.from((await readFile(f, 'utf8')).replace(/"raw": \{\s*"sha256": "[0-9a-f]+"/, `"raw": {\n    "sha256": "${'ab'.repeat(32)}"`).replace(/"key_id": "[0-9a-f]+"/, `"key_id": "${keyId(publicKeyOf(key))}"`))
    await writeFile(f, bytes)
    await writeFile(join(other, 'pgi-tryton', V, 'delivery.sig'), signBytes(bytes, key))
    const r = await pgi(['stage', V, '--all', '--transfer', 'delta', '--store-url', 'http://10.1.255.253/', '--store', other])
    expect(r.exitCode).toBe(7)
    expect(r.json?.error.message).toMatch(/with raw sha256 (ab){32}, the local image's is/)
  })

  it('an inventory whose delivery.store_url is not an http(s) URL is invalid (exit 3, its place named)', async () => {
    const f = join(tmp, 'bad-delivery.yaml')
    await writeFile(f, inventoryYaml({delivery: {store_url: 'ftp://store.example/'}}))
    const r = await pgi(['stage', V, '--all'], f)
    expect(r.exitCode).toBe(3)
    expect(r.stderr + JSON.stringify(r.json)).toMatch(/bad-delivery\.yaml:\d+:\d+.*store_url|store_url[^\n]*bad-delivery\.yaml/s)
  })
})
