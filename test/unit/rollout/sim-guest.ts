/**
 * The simulated lab's backend (src/lab/simulated-backend.ts, unchanged) with the parts of the
 * guest contract a rollout exercises added on top, modelled on images/pgi-tryton/files:
 *
 * - the data disk (keyed by its volume, so it follows the disk, not the VM) holds the databases
 *   with their key-table row counts and the image version they were last upgraded for
 *   (/srv/pgi/.pgi/state.json); its backups (pgi-backup) with manifests;
 * - at start, pgi-upgrade's rule: an OS newer than the data disk upgrades the databases and
 *   records its version; an older OS refuses (pgi-health reports the problem, unhealthy);
 * - pgi-backup --verify, and rollout's probe and restore scripts (recognised by their first line);
 * - "broken" versions whose trytond never starts (never healthy, logins fail).
 *
 * Everything else (volumes, VM processes, boots, pgi-health's base report, files) is the
 * SimulatedBackend's own behaviour. Delegation goes through a Proxy so every method of the real
 * backend is used as is.
 */
import {PROBE_MARK, RESTORE_MARK} from '../../../src/rollout/guest-scripts.js'
import {SimulatedBackend, type SimulatedOptions} from '../../../src/lab/simulated-backend.js'
import type {AgentExecStatus, GuestAgent, TaskContext, VmBackend, VmSpec} from '../../../src/lab/backend.js'

type Rows = Record<string, number>

interface DataDisk {
  /** Version the databases were last upgraded for (state.json image.version). */
  version?: string
  dbs: Map<string, Rows>
  backups: Map<string, {version?: string; dbs: [string, Rows][]}>
  upgrades: number
  restores: number
}

export interface GuestModelOptions extends SimulatedOptions {
  /** Image versions whose trytond never starts. */
  brokenVersions?: string[]
  /** Guests whose PGI never becomes healthy on this version (per VM: e.g. a local quirk the new version trips on). */
  brokenOn?: (node: string, vmid: number, version: string) => boolean
}

function cmp(a: string, b: string): number {
  const pa = a.split(/[.-]/).map(Number)
  const pb = b.split(/[.-]/).map(Number)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return d
  }
  return 0
}

export class RolloutGuestModel {
  readonly inner: SimulatedBackend
  readonly backend: VmBackend
  readonly broken: Set<string>
  readonly brokenOn: (node: string, vmid: number, version: string) => boolean
  readonly disks = new Map<string, DataDisk>()
  readonly specs = new Map<string, VmSpec>()
  readonly boots = new Map<string, {os: string; upgradeError?: string}>()
  readonly #procs = new Map<number, AgentExecStatus>()
  #pid = 900_000
  #stamp = 0

  constructor(opts: GuestModelOptions = {}) {
    this.inner = new SimulatedBackend(opts)
    this.broken = new Set(opts.brokenVersions ?? [])
    this.brokenOn = opts.brokenOn ?? (() => false)
    const inner = this.inner
    const agent: GuestAgent = {...inner.agent, exec: (n, v, c, i, t) => this.#exec(n, v, c, i, t), execStatus: (n, v, p, t) => this.#execStatus(n, v, p, t)}
    const start = (spec: VmSpec, ctx: TaskContext) => this.#start(spec, ctx)
    this.backend = new Proxy(inner, {
      get(target, prop) {
        if (prop === 'agent') return agent
        if (prop === 'start') return start
        const v = Reflect.get(target, prop, target) as unknown
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v
      },
    }) as VmBackend
  }

  #dataVolid(spec: VmSpec): string | undefined {
    return spec.disks.find((d) => d.serial === 'pgi-data')?.volid
  }

  disk(node: string, vmid: number): DataDisk {
    const spec = this.specs.get(`${node}/${vmid}`)
    const volid = spec && this.#dataVolid(spec)
    if (!volid) throw new Error(`VM ${node}/${vmid} has not started with a data disk yet`)
    const k = `${node}/${volid}`
    let d = this.disks.get(k)
    if (!d) {
      d = {dbs: new Map(), backups: new Map(), upgrades: 0, restores: 0}
      this.disks.set(k, d)
    }
    return d
  }

  /** A student database with data, as pgi-db create + some work would leave it. */
  addDatabase(node: string, vmid: number, name: string, rows: Rows): void {
    this.disk(node, vmid).dbs.set(name, {...rows})
  }

  osVersion(node: string, vmid: number): string | undefined {
    return this.boots.get(`${node}/${vmid}`)?.os
  }

  async #start(spec: VmSpec, ctx: TaskContext): Promise<void> {
    await this.inner.start(spec, ctx)
    const key = `${spec.node}/${spec.vmid}`
    this.specs.set(key, spec)
    const osVol = spec.disks.find((d) => d.key === 'virtio0')
    const info = osVol ? ((await this.inner.volumeInfo(spec.node, osVol.volid)) as {imageVersion?: string} | undefined) : undefined
    const os = info?.imageVersion ?? spec.imageVersion ?? '0.0.0'
    const d = this.disk(spec.node, spec.vmid)
    let upgradeError: string | undefined
    if (d.version === undefined) d.version = os
    else if (cmp(os, d.version) > 0) {
      // pgi-upgrade: backup, trytond-admin --all on every database, record the version
      d.version = os
      d.upgrades++
    } else if (cmp(os, d.version) < 0) upgradeError = `this OS image (${os}) is older than the data disk (${d.version}): databases left as they are; deploy version ${d.version} or newer`
    this.boots.set(key, {os, upgradeError})
  }

  async #exec(node: string, vmid: number, command: string[], input: string | undefined, timeoutMs: number): Promise<{pid: number}> {
    const prog = (command[0] ?? '').split('/').pop()
    const script = command[1] === '-c' ? (command[2] ?? '') : ''
    const mine = prog === 'pgi-health' || (prog === 'pgi-backup') || (prog === 'python3' && (script.startsWith(PROBE_MARK) || script.startsWith(RESTORE_MARK)))
    if (!mine) return this.inner.agent.exec(node, vmid, command, input, timeoutMs)
    await this.inner.agent.ping(node, vmid, timeoutMs) // the agent must answer (running, booted)
    const status = await this.#run(node, vmid, prog!, command, script, input)
    const pid = this.#pid++
    this.#procs.set(pid, status)
    return {pid}
  }

  async #execStatus(node: string, vmid: number, pid: number, timeoutMs: number): Promise<AgentExecStatus> {
    const s = this.#procs.get(pid)
    if (!s) return this.inner.agent.execStatus(node, vmid, pid, timeoutMs)
    this.#procs.delete(pid)
    return s
  }

  async #innerRun(node: string, vmid: number, command: string[]): Promise<AgentExecStatus> {
    const {pid} = await this.inner.agent.exec(node, vmid, command, undefined, 10_000)
    return this.inner.agent.execStatus(node, vmid, pid, 10_000)
  }

  async #run(node: string, vmid: number, prog: string, command: string[], script: string, input: string | undefined): Promise<AgentExecStatus> {
    const ok = (out: unknown): AgentExecStatus => ({exited: true, exitcode: 0, 'out-data': JSON.stringify(out)})
    const fail = (err: string, code = 1): AgentExecStatus => ({exited: true, exitcode: code, 'err-data': err})
    const d = this.disk(node, vmid)
    const boot = this.boots.get(`${node}/${vmid}`)
    const broken = boot ? this.broken.has(boot.os) || this.brokenOn(node, vmid, boot.os) : false
    if (prog === 'pgi-health') {
      const base = await this.#innerRun(node, vmid, command)
      const h = JSON.parse(base['out-data'] ?? '{}') as {healthy: boolean; problems: string[]; checks: Record<string, {ok: boolean}>; databases: unknown[]}
      if (boot?.upgradeError) h.problems.push(`upgrade: ${boot.upgradeError}`)
      if (broken) {
        h.problems.push('trytond: tryton-server.service is masked')
        h.checks.trytond = {ok: false}
      }
      h.databases = [...d.dbs.keys()].map((name) => ({name, modules: {ir: d.version}}))
      h.healthy = h.problems.length === 0
      return {exited: true, exitcode: h.healthy ? 0 : 1, 'out-data': JSON.stringify(h)}
    }
    if (prog === 'pgi-backup') {
      if (command[1] === '--verify') {
        const b = d.backups.get(command[2] ?? '')
        if (!b) return fail(`pgi-backup: ${command[2]} is missing or not JSON`)
        return ok({manifest: command[2], verified: b.dbs.map(([name, rows]) => ({name, ok: true, row_counts: rows}))})
      }
      const path = `/srv/pgi/backups/2026${String(++this.#stamp).padStart(8, '0')}Z/manifest.json`
      const dbs: [string, Rows][] = [...d.dbs].map(([n, r]) => [n, {...r}])
      d.backups.set(path, {version: d.version, dbs})
      const manifest = {format: 1, image: {name: 'pgi-tryton', version: d.version}, databases: dbs.map(([name, rows]) => ({name, file: `${name}.dump`, sha256: 'ab'.repeat(32), size: 1000, row_counts: rows}))}
      await this.inner.agent.fileWrite(node, vmid, path, Buffer.from(JSON.stringify(manifest)), 10_000)
      return {exited: true, exitcode: 0, 'out-data': path + '\n'}
    }
    const req = JSON.parse(input ?? '{}') as {manifest?: string; login?: {login: string; password: string}; version?: string}
    if (script.startsWith(PROBE_MARK)) {
      const b = d.backups.get(req.manifest ?? '')
      return ok({
        databases: (b?.dbs ?? []).map(([name]) => {
          const rows = d.dbs.get(name)
          return rows ? {name, opens: true, row_counts: rows, ...(req.login ? {login: !broken, ...(broken ? {login_error: 'connection refused'} : {})} : {})} : {name, opens: false, error: `database "${name}" does not exist`}
        }),
        state: {image: {name: 'pgi-tryton', version: d.version}},
        upgrade: boot?.upgradeError ? {ok: false, error: boot.upgradeError} : {ok: true},
      })
    }
    // restore
    const b = d.backups.get(req.manifest ?? '')
    if (!b) return fail(`${req.manifest} is missing or not JSON`)
    for (const [name, rows] of b.dbs) d.dbs.set(name, {...rows})
    d.version = req.version
    d.restores++
    if (boot) boot.upgradeError = boot.os === d.version ? undefined : boot.upgradeError
    return ok({restored: b.dbs.map(([n]) => n), version: req.version})
  }
}
