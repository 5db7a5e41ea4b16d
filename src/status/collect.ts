/**
 * The status service: asks each hypervisor about its establishments' VMs and each running VM's
 * guest about its PGI, in parallel with a bound per hypervisor, and draws one verdict each.
 *
 * Calls per hypervisor (no N+1 on states): one `cluster/resources` for every VM state and uptime;
 * then per VM its config (the pgi-meta line: image, rollout mark) and, for running VMs only, one
 * `agent exec pgi-health`. A VM missing from the listing gets one `status/current` (to tell "not
 * there" from "not visible to this token"). When pgi-health may not run (a token without
 * VM.GuestAgent.Unrestricted, e.g. an AMI's on PVE 9), the result the server records every 2 minutes
 * is read instead (agent file-read, src/status/health-record.ts); failing that, the agent is pinged
 * and asked for its filesystems, so what can be known is still shown.
 *
 * Every request has its own deadline (`requestTimeoutMs`, the same bound the Proxmox client puts on
 * every request of every command). The first hypervisor-level failure (timeout, refused connection,
 * TLS mismatch, token refused) opens a breaker for that hypervisor: its remaining calls fail at
 * once with the same cause, so a dead hypervisor costs one timeout and only its own lines, never
 * the others'. A hypervisor that answers with an error (a server fault that outlived the client's
 * retries) is reachable: its lines say what it answered.
 */
import {compareIds} from '../compare.js'
import {ErrorCode} from '../errors.js'
import {listDatabases} from '../fleet/pgidb.js'
import {KeyedPool} from '../fleet/pool.js'
import {imageFromTags, parseDescription} from '../fleet/vm-meta.js'
import type {Io} from '../io.js'
import type {Establishment} from '../inventory/types.js'
import {armDeadline, withDeadline} from '../deadline.js'
import type {PveApi, PveResource} from '../proxmox/types.js'
import {readHealthRecord} from './health-record.js'
import {CallTimeout, HypervisorDown, isAgentDown, isHypervisorLevel, toProbeError} from './probe-error.js'
import type {HypervisorSummary, Observation, ProbeError, StatusReport, VerdictPolicy} from './types.js'
import {DEFAULT_POLICY, parseHealthOutput, rolloutState, sortStatuses, summarize, toEstablishmentStatus} from './verdict.js'

/** The guest's health command (guest contract). */
export const HEALTH_COMMAND = '/usr/local/sbin/pgi-health'

/** Mountpoint and disk serial of the data disk (guest contract), for the get-fsinfo fallback. */
const DATA_MOUNT = '/srv/pgi'
const DATA_SERIAL = 'pgi-data'

export const STATUS_DEFAULTS = {
  requestTimeoutMs: 5_000,
  healthTimeoutMs: 30_000,
  // enough to hide the latency of school links (1,500 requests of 20 ms: 32 in flight cap the run at
  // ~1 s of waiting, 64 at ~0.5 s); far more only makes each answer wait for CPU on a busy machine
  maxParallel: 64,
  // each hypervisor usually holds one PGI VM (one per lycée); 2 in flight keeps a slow school link and
  // the TLS handshakes (one per connection) low, the fleet-wide fan-out is what makes status fast
  perHypervisor: 2,
} as const

export interface StatusOptions {
  establishments: readonly Establishment[]
  /** The PveApi of a hypervisor (e.g. `(name) => hypervisors.get(name)` from src/hypervisors.ts). */
  api: (hypervisor: string) => Promise<PveApi>
  io: Io
  /** Deadline of each API request (ms). */
  requestTimeoutMs?: number
  /** Deadline of the pgi-health run in the guest (ms). */
  healthTimeoutMs?: number
  /** Requests in flight overall / per hypervisor. */
  maxParallel?: number
  perHypervisor?: number
  policy?: VerdictPolicy
  /** Clock (tests). */
  now?: () => Date
  /**
   * Also run `pgi-db list` in each running guest whose health was read live (sizes and last
   * backup of each database): one more command per VM, for one establishment's details.
   */
  databaseDetails?: boolean
}

/**
 * Runs `p` with a deadline; rejects with CallTimeout when it passes (the late answer is ignored).
 * The deadline is the one every request to a hypervisor has (src/deadline.ts: extended
 * once when this process, not the hypervisor, was short of CPU). With the real client each request
 * also carries that deadline itself; this bound covers any PveApi and calls of several requests.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, call: string, hypervisorLevel = true): Promise<T> {
  return withDeadline(p, ms, () => new CallTimeout(call, ms, hypervisorLevel))
}

/** One hypervisor's part of a run, with its breaker. */
class HypervisorRun {
  api?: PveApi
  /** Set by the first hypervisor-level failure; later calls fail fast with it. */
  down?: ProbeError
  /** The calls in flight: each is failed when the breaker opens (a long guest command ends too). */
  private readonly inFlight = new Set<(e: unknown) => void>()

  constructor(readonly name: string) {}

  trip(pe: ProbeError): void {
    if (this.down) return
    this.down = pe
    const e = new HypervisorDown(pe)
    for (const fail of this.inFlight) fail(e)
    this.inFlight.clear()
  }

  /**
   * `p` bounded by its deadline (CallTimeout) and by the breaker (HypervisorDown), whichever
   * comes first; the late outcome of `p` is ignored. One promise and one timer per call, the
   * waiter removed as soon as the call settles: a race against a promise that rejects when the
   * breaker opens left a reaction on that promise per call until the end of the run (memory and
   * CPU growing with the fleet's size, bench/status marginal CPU).
   */
  bound<T>(p: Promise<T>, ms: number, label: string, hypervisorLevel: boolean): Promise<T> {
    if (this.down) {
      p.catch(() => undefined)
      return Promise.reject(new HypervisorDown(this.down))
    }
    return new Promise<T>((resolve, reject) => {
      const fail = (e: unknown) => {
        cancel()
        this.inFlight.delete(fail)
        reject(e)
      }
      const cancel = armDeadline(ms, () => fail(new CallTimeout(label, ms, hypervisorLevel)))
      this.inFlight.add(fail)
      p.then(
        (v) => {
          cancel()
          this.inFlight.delete(fail)
          resolve(v)
        },
        fail,
      )
    })
  }
}

/** Collects the status of `establishments` and judges each. Never throws for a fleet problem. */
export async function collectStatus(opts: StatusOptions): Promise<StatusReport> {
  const now = opts.now ?? (() => new Date())
  const started = now()
  const t0 = performance.now()
  const requestTimeoutMs = opts.requestTimeoutMs ?? STATUS_DEFAULTS.requestTimeoutMs
  const healthTimeoutMs = opts.healthTimeoutMs ?? STATUS_DEFAULTS.healthTimeoutMs
  const pool = new KeyedPool({max: opts.maxParallel ?? STATUS_DEFAULTS.maxParallel, perKey: opts.perHypervisor ?? STATUS_DEFAULTS.perHypervisor})

  const byHv = new Map<string, Establishment[]>()
  for (const e of opts.establishments) byHv.set(e.hypervisor, [...(byHv.get(e.hypervisor) ?? []), e])

  const summaries: HypervisorSummary[] = []
  const observations = (
    await Promise.all(
      [...byHv].map(async ([name, ests]) => {
        const h0 = performance.now()
        const run = new HypervisorRun(name)
        const obs = await probeHypervisor(run, ests, {...opts, pool, requestTimeoutMs, healthTimeoutMs})
        summaries.push({
          name,
          reachable: obs.every((o) => o.hypervisorReachable),
          error: run.down ?? obs.find((o) => o.hypervisorError)?.hypervisorError ?? null,
          establishments: ests.length,
          durationMs: Math.round(performance.now() - h0),
        })
        return obs
      }),
    )
  ).flat()

  const judgedAt = now()
  const policy = opts.policy ?? DEFAULT_POLICY
  const establishments = observations.map((o) => toEstablishmentStatus(o, judgedAt, policy))
  summaries.sort((a, b) => compareIds(a.name, b.name))
  return {
    checkedAt: started.toISOString(),
    durationMs: Math.round(performance.now() - t0),
    summary: summarize(establishments),
    establishments: sortStatuses(establishments),
    hypervisors: summaries,
  }
}

interface RunContext extends StatusOptions {
  pool: KeyedPool
  requestTimeoutMs: number
  healthTimeoutMs: number
}

function baseObservation(e: Establishment): Observation {
  return {
    uai: e.uai,
    name: e.name,
    hypervisor: e.hypervisor,
    node: e.node,
    vmid: e.vmid,
    ...(e.image ? {wantedImage: e.image} : {}),
    hypervisorReachable: false,
  }
}

async function probeHypervisor(run: HypervisorRun, ests: Establishment[], ctx: RunContext): Promise<Observation[]> {
  const obs = ests.map(baseObservation)

  /** One API request: pooled per hypervisor, with its deadline, behind the breaker. */
  const call = <T>(label: string, fn: (api: PveApi) => Promise<T>, opts: {timeoutMs?: number; guestSide?: boolean} = {}): Promise<T> => {
    if (run.down) return Promise.reject(new HypervisorDown(run.down))
    return ctx.pool.run(run.name, async () => {
      if (run.down) throw new HypervisorDown(run.down)
      try {
        return await run.bound(fn(run.api!), opts.timeoutMs ?? ctx.requestTimeoutMs, label, !opts.guestSide)
      } catch (err) {
        const pe = toProbeError(label, err)
        if (isHypervisorLevel(pe) && !(err instanceof HypervisorDown)) {
          if (!run.down) ctx.io.debug(`hypervisor ${run.name} stopped answering`, {call: label, cause: pe.message})
          run.trip(pe)
        }
        throw err
      }
    })
  }

  try {
    const c0 = performance.now()
    run.api = await withTimeout(ctx.api(run.name), ctx.requestTimeoutMs, 'connect')
    ctx.io.debug(`hypervisor ${run.name} opened`, {ms: Math.round(performance.now() - c0)})
  } catch (err) {
    const pe = toProbeError('connect', err)
    ctx.io.debug(`cannot open hypervisor ${run.name}`, {code: pe.code, cause: pe.message})
    for (const o of obs) o.hypervisorError = pe
    return obs
  }

  let resources: PveResource[]
  try {
    resources = await call('cluster/resources', (api) => api.clusterResources('vm'))
  } catch (err) {
    const pe = toProbeError('cluster/resources', err)
    for (const o of obs) {
      if (isHypervisorLevel(pe)) o.hypervisorError = pe
      else {
        // it answered (a refusal, a server error): the VMs' state is what could not be read
        o.hypervisorReachable = true
        o.vmError = pe
      }
    }
    return obs
  }
  const byVmid = new Map<number, PveResource>()
  for (const r of resources) if (r.type === 'qemu' && r.vmid !== undefined) byVmid.set(Number(r.vmid), r)

  await Promise.all(obs.map((o) => probeVm(o, byVmid.get(o.vmid), call, ctx)))
  return obs
}

type Call = <T>(label: string, fn: (api: PveApi) => Promise<T>, opts?: {timeoutMs?: number; guestSide?: boolean}) => Promise<T>

async function probeVm(o: Observation, res: PveResource | undefined, call: Call, ctx: RunContext): Promise<void> {
  o.hypervisorReachable = true
  if (res) {
    o.vmPresent = true
    o.vmNode = res.node ?? o.node
    o.vmState = res.status
    if (typeof res.uptime === 'number') o.uptimeS = res.uptime
    if (res.template) o.template = true
    if (res.tags) o.tags = res.tags
  } else {
    // not listed: absent, or invisible to this token; one direct look tells which
    try {
      const st = await call('status/current', (api) => api.vmStatus(o.node, o.vmid))
      if (!st) o.vmPresent = false
      else {
        o.vmPresent = true
        o.vmNode = o.node
        o.vmState = st.status
        if (typeof st.uptime === 'number') o.uptimeS = st.uptime
        if (st.lock) o.lock = st.lock
        if (st.tags) o.tags = st.tags
      }
    } catch (err) {
      o.vmError = toProbeError('status/current', err)
      if (isHypervisorLevel(o.vmError)) moveToHypervisor(o, o.vmError)
      return
    }
  }
  if (!o.vmPresent) return
  o.tagImage = imageFromTags(o.tags)
  const node = o.vmNode ?? o.node

  const readMeta = async () => {
    try {
      const cfg = await call('config', (api) => api.vmConfig(node, o.vmid))
      if (!cfg) return
      const desc = typeof cfg.description === 'string' ? cfg.description : undefined
      const meta = parseDescription(desc)
      if (typeof cfg.lock === 'string' && cfg.lock !== '') o.lock = cfg.lock
      if (typeof cfg.tags === 'string') o.tagImage = imageFromTags(cfg.tags) ?? o.tagImage
      if (meta) {
        o.metaImage = meta.image
        o.deployedAt = meta.deployedAt
        if (meta.rollout) o.rollout = rolloutState(meta.rollout)
      }
    } catch (err) {
      o.metaError = toProbeError('config', err)
    }
  }

  const readHealth = async () => {
    if (o.vmState !== 'running' || o.template) return
    try {
      const r = await call('agent exec pgi-health', (api) => api.agentExec(node, o.vmid, [HEALTH_COMMAND], {timeoutMs: ctx.healthTimeoutMs, idempotent: true}), {
        timeoutMs: ctx.healthTimeoutMs + ctx.requestTimeoutMs,
        guestSide: true,
      })
      o.agentAnswering = true
      o.healthVia = 'agent-exec'
      o.healthExitCode = r.exitcode
      const parsed = parseHealthOutput(r.stdout)
      if ('report' in parsed) {
        o.health = parsed.report
        if (ctx.databaseDetails) await readDatabaseList(o, node, call, ctx)
      }
      else {
        const firstErr = r.stderr.trim().split('\n')[0]
        o.healthError = {
          code: ErrorCode.GUEST_COMMAND_FAILED,
          call: 'agent exec pgi-health',
          message: r.exitcode === 0 || r.exitcode === 1 ? parsed.error : `pgi-health exited with ${r.exitcode}${firstErr ? `: ${firstErr}` : ''}`,
        }
      }
    } catch (err) {
      const pe = toProbeError('agent exec pgi-health', err)
      if (pe.code === ErrorCode.PVE_PERMISSION) {
        o.healthError = pe
        // may not run it (PVE 9 without VM.GuestAgent.Unrestricted): read the result the server
        // records every 2 minutes (file-read: VM.GuestAgent.FileRead), else what the agent tells
        if (!(await readHealthRecord(o, node, call)) && o.agentAnswering !== false) await agentFallback(o, node, call)
      } else if (isAgentDown(pe)) {
        o.agentAnswering = false
        o.agentError = pe
      } else o.healthError = pe
    }
  }

  await Promise.all([readMeta(), readHealth()])
}

/** `pgi-db list` in the guest: each database's size and last backup (what pgi-health does not say). */
async function readDatabaseList(o: Observation, node: string, call: Call, ctx: RunContext): Promise<void> {
  const label = 'agent exec pgi-db list'
  try {
    o.dbList = await call(label, (api) => listDatabases({api, node, vmid: o.vmid, uai: o.uai}, ctx.healthTimeoutMs), {timeoutMs: ctx.healthTimeoutMs + ctx.requestTimeoutMs, guestSide: true})
  } catch (err) {
    o.dbListError = toProbeError(label, err)
  }
}

/** A VM-level call hit a dead hypervisor: the line is about the hypervisor, not the VM. */
function moveToHypervisor(o: Observation, pe: ProbeError): void {
  o.hypervisorReachable = false
  o.hypervisorError = pe
  delete o.vmError
}

/**
 * pgi-health may not run with this token: ask the agent what an audit privilege allows (ping, and
 * the data disk's usage from get-fsinfo), so an AMI still sees their server answer and its disk.
 */
async function agentFallback(o: Observation, node: string, call: Call): Promise<void> {
  try {
    o.agentAnswering = await call('agent ping', (api) => api.agentPing(node, o.vmid))
  } catch (err) {
    const pe = toProbeError('agent ping', err)
    o.agentError = pe
    if (pe.code !== ErrorCode.PVE_PERMISSION && isAgentDown(pe)) o.agentAnswering = false
    return
  }
  if (!o.agentAnswering) return
  try {
    const fs = await call('agent get-fsinfo', (api) => api.agentFsInfo(node, o.vmid))
    const d = findDataDisk(fs)
    if (d) o.fsDataDisk = d
  } catch {
    // usage is a bonus here; the verdict does not depend on it
  }
}

/** The data disk in a get-fsinfo answer: mounted at /srv/pgi, or on the disk with serial pgi-data. */
export function findDataDisk(fs: unknown[]): Observation['fsDataDisk'] {
  for (const f of fs) {
    if (typeof f !== 'object' || f === null) continue
    const e = f as {mountpoint?: unknown; 'total-bytes'?: unknown; 'used-bytes'?: unknown; disk?: {serial?: unknown}[]}
    const serialMatch = Array.isArray(e.disk) && e.disk.some((d) => typeof d?.serial === 'string' && d.serial.endsWith(DATA_SERIAL))
    if ((e.mountpoint === DATA_MOUNT || serialMatch) && typeof e['total-bytes'] === 'number' && typeof e['used-bytes'] === 'number') {
      return {usedBytes: e['used-bytes'], sizeBytes: e['total-bytes'], mountpoint: String(e.mountpoint ?? '')}
    }
  }
  return undefined
}
