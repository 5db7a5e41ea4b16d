/**
 * deploy, status, rollout and destroy through the bundled CLI (bin/run.js) on
 * `pgi lab start --backend simulated`, as a technician runs them:
 *
 * - without faults: the whole life of an establishment (deploy, a teacher's database, rollout
 *   with backup + verify + gate, destroy with its final backup copied here);
 * - with HTTP 500s (rate 0.2) and 100–400 ms of latency on every request, no task failures: each
 *   command does everything in ONE run (transient faults retried, no write re-sent blindly);
 * - with task failures too: deploy names each failure (PGI_PVE_TASK_FAILED, exit 4), and a second
 *   run finishes the fleet without recreating anything.
 *
 * Every run also ends within 2 s of its last output. A teacher's database is made in each guest
 * through the guest agent (`pgi-db create`, the image's own tool): no pgi command makes databases.
 */
import {createHash} from 'node:crypto'
import {readFile, mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Inventory} from '../../../src/inventory/types.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {PveApiError} from '../../../src/proxmox/errors.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {describeRun, ensureBuilt, makeImages, runPgi, type CliRun} from './support.js'

const V1 = '2026.1.0'
const V2 = '2026.2.0'
const DB = 'bts_ndrc_2026'
/** Named codes a fault may end in; never PGI_INTERNAL. */
const NAMED = /^PGI_(PVE_TASK_FAILED|PVE_TASK_UNKNOWN|PVE_SERVER_ERROR|PVE_LOCKED|UNREACHABLE|TIMEOUT)$/

let base: string
let images: string

beforeAll(async () => {
  ensureBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-cli-faults-'))
  images = join(base, 'images')
  await makeImages(images, [V1, V2])
}, 10 * 60_000)

afterAll(async () => {
  if (base) await rm(base, {recursive: true, force: true})
})

/** One lab (its own state dir) and how to run pgi against it. */
class Lab {
  readonly env: NodeJS.ProcessEnv
  readonly inventory: string
  readonly runs: {args: string[]; r: CliRun}[] = []

  constructor(readonly name: string) {
    const dir = join(base, name)
    this.inventory = join(dir, 'lab', 'inventory', 'lab.yaml')
    this.env = {...process.env, CI: 'true', PGI_STATE_DIR: join(dir, 'state'), PGI_LAB_DIR: join(dir, 'lab'), PGI_IMAGES_DIR: images, PGI_INVENTORY: this.inventory, PGI_SECRETS_DIR: join(dir, 'lab', 'secrets'), PGI_LOG_LEVEL: 'warn'}
  }

  /** `pgi ARGS --json`: the envelope, checked to end with its output. */
  async pgi(...args: string[]): Promise<{status: number; result?: any; error?: any}> {
    const a = [...args, '--json']
    const r = await runPgi(a, this.env, {killAfterMs: 15 * 60_000})
    this.runs.push({args: a, r})
    expect(r.code, describeRun(a, r)).not.toBeNull()
    expect(r.afterLastOutputMs, describeRun(a, r)).toBeLessThanOrEqual(2000)
    expect(r.stdout + r.stderr, describeRun(a, r)).not.toMatch(/PGI_INTERNAL/)
    expect(r.json, describeRun(a, r)).toBeDefined()
    expect(r.json!.status, describeRun(a, r)).toBe(r.code)
    return r.json!
  }

  async start(...faults: string[]): Promise<Inventory> {
    const s = await this.pgi('lab', 'start', '--backend', 'simulated', '--nodes', '2', '--sites', '4', '--time-scale', '0.01', '--auth-fail-delay', '10', ...faults)
    expect(s.status, JSON.stringify(s.error)).toBe(0)
    return loadValidInventory(this.inventory)
  }

  async stop(): Promise<void> {
    await runPgi(['lab', 'stop'], this.env)
  }

  /** A teacher's database in every guest (pgi-db create through the agent, retried on the lab's faults). */
  async createDatabases(inv: Inventory): Promise<void> {
    const store = await SecretStore.open({dir: this.env.PGI_SECRETS_DIR!, recipients: [], env: this.env})
    for (const [name, hv] of inv.hypervisors) {
      const api = connectHypervisor(hv, {tokenSecret: await store.get(`hypervisors/${name}/token`)})
      try {
        for (const e of inv.establishments.filter((x) => x.hypervisor === name)) {
          for (let i = 0; ; i++) {
            try {
              const r = await api.agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-db', 'create', DB])
              if (r.exitcode === 0 || /already exists/.test(r.stderr)) break
              throw new Error(`pgi-db create failed in ${e.uai}: ${r.stderr}`)
            } catch (err) {
              if (!(err instanceof PveApiError && err.isServerFault) || i > 10) throw err
            }
          }
        }
      } finally {
        await api.close()
      }
    }
  }
}

/** The establishments' verdicts of a `pgi status --json`, by UAI. */
function verdicts(s: {result?: {establishments: {uai: string; verdict: string}[]}}): Record<string, string> {
  return Object.fromEntries((s.result?.establishments ?? []).map((e) => [e.uai, e.verdict]))
}

/** A full life on one lab: deploy, databases, status, rollout, destroy (each in one run). */
async function lifeCycle(lab: Lab, inv: Inventory): Promise<void> {
  const uais = inv.establishments.map((e) => e.uai).sort()
  const dep = await lab.pgi('deploy', '--all', '--image', V1, '--yes')
  expect(dep.status, JSON.stringify(dep.result?.result?.outcomes ?? dep.error)).toBe(0)
  expect(dep.result.result.counts).toMatchObject({created: 4, failed: 0, blocked: 0})
  await lab.createDatabases(inv)

  const st = await lab.pgi('status')
  expect(verdicts(st), JSON.stringify(st.result?.establishments)).toEqual(Object.fromEntries(uais.map((u) => [u, 'healthy'])))

  expect((await lab.pgi('rollout', 'stage', V2, '--all')).status).toBe(0)
  const ro = await lab.pgi('rollout', 'start', V2, '--all', '--yes')
  expect(ro.status, JSON.stringify(ro.result?.establishments ?? ro.error)).toBe(0)
  expect(ro.result.establishments.map((e: {outcome: string}) => e.outcome)).toEqual(['updated', 'updated', 'updated', 'updated'])
  for (const e of ro.result.establishments as {manifest: string}[]) {
    // the backup taken before the switch was verified in the guest and copied here
    const m = JSON.parse(await readFile(e.manifest, 'utf8')) as {image: {version: string}; databases: {name: string; row_counts: Record<string, number>}[]}
    expect(m.image.version).toBe(V1)
    // the teacher's database and the one deploy made (the inventory declares none: pgi)
    expect(m.databases.map((d) => d.name)).toEqual([DB, 'pgi'])
  }
  const rs = await lab.pgi('rollout', 'status')
  expect(rs.result.establishments.map((e: {state: string; image: string}) => `${e.state} ${e.image}`)).toEqual(uais.map(() => `done ${V2}`))
  const after = await lab.pgi('status')
  expect(Object.values(verdicts(after))).toEqual(['healthy', 'healthy', 'healthy', 'healthy'])
  expect(after.result.establishments.map((e: {image: {running?: string}}) => e.image.running)).toEqual([V2, V2, V2, V2])

  const victim = inv.establishments[3]!
  const d = await lab.pgi('destroy', victim.uai, '--destroy-data', '--yes')
  expect(d.status, JSON.stringify(d.error)).toBe(0)
  expect(d.result).toMatchObject({uai: victim.uai, destroyed: true})
  expect(d.result.backup.databases).toEqual([expect.objectContaining({name: DB}), expect.objectContaining({name: 'pgi'})])
  for (const f of d.result.backup.files as {file: string; sha256: string}[]) {
    expect(createHash('sha256').update(await readFile(join(d.result.backup.dir, f.file))).digest('hex')).toBe(f.sha256)
  }
  const last = await lab.pgi('status')
  expect(verdicts(last)[victim.uai]).toBe('down')
  expect(Object.entries(verdicts(last)).filter(([u]) => u !== victim.uai).map(([, v]) => v)).toEqual(['healthy', 'healthy', 'healthy'])
}

describe('deploy, status, rollout and destroy through bin/run.js on a simulated lab', () => {
  it('without faults', async () => {
    const lab = new Lab('clean')
    try {
      await lifeCycle(lab, await lab.start())
    } finally {
      await lab.stop()
    }
  }, 30 * 60_000)

  it('with HTTP 500s (rate 0.2) and 100–400 ms latency: each command does everything in one run', async () => {
    const lab = new Lab('flaky')
    try {
      await lifeCycle(lab, await lab.start('--http-500-rate', '0.2', '--latency-ms', '100-400', '--seed', '11'))
      // the faults were there
      const log = (await readFile(join(base, 'flaky', 'lab', 'requests.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as {status: number})
      expect(log.filter((r) => r.status === 500).length).toBeGreaterThan(log.length / 10)
    } finally {
      await lab.stop()
    }
  }, 30 * 60_000)

  it('with task failures too: named failures and exit 4, then a second run finishes without recreating anything', async () => {
    const lab = new Lab('failing')
    try {
      const inv = await lab.start('--http-500-rate', '0.2', '--latency-ms', '100-400', '--task-failure-rate', '0.1', '--seed', '7')
      const first = await lab.pgi('deploy', '--all', '--image', V1, '--yes')
      expect(first.status).toBe(4)
      const failed = (first.result.result.outcomes as {uai: string; outcome: string; error?: {code: string; message: string}}[]).filter((o) => o.outcome === 'failed')
      expect(failed.length).toBeGreaterThan(0)
      for (const o of failed) {
        expect(o.error!.code).toMatch(NAMED)
        expect(o.error!.message).toMatch(/lab fault injection/)
      }
      const created = first.result.result.counts.created as number
      const second = await lab.pgi('deploy', '--all', '--image', V1, '--yes')
      expect(second.status, JSON.stringify(second.result?.result?.outcomes)).toBe(0)
      expect(second.result.result.counts).toMatchObject({'up-to-date': created, failed: 0, blocked: 0})
      const st = await lab.pgi('status')
      expect(Object.values(verdicts(st))).toEqual(inv.establishments.map(() => 'healthy'))
    } finally {
      await lab.stop()
    }
  }, 30 * 60_000)
})
