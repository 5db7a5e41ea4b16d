import {cp, mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {run} from '../../../src/exec.js'
import {openInventoryStore} from '../../../src/fleet/open.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {Hypervisors} from '../../../src/hypervisors.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Establishment} from '../../../src/inventory/types.js'
import {StderrIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'

/**
 * Delta staging end to end on a qemu-backed lab (issue: slow school links), through bin/run.js:
 *
 * 1. v1 (an image that carries pgi-stage-delta and casync) deployed to one establishment, a class
 *    database made in it; v1 and v1.1 published into one chunk store, served to the guest through
 *    the lab's uplink and link simulator (`<lab dir>/link-sim.yaml`);
 * 2. `pgi rollout stage v1.1 --transfer delta` with the link cut mid-way (cut_at_byte): the run
 *    fails with the guest's reason; run again, it resumes (fewer bytes than a whole run) and the
 *    staged disk is recorded verified; `pgi rollout status` shows it;
 * 3. `pgi rollout start v1.1`: the VM runs v1.1 on the staged disk (no import) — the disk the guest
 *    read back whole against the signed raw sha256 before the swap (a booted OS disk no longer
 *    holds the published bits: its first boot writes to it) — healthy, the databases intact;
 * 4. a store URL the guest cannot reach: `--transfer auto` falls back to the full transfer, the
 *    reason shown.
 *
 * Opt-in (PGI_E2E_DELTA=1): images of two versions with the tool in PGI_E2E_DELTA_IMAGES (the
 * images folder of a state folder where `pgi image build` made them: its `../secrets` and
 * `../age-identity.txt` sign the store), PGI_E2E_DELTA_FROM / PGI_E2E_DELTA_TO (default
 * 1.0.0 → 1.0.1). `PGI_E2E_DELTA=1 PGI_E2E_DELTA_IMAGES=<state>/images npx vitest run
 * test/e2e/rollout/delta.test.ts`.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const io = new StderrIo('warn', false)
const T0 = Date.now()
const note = (s: string) => process.stderr.write(`[delta e2e ${Math.round((Date.now() - T0) / 1000)} s] ${s}\n`)
const FROM = process.env.PGI_E2E_DELTA_FROM ?? '1.0.0'
const TO = process.env.PGI_E2E_DELTA_TO ?? '1.0.1'
const DB = 'bts_delta'

let base: string
let labDir: string
let imagesRoot: string
let storeDir: string
let env: Record<string, string>
let site: Establishment
let api: PveApi
let storeUrl: string
let newBytes = 0
let indexBytes = 0
let patchBytes: number | undefined

async function pgi(args: string[], opts: {allowFailure?: boolean; env?: Record<string, string>} = {}) {
  const t = Date.now()
  const r = await run('node', [CLI, ...args], {env: {...env, ...opts.env}, allowFailure: true, timeoutMs: 3 * 3600_000})
  note(`pgi ${args.slice(0, 3).join(' ')}: exit ${r.exitCode} in ${Math.round((Date.now() - t) / 1000)} s`)
  if (r.exitCode !== 0 && !opts.allowFailure) throw new Error(`pgi ${args.join(' ')} exited ${r.exitCode}:\n${r.stderr.slice(-4000)}\n${r.stdout.slice(-2000)}`)
  return r
}

async function guest(command: string[]): Promise<string> {
  const r = await api.agentExec(site.node, site.vmid, command, {timeoutMs: 30 * 60_000})
  if (r.exitcode !== 0) throw new Error(`${command.join(' ')} exited ${r.exitcode}: ${r.stderr || r.stdout}`)
  return r.stdout
}

const sql = async (q: string) => (await guest(['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-d', DB, '-v', 'ON_ERROR_STOP=1', '-tAc', q])).trim()

async function linkSim(site: Record<string, unknown>) {
  await writeFile(join(labDir, 'link-sim.yaml'), `uplink:\n  ports:\n    8080: {dir: ${storeDir}}\ndefault: {bandwidth: 100M}\nsites:\n  lab1/${1001}: ${JSON.stringify(site)}\n`)
  // followed every 250 ms by the lab
  await new Promise((r) => setTimeout(r, 1500))
}

async function linkBytes(): Promise<number> {
  // written by the simulator after the first bytes it carries
  const text = await readFile(join(labDir, 'run', 'link-sim.json'), 'utf8').catch(() => '{"sites": {}}')
  const s = JSON.parse(text) as {sites: Record<string, {bytesDown?: number}>}
  return Object.values(s.sites).reduce((n, x) => n + (x.bytesDown ?? 0), 0)
}

describe.skipIf(process.env.PGI_E2E_DELTA !== '1' || !process.env.PGI_E2E_DELTA_IMAGES)('pgi rollout stage --transfer delta on a qemu-backed lab', () => {
  beforeAll(async () => {
    const src = process.env.PGI_E2E_DELTA_IMAGES!
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-delta-'))
    labDir = join(base, 'lab')
    imagesRoot = join(base, 'images')
    storeDir = join(base, 'store')
    for (const v of [FROM, TO]) await cp(join(src, 'pgi-tryton', v), join(imagesRoot, 'pgi-tryton', v), {recursive: true})
    await cp(join(src, 'trusted-keys'), join(imagesRoot, 'trusted-keys'), {recursive: true})
    env = {...(process.env as Record<string, string>), PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
    delete env.PGI_INVENTORY
    delete env.PGI_IMAGES_DIR
    // both versions into one store: what v1.1 adds is what a v1 guest lacks
    for (const v of [FROM, TO]) {
      // signed with the build's key: its secret store and age identity beside its images folder
      const p = await pgi(['image', 'publish', v, '--store', storeDir, '--images-dir', imagesRoot, '--secrets-dir', join(dirname(src), 'secrets'), '--json'], {env: {PGI_AGE_IDENTITY: join(dirname(src), 'age-identity.txt')}})
      const res = (JSON.parse(p.stdout) as {result: {chunks: {newBytes: number}; index: {sizeBytes: number}; patches?: {from: string; sizeBytes: number}[]}}).result
      if (v === TO) {
        newBytes = res.chunks.newBytes
        indexBytes = res.index.sizeBytes
        // with a binary patch from FROM (images that carry the patch tool), the guest fetches the
        // patch, and chunks only for what it cannot rebuild
        patchBytes = res.patches?.find((x) => x.from === FROM)?.sizeBytes
      }
    }
    note(`published; ${TO} adds ${(newBytes / 1e6).toFixed(2)} MB of chunks, index ${(indexBytes / 1e6).toFixed(2)} MB${patchBytes ? `, patch from ${FROM} ${(patchBytes / 1e6).toFixed(2)} MB` : ''}`)
    await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '1', '--dir', labDir, '--json'])
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    // the OS disk as small as allowed: the guest's seed is its whole OS disk (casync reads it all)
    const inv = await readFile(env.PGI_INVENTORY, 'utf8')
    await writeFile(env.PGI_INVENTORY, inv.replace(/os_disk_gb: \d+/, 'os_disk_gb: 4'))
    await linkSim({})
    const inventory = await loadValidInventory(env.PGI_INVENTORY)
    site = inventory.establishments[0]!
    // the guest's uplink address in its /16 (docs/lab.md)
    storeUrl = `http://${site.network.address.split('.').slice(0, 2).join('.')}.255.253:8080/`
    const store = await openInventoryStore(inventory, env.PGI_SECRETS_DIR, env)
    api = await new Hypervisors(inventory, {store, io, env}).get(site.hypervisor)
    await pgi(['deploy', '--all', '--yes', '--json', '--image', FROM, '--images-dir', imagesRoot, '--lab-dir', labDir, '--handoff-dir', join(base, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900'])
    await guest(['/usr/local/sbin/pgi-db', 'create', DB])
    await sql(`INSERT INTO party_party (name, code, active, create_uid, create_date) SELECT 'Élève ' || g, 'DELTA-' || g, true, 0, now() FROM generate_series(1, 9) g`)
    note(`${FROM} deployed, database made`)
  }, 90 * 60_000)

  afterAll(async () => {
    await (api as (PveApi & {close?: () => Promise<void>}) | undefined)?.close?.()
    if (labDir) await pgi(['lab', 'stop', '--dir', labDir], {allowFailure: true})
    if (base && !process.env.PGI_E2E_KEEP) await rm(base, {recursive: true, force: true})
  }, 10 * 60_000)

  it('a store URL the guest cannot reach: auto falls back to the full transfer, with the reason', async () => {
    const r = await pgi(['rollout', 'stage', TO, '--all', '--transfer', 'auto', '--store-url', 'http://10.1.255.253:8081/', '--store', storeDir, '--images-dir', imagesRoot, '--json'])
    const row = (JSON.parse(r.stdout) as {result: {rows: {transfer: string; outcome: string; fallback?: string}[]}}).result.rows[0]!
    expect(row.transfer).toBe('full')
    expect(row.outcome).toBe('uploaded')
    expect(row.fallback).toMatch(/^the guest cannot reach the store at http:\/\/10\.1\.255\.253:8081\//)
    const cfg = (await api.vmConfig(site.node, site.vmid))!
    expect(Object.keys(cfg).filter((k) => /^virtio[2-9]/.test(k))).toEqual([])
  }, 20 * 60_000)

  it('stages by delta through a link cut mid-way, resumes, then rolls out on the staged disk: v1.1 runs, digest and databases intact', async () => {
    const args = ['rollout', 'stage', TO, '--all', '--transfer', 'delta', '--store-url', storeUrl, '--store', storeDir, '--images-dir', imagesRoot, '--json']
    // cut once the index and half of the new chunks (or of the patch) have crossed the link
    const cutAt = Math.round(indexBytes + (patchBytes ?? newBytes) / 2)
    await linkSim({cut_at_byte: cutAt})
    const before = await linkBytes()
    const first = await pgi(args, {allowFailure: true})
    const firstRow = (JSON.parse(first.stdout) as {result: {rows: {outcome: string; detail: string}[]}}).result.rows[0]!
    const cutBytes = (await linkBytes()) - before
    note(`first run: ${firstRow.outcome} (${firstRow.detail}); ${cutBytes} bytes down`)
    expect(first.exitCode).toBe(1)
    expect(firstRow.outcome).toBe('failed')
    let cfg = (await api.vmConfig(site.node, site.vmid))!
    let meta = parseDescription(cfg.description as string)!
    expect(meta.staged).toMatchObject({version: TO, state: 'failed'})
    const stagingKey = meta.staged!.key
    expect(String(cfg[stagingKey])).toContain('serial=pgi-stage')

    await linkSim({})
    const mid = await linkBytes()
    const second = await pgi(args)
    const row = (JSON.parse(second.stdout) as {result: {rows: {outcome: string; bytes?: {fetched: number}}[]}}).result.rows[0]!
    const resumedBytes = (await linkBytes()) - mid
    note(`second run: ${row.outcome}; ${resumedBytes} bytes down; fetched over both runs ${row.bytes?.fetched}`)
    expect(row.outcome).toBe('staged')
    cfg = (await api.vmConfig(site.node, site.vmid))!
    meta = parseDescription(cfg.description as string)!
    const delivery = JSON.parse(await readFile(join(storeDir, 'pgi-tryton', TO, 'delivery.json'), 'utf8')) as {raw: {sha256: string; size_bytes: number}}
    expect(meta.staged).toMatchObject({version: TO, state: 'verified', rawSha256: delivery.raw.sha256})
    const staged = meta.staged!.volume
    if (patchBytes) {
      // the guest rebuilt chunks from its own bytes (those its first boot changed are fetched)
      const gs = JSON.parse(await guest(['/usr/local/sbin/pgi-stage-delta', 'status'])) as {rebuilt?: number; rebuild_total?: number; rebuild_failed?: number}
      note(`patch: ${gs.rebuilt} of ${gs.rebuild_total} chunks rebuilt in the guest, ${gs.rebuild_failed} spoiled`)
      expect(gs.rebuilt).toBeGreaterThan(0)
    }
    // running stage again: already staged, nothing fetched
    const third = await pgi(args)
    expect((JSON.parse(third.stdout) as {result: {rows: {outcome: string}[]}}).result.rows[0]!.outcome).toBe('already-staged')
    const st = await pgi(['rollout', 'status', '--all', '--json'])
    expect((JSON.parse(st.stdout) as {result: {establishments: {staging?: unknown}[]}}).result.establishments[0]!.staging).toMatchObject({transfer: 'delta', version: TO, state: 'verified'})

    const r = await pgi(['rollout', 'start', TO, '--all', '--yes', '--json', '--images-dir', imagesRoot, '--health-timeout', '900', '--agent-timeout', '600', '--shutdown-timeout', '120'])
    const out = (JSON.parse(r.stdout) as {result: {establishments: {outcome: string; reason?: string}[]}}).result.establishments[0]!
    expect(out.outcome, out.reason).toBe('updated')
    expect(r.stderr).toMatch(/switching to the OS disk staged by delta/)
    cfg = (await api.vmConfig(site.node, site.vmid))!
    meta = parseDescription(cfg.description as string)!
    expect(String(cfg.virtio0).split(',')[0]).toBe(staged)
    expect(meta.image).toBe(TO)
    expect(meta.staged).toBeUndefined()
    const h = JSON.parse(await guest(['/usr/local/sbin/pgi-health'])) as {healthy: boolean; image: {version: string}}
    expect(h).toMatchObject({healthy: true, image: {version: TO}})
    expect(await sql("SELECT count(*) FROM party_party WHERE code LIKE 'DELTA-%'")).toBe('9')
    // the OS disk is the one the guest verified against the signed raw sha256 before the swap
    expect(meta.rollout).toMatchObject({step: 'committed', to: TO, newDisk: staged})
  }, 150 * 60_000)
})
