/**
 * Pacing a Région's staging (--total-bwlimit, --transfer-window): through the bundled CLI
 * (bin/run.js) and the service, against a simulated lab whose guests carry a simulated
 * pgi-stage-delta (src/lab/simulated-stage-delta.ts: it records the arguments of every start, so
 * the caps pgi gave each guest can be read back, and "fetches" its delta at its cap in the lab's
 * simulated time). The clock is set with PGI_NOW (CLI) or a `now` function (service): no sleeping
 * until a window opens.
 */
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {readFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {parseTransferWindow} from '../../../src/inventory/transfer-window.js'
import {MemoryIo} from '../../../src/io.js'
import {STARTS_FILE} from '../../../src/lab/simulated-stage-delta.js'
import {rolloutStatus, stageRollout} from '../../../src/rollout/service.js'
import {assertBuilt, runPgi} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'
import {labInventoryYaml, publishTestDelivery} from './delivery-fixtures.js'
import {startRolloutLab, type RolloutLab} from './lab.js'

const STORE_URL = 'http://10.1.255.253:8080/'
const KiB = 1024
const MiB = 1024 * KiB
let lab: RolloutLab
let tmp: string
let store: string
let images: string
let inv: string
let env: NodeJS.ProcessEnv
/** What each guest lacks, by establishment index (changed per test). */
const lacks = [MiB, 100 * 1024 * MiB]
/** Options each guest's pgi-stage-delta lacks (an older image's tool), by establishment index. */
const oldTool: string[][] = [[], []]

const inventoryYaml = (extra: Record<string, unknown> = {}) => labInventoryYaml(lab, {delivery: {store_url: STORE_URL, region_store: store}, ...extra})
const publishDelivery = (version: string) => publishTestDelivery(store, images, version)

const pgi = (args: string[], o: {inventory?: string; now?: string} = {}) =>
  runPgi(['rollout', ...args, '-i', o.inventory ?? inv, '--secrets-dir', lab.store.dir, '--images-dir', images, '--json'], {env: {...env, ...(o.now ? {PGI_NOW: o.now} : {})}, timeoutMs: 120_000})

/** The caps (bytes/s) each guest's pgi-stage-delta was started with, by establishment index, for one raw digest prefix. */
function startsOf(i: number): {rate_limit_bps: number; args: string[]}[] {
  const e = lab.inventory.establishments[i]!
  const f = lab.model.backend.dataDisk(e.node, e.vmid)?.files.get(STARTS_FILE)
  return f ? f.data.toString().trim().split('\n').map((l) => JSON.parse(l) as {rate_limit_bps: number; args: string[]}) : []
}

async function stagingDisks(): Promise<string[][]> {
  const hvs = lab.hypervisors(new MemoryIo('warn'))
  const out = []
  for (const e of lab.inventory.establishments) out.push(Object.keys((await (await hvs.get(e.hypervisor)).vmConfig(e.node, e.vmid))!).filter((k) => /^virtio([2-9]|1\d)$/.test(k)))
  return out
}

beforeAll(async () => {
  assertBuilt()
  tmp = await mkdtemp(join(tmpdir(), 'pgi-pacing-'))
  store = join(tmp, 'store')
  images = join(tmp, 'images')
  lab = await startRolloutLab({
    nodes: 1,
    perNode: 2,
    stageDelta: {
      fetch: (url) => {
        if (!url.startsWith(STORE_URL)) return undefined
        try {
          return readFileSync(join(store, url.slice(STORE_URL.length)))
        } catch {
          return undefined
        }
      },
      // asked at every look into a guest, the deploy's included (lab not yet set then)
      bytes: (_node, vmid) => lacks[lab?.inventory.establishments.findIndex((e) => e.vmid === vmid) ?? -1] ?? MiB,
      refuses: (_node, vmid) => oldTool[lab?.inventory.establishments.findIndex((e) => e.vmid === vmid) ?? -1] ?? [],
    },
  })
  for (const v of ['2026.12.0', '2026.12.3']) {
    await signedTestImage(images, 'pgi-tryton', v)
    await publishDelivery(v)
  }
  inv = join(tmp, 'inventory.yaml')
  await writeFile(inv, inventoryYaml())
  env = {...process.env, ...lab.env, CI: 'true', PGI_STATE_DIR: join(tmp, 'state')}
}, 120_000)

afterAll(async () => {
  await lab?.close()
  if (tmp) await rm(tmp, {recursive: true, force: true})
})

// Monday 2026-12-07, Europe/Paris (UTC+1): 13:00 (closed) and 21:00 (open) for weekday nights
const MON_1300 = '2026-12-07T12:00:00Z'
const MON_2100 = '2026-12-07T20:00:00Z'
const NIGHTS = 'mon-fri 19:00-07:00,sat-sun'

describe('pgi rollout stage --total-bwlimit / --transfer-window (bin/run.js, simulated lab)', () => {
  it('bad values are refused with their place (exit 2, or 3 in the inventory) and nothing is changed', async () => {
    const rate = await pgi(['stage', '2026.12.0', '--all', '--total-bwlimit', 'fast'])
    expect(rate.exitCode).toBe(2)
    expect(rate.json?.error).toMatchObject({code: 'PGI_USAGE', where: {flag: 'total-bwlimit'}})
    const win = await pgi(['stage', '2026.12.0', '--all', '--transfer-window', 'mon-fry 19:00-07:00'])
    expect(win.exitCode).toBe(2)
    expect(win.json?.error).toMatchObject({code: 'PGI_USAGE', where: {flag: 'transfer-window'}})
    expect(win.json?.error?.message).toMatch(/"mon-fry".*not a day/)
    const bad = join(tmp, 'bad-window.yaml')
    await writeFile(bad, inventoryYaml({delivery: {store_url: STORE_URL, transfer_window: 'nights'}}))
    const r = await pgi(['stage', '2026.12.0', '--all'], {inventory: bad})
    expect(r.exitCode).toBe(3)
    expect(r.stderr + JSON.stringify(r.json)).toMatch(/bad-window\.yaml:\d+:\d+[^\n]*transfer_window/)
    expect(await stagingDisks()).toEqual([[], []])
    expect([startsOf(0), startsOf(1)]).toEqual([[], []])
  }, 60_000)

  it('a window closed now (the inventory\'s delivery.transfer_window), --no-wait: nothing started, each establishment waiting with the next opening; rollout status says so', async () => {
    const withWindow = join(tmp, 'window.yaml')
    await writeFile(withWindow, inventoryYaml({delivery: {store_url: STORE_URL, region_store: store, transfer_window: NIGHTS, total_bwlimit: '1M'}}))
    const r = await pgi(['stage', '2026.12.0', '--all', '--transfer', 'delta', '--no-wait'], {now: MON_1300, inventory: withWindow})
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.json!.result.pacing).toEqual({totalBps: MiB, slots: 2, shareBps: 512 * KiB, window: {spec: NIGHTS, timezone: 'Europe/Paris', open: false, nextOpening: '2026-12-07T18:00:00.000Z'}})
    for (const row of r.json!.result.rows as {outcome: string; detail: string}[]) {
      expect(row.outcome).toBe('waiting')
      expect(row.detail).toBe(`outside the transfer window (${NIGHTS}, Europe/Paris), next opening 2026-12-07 19:00 Europe/Paris`)
    }
    expect(await stagingDisks()).toEqual([[], []])
    expect([startsOf(0), startsOf(1)]).toEqual([[], []])
    // this machine's record of the run is kept per inventory
    const s = await runPgi(['rollout', 'status', '--all', '-i', withWindow, '--secrets-dir', lab.store.dir], {env: {...env, PGI_NOW: MON_1300}, timeoutMs: 60_000})
    expect(s.stdout).toMatch(/delta 2026\.12\.0 waiting \(outside the transfer window .* next opening 2026-12-07 19:00 Europe\/Paris\)/)
  }, 60_000)

  it('the total cap divided between two sites: each guest started at half of it; rollout status shows the share', async () => {
    lacks.splice(0, 2, 100 * 1024 * MiB, 100 * 1024 * MiB)
    const r = await pgi(['stage', '2026.12.3', '--all', '--transfer', 'delta', '--total-bwlimit', '1M', '--transfer-window', NIGHTS, '--no-wait'], {now: MON_2100})
    expect(r.exitCode, r.stderr).toBe(0)
    expect(r.json!.result.pacing).toMatchObject({totalBps: MiB, slots: 2, shareBps: 512 * KiB, window: {open: true}})
    expect((r.json!.result.rows as {outcome: string; capBps: number}[]).map((x) => [x.outcome, x.capBps])).toEqual([
      ['started', 512 * KiB],
      ['started', 512 * KiB],
    ])
    // what the guests received
    for (const i of [0, 1]) {
      expect(startsOf(i).map((s) => s.rate_limit_bps)).toEqual([512 * KiB])
      expect(startsOf(i)[0]!.args).toEqual(expect.arrayContaining(['--rate-limit-bps', String(512 * KiB)]))
      // pgi does not follow a --no-wait run: the guest stops itself at the window's close, Tuesday 07:00 Paris
      expect(startsOf(i)[0]!.args).toEqual(expect.arrayContaining(['--until', String(Date.parse('2026-12-08T06:00:00Z') / 1000)]))
    }
    const s = await runPgi(['rollout', 'status', '--all', '-i', inv, '--secrets-dir', lab.store.dir], {env: {...env, PGI_NOW: MON_2100}, timeoutMs: 60_000})
    expect(s.stdout.match(/delta 2026\.12\.3 running extract .*at 512 KiB\/s \(50% of the total cap\)/g)).toHaveLength(2)
    // a second run with the same total: the running transfers are left as they are, nothing more started
    const again = await pgi(['stage', '2026.12.3', '--all', '--transfer', 'delta', '--total-bwlimit', '1M', '--no-wait'], {now: MON_2100})
    expect(again.exitCode, again.stderr).toBe(0)
    for (const i of [0, 1]) expect(startsOf(i)).toHaveLength(1)
  }, 60_000)
  it('full transfers share the total too: split once between the uploads at once (one node here: all of it, at most --bwlimit)', async () => {
    const r = await pgi(['stage', '2026.12.0', '--all', '--transfer', 'full', '--total-bwlimit', '1M', '--bwlimit', '4M'])
    expect(r.exitCode, r.stderr).toBe(0)
    expect((r.json!.result.rows as {transfer: string; outcome: string; capBps?: number}[]).map((x) => [x.transfer, x.outcome, x.capBps])).toEqual([
      ['full', 'uploaded', MiB],
      ['full', 'uploaded', MiB],
    ])
  }, 60_000)
})

describe('stageRollout pacing (service, simulated lab)', () => {
  const V = '2026.12.5'
  beforeAll(async () => {
    await lab.makeImage(V)
    await publishDelivery(V)
    // the runs the CLI tests left going (another version) are stopped, as a technician would
    const hvs = lab.hypervisors(new MemoryIo('warn'))
    for (const e of lab.inventory.establishments) await (await hvs.get(e.hypervisor)).agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-stage-delta', 'stop'], {timeoutMs: 10_000, idempotent: true})
  })
  const request = (io: MemoryIo, over: Record<string, unknown>) => ({...lab.request(io, V), imagesRoot: images, transfer: 'delta' as const, storeUrl: STORE_URL, store, ...over})

  it('a finished transfer hands its share to the one still running (stopped, started again at the whole total)', async () => {
    // the first guest lacks 1 MiB (2 ms at 512 KiB/s in the lab's time), the second 1 GiB
    lacks.splice(0, 2, MiB, 1024 * MiB)
    const before = [startsOf(0).length, startsOf(1).length]
    const r = await stageRollout(request(new MemoryIo('warn'), {totalBwlimitKiB: 1024}))
    expect(r.exitCode, JSON.stringify(r.rows)).toBe(0)
    expect(r.rows.map((x) => x.outcome)).toEqual(['staged', 'staged'])
    expect(startsOf(0).slice(before[0]).map((s) => s.rate_limit_bps)).toEqual([512 * KiB])
    expect(startsOf(1).slice(before[1]).map((s) => s.rate_limit_bps)).toEqual([512 * KiB, MiB])
  }, 60_000)

  it('the window closes mid-transfer: the guest is stopped, rollout status says paused with the next opening, and it continues at the opening', async () => {
    const W = '2026.12.6'
    await lab.makeImage(W)
    await publishDelivery(W)
    lacks.splice(0, 2, MiB, 1024 * MiB)
    let clock = Date.parse(MON_2100)
    const now = () => new Date(clock)
    const saved = lab.inventory.delivery
    lab.inventory.delivery = {timezone: 'Europe/Paris', transferWindow: parseTransferWindow('mon-fri 19:00-07:00'), source: {file: inv, line: 1, column: 1}}
    const e = lab.inventory.establishments[1]!
    const before = startsOf(1).length
    let status: string | undefined
    try {
      const io = new MemoryIo('info')
      const run = stageRollout({...request(io, {bwlimitKiB: 512, now}), image: {name: 'pgi-tryton', version: W}, selection: {all: false, uais: [e.uai]}})
      // Tuesday 07:30 Paris: closed until 19:00
      await new Promise((res) => setTimeout(res, 300))
      clock = Date.parse('2026-12-08T06:30:00Z')
      await new Promise((res) => setTimeout(res, 400))
      const s = await rolloutStatus({...lab.request(new MemoryIo('warn'), W), selection: {all: false, uais: [e.uai]}, now})
      status = s.establishments[0]?.staging?.state
      clock = Date.parse('2026-12-08T18:30:00Z')
      const r = await run
      expect(r.rows[0]).toMatchObject({outcome: 'staged'})
    } finally {
      lab.inventory.delivery = saved
    }
    expect(status).toBe('paused (outside the transfer window, next 2026-12-08 19:00 Europe/Paris)')
    // stopped at the close and started again at the opening, at the same cap
    expect(startsOf(1).slice(before).map((s) => s.rate_limit_bps)).toEqual([512 * KiB, 512 * KiB])
  }, 60_000)

  it('a guest whose pgi-stage-delta predates binary patches and transfer windows: started again without them, each reason said; the newer guest gets both', async () => {
    const V = '2026.12.9'
    await signedTestImage(images, 'pgi-tryton', V)
    // a patch from the version the guests run (deployed at 2026.11.0)
    const patch = {from: '2026.11.0', from_raw_sha256: 'ab'.repeat(32), file: 'from-2026.11.0.pgipatch', sha256: 'cd'.repeat(32), size_bytes: 300_000, chunks: 8, chunk_bytes: 500_000}
    await publishTestDelivery(store, images, V, undefined, {patches: [patch]})
    lacks.splice(0, 2, 100 * 1024 * MiB, 100 * 1024 * MiB)
    oldTool.splice(0, 2, ['--patch', '--until'], [])
    try {
      const before = [startsOf(0).length, startsOf(1).length]
      const r = await pgi(['stage', V, '--all', '--transfer', 'delta', '--transfer-window', NIGHTS, '--no-wait'], {now: MON_2100})
      expect(r.exitCode, r.stderr + JSON.stringify(r.json)).toBe(0)
      expect((r.json!.result.rows as {outcome: string}[]).map((x) => x.outcome)).toEqual(['started', 'started'])
      const [old, cur] = [startsOf(0).slice(before[0]), startsOf(1).slice(before[1])]
      // the refused starts are not runs: one start each, the older tool's without the options it lacks
      expect(old).toHaveLength(1)
      expect(old[0]!.args).not.toContain('--patch')
      expect(old[0]!.args).not.toContain('--until')
      expect(cur).toHaveLength(1)
      expect(cur[0]!.args).toEqual(expect.arrayContaining(['--patch', `pgi-tryton/${V}/${patch.file}`, '--patch-sha256', patch.sha256, '--patch-size', String(patch.size_bytes), '--until', String(Date.parse('2026-12-08T06:00:00Z') / 1000)]))
      const said = r.stderr + r.stdout
      const uai = lab.inventory.establishments[0]!.uai
      expect(said).toContain(`${uai}: this image's pgi-stage-delta cannot apply binary patches: fetching chunks only`)
      expect(said).toMatch(new RegExp(`${uai}: this image's pgi-stage-delta cannot stop itself at the transfer window's close \\(2026-12-08T06:00:00\\.000Z\\)`))
      expect(said).not.toContain(`${lab.inventory.establishments[1]!.uai}: this image's`)
    } finally {
      oldTool.splice(0, 2, [], [])
    }
  }, 60_000)
})
