import type {EstablishmentCredentials} from '../fleet/credentials.js'
import type {GuestTarget} from '../fleet/guest.js'
import {formatDescription, formatTags, parseDescription, type RolloutMark, type VmMeta} from '../fleet/vm-meta.js'
import type {DeployImage} from '../fleet/images.js'
import {ErrorCode, PgiError, UserError, asPgiError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {Hypervisors} from '../hypervisors.js'
import type {Establishment} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi, PveParams, PveVmConfig} from '../proxmox/types.js'
import type {Secret} from '../secret.js'
import {sleep} from '../sleep.js'
import type {Control, RolloutJournal} from './journal.js'

/**
 * One establishment's rollout (establishment.ts), its vocabulary and its hold on the VM: the
 * steps and outcomes, the run's context, the errors that stop it, and the `rollout` mark in the
 * VM's pgi-meta description, read and written by compare-and-swap on the config digest, with
 * the retries of reads, mark writes and forward steps.
 */

export const STEPS = ['claimed', 'checked', 'backed-up', 'stopped', 'swapped', 'started', 'gated', 'committed'] as const
export type ForwardStep = (typeof STEPS)[number]
/** Marks after which nothing is in progress. */
export const FINAL_STEPS = new Set(['committed', 'rolled-back', 'rollback-failed', 'precheck-failed', 'backup-failed', 'aborted'])

export type Outcome =
  | 'updated' // on the new version, gate passed
  | 'already' // was already on the target version: nothing sent
  | 'rolled-back' // failed, back on the previous version and healthy
  | 'failed' // failed before any change (pre-check, backup): still on the previous version
  | 'rollback-failed' // could not roll back: needs a person
  | 'interrupted' // stopped mid-way (hypervisor unreachable, killed): resume finishes it
  | 'paused' // stopped at a step boundary by `pgi rollout pause`
  | 'aborted' // stopped by `pgi rollout abort` (rolled back when it was mid-way)
  | 'blocked' // not started: not a pgi VM, another rollout holds it…
  | 'deferred' // outside its maintenance window
  | 'not-started' // the rollout halted / was paused before its turn

export interface EstablishmentResult {
  uai: string
  name: string
  hypervisor: string
  node: string
  vmid: number
  ring: string
  from?: string
  to: string
  outcome: Outcome
  /** Last step recorded on the VM. */
  step?: string
  reason?: string
  /** Local copy of the backup manifest. */
  manifest?: string
  /** A new AMI handoff written after the update (the Tryton series changed: a major upgrade). */
  handoff?: string
  durationMs: number
}

export interface EstablishmentCtx {
  hypervisors: Hypervisors
  io: Io
  image: DeployImage
  rolloutId: string
  runner: string
  journal: RolloutJournal
  /** Take over marks of this rollout id held by another runner (resume). */
  takeover: boolean
  window: 'now' | 'inventory'
  keepOldDisk: boolean
  agentTimeoutMs: number
  healthTimeoutMs: number
  /**
   * How long a major upgrade's migration may take in the guest before the gate gives up (rolls
   * back). Undefined: computed from the number of databases (migrationTimeoutFor).
   */
  migrationTimeoutMs?: number
  pollIntervalMs: number
  /** Seconds a clean shutdown may take before the VM is stopped hard (rollback only; forward waits). */
  shutdownTimeoutS: number
  /** Attempts of one forward step on transient errors before rolling back (default 3). */
  stepAttempts: number
  /** Tryton admin password for the gate's login (undefined: login not checked, said in the result). */
  trytonAdmin: (uai: string) => Promise<Secret | undefined>
  control: () => Promise<Control>
  /**
   * After a committed update: the Tryton series recorded and, when it changed, a new AMI handoff
   * written (undefined: nothing recorded, as in tests of the rollout alone).
   */
  credentials?: Pick<EstablishmentCredentials, 'refreshAfterUpdate'>
  /** A kill (tests; SIGTERM): stop between steps, touch nothing more. */
  signal?: AbortSignal
  now: () => Date
  onStep?: (uai: string, step: string) => void | Promise<void>
  update?: (text: string) => void
}

/** The mark belongs to another runner (or another rollout) now: stop touching this VM. */
export class RunnerConflict extends UserError {
  constructor(message: string, where: PgiError['where']) {
    super(ErrorCode.LOCKED, message, {exitCode: ExitCode.REFUSED, where, suggestions: ['Another pgi run drives this establishment: let it finish, or run `pgi rollout status`.']})
  }
}

/** The new version did not pass the gate. */
export class GateFailed extends UserError {
  constructor(message: string, where: PgiError['where']) {
    super(ErrorCode.UNHEALTHY, message, {exitCode: ExitCode.UNHEALTHY, where})
  }
}

/** `pgi rollout abort` reached an establishment mid-way: roll it back. */
export class AbortRequested extends GateFailed {
  constructor(w: PgiError['where']) {
    super('aborted by `pgi rollout abort`', w)
  }
}

/** Stopped on purpose between steps (kill signal): nothing more is sent. */
export class Killed extends Error {
  constructor() {
    super('rollout runner stopped')
    this.name = 'Killed'
  }
}

export class Stop extends Error {
  constructor(readonly outcome: 'paused') {
    super(outcome)
  }
}

export interface Run {
  est: Establishment
  t: GuestTarget
  api: PveApi
  ctx: EstablishmentCtx
  id: string
  from?: string
  to: string
  manifestLocal?: string
  /** Last step this run recorded (for the result when it stops). */
  step?: string
}

export function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e)
}

export function transient(e: unknown): boolean {
  if (e instanceof RunnerConflict || e instanceof GateFailed || e instanceof Killed) return false
  const p = asPgiError(e)
  return ![ErrorCode.BACKUP_FAILED, ErrorCode.PVE_PERMISSION, ErrorCode.PVE_PARAMETERS, ErrorCode.IMAGE_INVALID].includes(p.code as never)
}

export function unreachable(e: unknown): boolean {
  const p = asPgiError(e)
  return p.code === ErrorCode.UNREACHABLE || p.code === ErrorCode.TLS_MISMATCH
}

/** A server-side failure (HTTP 5xx, not a digest mismatch nor a refusal): worth sending again. */
export function serverError(e: unknown): boolean {
  const p = asPgiError(e)
  return p.code === ErrorCode.PVE_HTTP || p.code === ErrorCode.PVE_SERVER_ERROR || p.code === ErrorCode.PVE_LOCKED
}

/**
 * Reads and mark writes are retried on server errors (a 500, a busy config lock): sending them
 * again is safe — a read changes nothing, a mark write carries the digest it was computed from.
 */
export async function resilient<T>(r: Run, fn: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn()
    } catch (err) {
      if (!serverError(err) || i >= 5 || r.ctx.signal?.aborted) throw err
      await sleep(Math.min(3000, r.ctx.pollIntervalMs * 2 ** i))
    }
  }
}

export async function readVm(r: Run): Promise<{cfg: PveVmConfig; meta: VmMeta}> {
  const cfg = await resilient(r, () => r.api.vmConfig(r.est.node, r.est.vmid))
  const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
  if (!cfg || !meta) {
    throw new UserError(ErrorCode.REFUSED, `VM ${r.est.vmid} ${cfg ? 'has no pgi description' : 'does not exist'}`, {
      exitCode: ExitCode.REFUSED,
      where: where(r),
      suggestions: ['Deploy it first (pgi deploy); rollout only updates VMs pgi deployed.'],
    })
  }
  return {cfg, meta}
}

export function where(r: Pick<Run, 'est'>): PgiError['where'] {
  return {uai: r.est.uai, hypervisor: r.est.hypervisor, node: r.est.node, vmid: r.est.vmid}
}

export function owns(r: Run, mark: RolloutMark | undefined): boolean {
  return mark !== undefined && mark.id === r.id && mark.runner === r.ctx.runner
}

/**
 * Compare-and-swap write of the VM config: `change` sees the current config and meta (ownership
 * already checked) and returns the params to send, or undefined when there is nothing left to do.
 * A digest mismatch re-reads and re-checks ownership before trying again.
 */
export async function cas(r: Run, change: (cfg: PveVmConfig, meta: VmMeta) => (PveParams & {delete?: string}) | undefined, opts: {claim?: boolean} = {}): Promise<PveVmConfig> {
  for (let attempt = 0; ; attempt++) {
    const {cfg, meta} = await readVm(r)
    if (!opts.claim && !owns(r, meta.rollout)) {
      throw new RunnerConflict(`the rollout mark of VM ${r.est.vmid} now names ${meta.rollout ? `rollout ${meta.rollout.id} run by ${meta.rollout.runner ?? '?'}` : 'no rollout'}: another runner took it over`, where(r))
    }
    const params = change(cfg, meta)
    if (!params) return cfg
    try {
      await r.api.updateVmConfig(r.est.node, r.est.vmid, {...params, digest: cfg.digest})
      return cfg
    } catch (err) {
      const e = asPgiError(err)
      if (serverError(e) && attempt < 5 && !r.ctx.signal?.aborted) {
        // the write may or may not have happened: re-read (its digest tells) and decide again
        await sleep(Math.min(3000, r.ctx.pollIntervalMs * 2 ** (attempt + 1)))
        continue
      }
      if (e.code !== ErrorCode.PVE_DIGEST_MISMATCH || attempt >= 8) throw err
      r.ctx.io.debug(`${r.est.uai}: config changed under us (digest), re-reading`)
    }
  }
}

/** Writes the mark (and, with `image`, the new version in meta and tags). */
export async function writeMark(r: Run, patch: Partial<RolloutMark>, opts: {claim?: boolean; image?: DeployImage} = {}): Promise<void> {
  await cas(
    r,
    (_cfg, meta) => {
      if (opts.claim) {
        const m = meta.rollout
        if (m && !FINAL_STEPS.has(m.step) && !(m.id === r.id && (m.runner === r.ctx.runner || r.ctx.takeover))) {
          throw new RunnerConflict(`VM ${r.est.vmid} is held by rollout ${m.id} (step ${m.step}, runner ${m.runner ?? '?'})`, where(r))
        }
      }
      const base: RolloutMark = opts.claim && (!meta.rollout || meta.rollout.id !== r.id) ? {id: r.id, from: meta.image, to: r.to, step: 'claimed', at: ''} : meta.rollout!
      const mark: RolloutMark = {...base, ...patch, runner: r.ctx.runner, at: r.ctx.now().toISOString()}
      const next: VmMeta = opts.image ? {...meta, image: opts.image.version, imageSha256: opts.image.sha256, deployedAt: r.ctx.now().toISOString(), rollout: mark} : {...meta, rollout: mark}
      const p: PveParams = {description: formatDescription(next, r.est.name)}
      if (opts.image) p.tags = formatTags(next, r.est.ring)
      return p
    },
    {claim: opts.claim},
  )
  if (patch.step) {
    r.step = patch.step
    await r.ctx.journal.writeEstablishment({uai: r.est.uai, step: patch.step, reason: patch.reason, manifest: r.manifestLocal, at: r.ctx.now().toISOString()})
    await r.ctx.onStep?.(r.est.uai, patch.step)
  }
}

export function checkKilled(r: Run): void {
  if (r.ctx.signal?.aborted) throw new Killed()
}

/** Runs one forward step, retrying transient failures (a 500, a failed task) a few times. */
export async function attempt<T>(r: Run, what: string, fn: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    checkKilled(r)
    try {
      return await fn()
    } catch (err) {
      if (!transient(err) || i >= r.ctx.stepAttempts || r.ctx.signal?.aborted) throw err
      r.ctx.io.debug(`${r.est.uai}: ${what} failed (attempt ${i}), retrying: ${describe(err)}`)
      await sleep(Math.min(5000, r.ctx.pollIntervalMs * 2 ** i))
    }
  }
}
