/**
 * `pgi deploy` as a library: plan (src/deploy/plan.ts), then carry out each establishment's part
 * in parallel (bounded overall and per hypervisor), each one independent of the others' failures.
 *
 * Per establishment, from whatever state its VM is really in (so an interrupted deploy is finished
 * by running deploy again, never recreated):
 *   stage image on the node (once per node) → create VM (OS disk imported, data disk, cloud-init)
 *   → grow the OS disk → start → guest agent → pgi-health → secrets (generated, stored, applied
 *   through the agent's stdin) → mark the VM configured (description, digest CAS) → AMI handoff.
 */
import {createHash} from 'node:crypto'
import {hostname} from 'node:os'

import {waitForAgent, waitForHealthy, type GuestTarget} from '../fleet/guest.js'
import {bootVm, createVmFromImage, markConfigured} from '../fleet/vm-create.js'
import {formatTags, parseDescription} from '../fleet/vm-meta.js'
import {ErrorCode, UserError, asPgiError, type ErrorCodeValue, type ErrorLocation} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import type {Hypervisors} from '../hypervisors.js'
import {configureGuestOffsite, ensureOffsitePassword} from '../fleet/offsite.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {Establishment, OffsiteSettings} from '../inventory/types.js'
import type {Io} from '../io.js'
import {runParallel} from '../progress.js'
import type {PveApi} from '../proxmox/types.js'
import {readHandoffDatabases, type HandoffDatabase} from '../fleet/handoff.js'
import type {EstablishmentCredentials} from '../fleet/credentials.js'
import {ensureDatabases, type DatabaseOutcome} from './databases.js'
import {createParams, parseDisk, touchesCloudInit, updateParams, type DeployImage, type Drift} from './desired.js'
import {DeployJournal, type DeployStep, type JournalEntry} from './journal.js'
import {fmtDrift, needsWork, type DeployTarget, type Plan, type PlanItem} from './plan.js'
import {Stager} from '../fleet/stage.js'
import type {SecretStore} from '../secrets/store.js'

export type DeployOutcomeKind = 'created' | 'updated' | 'up-to-date' | 'drifted' | 'failed' | 'blocked'

export interface DeployOutcome extends DeployTarget {
  outcome: DeployOutcomeKind
  /** What was done, or why nothing was. */
  detail: string
  /** The AMI's handoff file, when one was written or already there. */
  handoff?: string
  /** The declared databases deploy created or found (absent when it did not look: nothing to do, or failed before). */
  databases?: DatabaseOutcome[]
  error?: {code: ErrorCodeValue; message: string; suggestions: string[]; where: ErrorLocation}
  durationMs: number
}

export interface DeployResult {
  outcomes: DeployOutcome[]
  counts: Record<DeployOutcomeKind, number>
  /** 0 when every establishment is created/updated/up to date, 4 when some failed or were blocked. */
  exitCode: ExitCodeValue
}

export interface ExecuteOptions {
  hypervisors: Hypervisors
  io: Io
  /** The establishments' credentials (src/fleet/credentials.ts#storeCredentials). */
  credentials: EstablishmentCredentials
  /** Folder for per-establishment journals (src/paths.ts journalDir). */
  journalDir: string
  maxParallel?: number
  /** At most this many establishments at once on one hypervisor (default 4). */
  maxPerHypervisor?: number
  /** Guest agent wait (default 10 min: software-emulated boots are slow). */
  agentTimeoutMs?: number
  /** pgi-health wait after the agent answered (default 20 min). */
  healthTimeoutMs?: number
  /** Poll interval of agent/health waits (default 3 s / 5 s). */
  pollIntervalMs?: number
  /** Stage with download-url from this URL (`{file}` = image file name) instead of uploading. */
  imageUrl?: string
  bwlimitKiB?: number
  /**
   * The inventory's `offsite:` section and the store of the repository keys: every VM deployed
   * gets its off-site settings once healthy (key generated on first use, given over the guest
   * agent's stdin: docs/backups.md). Absent: no off-site copies.
   */
  offsite?: {settings: OffsiteSettings; store: SecretStore}
  now?: () => Date
  signal?: AbortSignal
}

const RUNNER = `${hostname()}:${process.pid}`

export async function executeDeploy(plan: Plan, establishments: readonly Establishment[], opts: ExecuteOptions): Promise<DeployResult> {
  const byUai = new Map(establishments.map((e) => [e.uai, e]))
  const journal = new DeployJournal(opts.journalDir)
  const stager = new Stager({io: opts.io, imageUrl: opts.imageUrl, bwlimitKiB: opts.bwlimitKiB})
  const now = opts.now ?? (() => new Date())

  const outcomes = new Map<string, DeployOutcome>()
  const jobs = plan.items.map((item) => ({
    title: `${item.uai} ${item.action === 'drifted' ? 'update' : item.action}`,
    key: item.hypervisor,
    item,
  }))

  const runOne = async (item: PlanItem, update: (text: string) => void): Promise<string> => {
    const started = Date.now()
    const est = byUai.get(item.uai)!
    const base = {uai: item.uai, name: item.name, hypervisor: item.hypervisor, node: item.node, vmid: item.vmid, image: item.image}
    try {
      const r = await deployOne(item, est, plan, {...opts, journal, stager, now, update})
      outcomes.set(item.uai, {...base, ...r, durationMs: Date.now() - started})
      return r.detail
    } catch (err) {
      const e = asPgiError(err)
      const where: ErrorLocation = {uai: item.uai, hypervisor: item.hypervisor, node: item.node, vmid: item.vmid, ...e.where}
      const outcome: DeployOutcomeKind = item.action === 'blocked' ? 'blocked' : 'failed'
      outcomes.set(item.uai, {
        ...base,
        outcome,
        detail: e.message,
        error: {code: e.code, message: e.message, suggestions: e.suggestions, where},
        durationMs: Date.now() - started,
      })
      throw e
    }
  }

  await runParallel(
    opts.io,
    jobs.map((j) => ({title: j.title, key: j.key, run: (update: (t: string) => void) => runOne(j.item, update)})),
    {max: opts.maxParallel ?? 10, perKey: opts.maxPerHypervisor ?? 4},
  )

  const list = plan.items.map((i) => outcomes.get(i.uai)!)
  const counts: Record<DeployOutcomeKind, number> = {created: 0, updated: 0, 'up-to-date': 0, drifted: 0, failed: 0, blocked: 0}
  for (const o of list) counts[o.outcome]++
  return {outcomes: list, counts, exitCode: exitCodeFor(list)}
}

/**
 * 0 when nothing failed; when everything failed for the same reason (a hypervisor unreachable,
 * its certificate not matching the pin), that reason's exit code; otherwise 4 (partial).
 */
export function exitCodeFor(list: DeployOutcome[]): ExitCodeValue {
  const bad = list.filter((o) => o.outcome === 'failed' || o.outcome === 'blocked')
  if (bad.length === 0) return ExitCode.OK
  if (bad.length === list.length) {
    const codes = new Set(bad.map((o) => o.error?.code))
    if (codes.size === 1) {
      const c = [...codes][0]
      if (c === ErrorCode.TLS_MISMATCH || c === ErrorCode.UNREACHABLE) return ExitCode.UNREACHABLE
    }
  }
  return ExitCode.PARTIAL
}

interface OneCtx extends ExecuteOptions {
  journal: DeployJournal
  stager: Stager
  now: () => Date
  update: (text: string) => void
}

async function deployOne(item: PlanItem, est: Establishment, plan: Plan, ctx: OneCtx): Promise<{outcome: DeployOutcomeKind; detail: string; handoff?: string; databases?: DatabaseOutcome[]}> {
  if (item.action === 'blocked') {
    const b = item.blocked!
    throw new UserError(b.code, b.message, {suggestions: b.suggestions, where: {uai: item.uai, hypervisor: item.hypervisor, node: item.node, vmid: item.vmid}})
  }
  if (!needsWork(item)) {
    const handoff = await ensureHandoff(item, est, ctx)
    const offsite = await offsiteIfChanged(item, est, ctx)
    if (item.action === 'drifted') {
      ctx.io.warn(`${item.uai}: ${item.drifts.map(fmtDrift).join('; ')}`)
      return {outcome: 'drifted', detail: `not changed: ${item.drifts.map((d) => d.setting).join(', ')} differ (${item.drifts[0]?.note ?? 'fix by hand'})${offsite ? `; ${offsite}` : ''}`, handoff}
    }
    if (offsite) return {outcome: 'updated', detail: offsite, handoff}
    return {outcome: 'up-to-date', detail: 'up to date, nothing sent', handoff}
  }

  const api = await ctx.hypervisors.get(item.hypervisor)
  const target: GuestTarget = {api, node: item.node, vmid: item.vmid, uai: item.uai}
  const previous = await ctx.journal.read(item.uai)
  const entry: JournalEntry = {
    uai: item.uai,
    hypervisor: item.hypervisor,
    node: item.node,
    vmid: item.vmid,
    image: item.image,
    runner: RUNNER,
    startedAt: ctx.now().toISOString(),
    steps: {},
  }
  if (previous && !previous.finishedAt && item.action === 'continue') {
    ctx.io.info(`${item.uai}: continuing the deploy started ${previous.startedAt} by ${previous.runner} (last step: ${lastStep(previous) ?? 'none'})`)
  }
  const step = async (s: DeployStep) => {
    entry.steps[s] = ctx.now().toISOString()
    await ctx.journal.write(entry)
  }
  await ctx.journal.write(entry)

  try {
    let detail: string
    let outcome: DeployOutcomeKind
    let databases: DatabaseOutcome[] | undefined
    if (item.action === 'drifted') {
      detail = await applyDrift(item, est, target, plan, ctx, step)
      outcome = 'updated'
      // databases the plan found missing, or could not see (the VM was stopped)
      if (item.drifts.some((d) => d.fix === 'database' || d.fix === 'start')) {
        databases = await ensureDatabases(target, est, {now: ctx.now, update: ctx.update})
        await step('databases')
        const made = databases.filter((d) => d.outcome === 'created').map((d) => d.name)
        if (made.length > 0) detail = [detail, `created database${made.length > 1 ? 's' : ''} ${made.join(', ')}`].filter(Boolean).join('; ')
      }
      if (await offsiteChanged(item.uai, est, ctx)) {
        const off = await configureOffsite(target, est, ctx, entry)
        if (off) detail = [detail, off].filter(Boolean).join('; ')
      }
      detail ||= 'nothing left to change'
    } else {
      if (item.action === 'create') {
        const image = plan.images.get(item.image)
        if (!image) throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `image ${item.image} was not resolved while planning`)
        ctx.update(`staging image ${image.version} on ${item.node}`)
        const staged = await ctx.stager.stage(api, ctx.hypervisors.definition(item.hypervisor), item.node, image)
        ctx.io.debug(`${item.uai}: image ${staged}`)
        await step('staged')
        ctx.update(`creating VM ${item.vmid}`)
        await createVm(api, est, item, image, ctx)
        await step('created')
      }
      await finishSetup(item, est, target, ctx, step)
      await configureOffsite(target, est, ctx, entry)
      databases = await ensureDatabases(target, est, {now: ctx.now, update: ctx.update})
      await step('databases')
      const made = databases.filter((d) => d.outcome === 'created').map((d) => d.name)
      detail = `${item.action === 'create' ? `VM ${item.vmid} created and configured` : `unfinished deploy of VM ${item.vmid} completed`}${made.length ? `; created database${made.length > 1 ? 's' : ''} ${made.join(', ')}` : ''}`
      outcome = 'created'
    }
    const handoff = await writeHandoff(target, est, ctx)
    await step('handoff')
    entry.finishedAt = ctx.now().toISOString()
    entry.outcome = outcome === 'created' ? 'created' : 'updated'
    await ctx.journal.write(entry)
    return {outcome, detail, handoff, ...(databases ? {databases} : {})}
  } catch (err) {
    const e = asPgiError(err)
    entry.outcome = 'failed'
    entry.error = {code: e.code, message: e.message}
    await ctx.journal.write(entry).catch(() => undefined)
    throw err
  }
}

/** What of the off-site settings the VM keeps, without the key: a change of these is given again. */
function offsiteDigest(o: OffsiteSettings, uai: string): string {
  const said = {repository: offsiteRepositories(o, uai).vm, limit: o.limitUploadKib ?? null, window: o.window ?? null}
  return createHash('sha256').update(JSON.stringify(said)).digest('hex').slice(0, 32)
}

/** True when the inventory has off-site settings the journal does not record as given to the VM. */
async function offsiteChanged(uai: string, est: Establishment, ctx: OneCtx): Promise<boolean> {
  if (!ctx.offsite) return false
  const previous = await ctx.journal.read(uai)
  return previous?.offsite?.settings !== offsiteDigest(ctx.offsite.settings, est.uai)
}

/**
 * Gives the VM its off-site settings (repository, key, bandwidth cap, window) through
 * `pgi-offsite --configure` on the guest agent's stdin; the key is generated and stored on first
 * use (never printed). Recorded in the journal entry. Returns what to say, undefined when the
 * inventory has no offsite: section.
 */
async function configureOffsite(target: GuestTarget, est: Establishment, ctx: OneCtx, entry: JournalEntry): Promise<string | undefined> {
  if (!ctx.offsite) return undefined
  ctx.update('giving the VM its off-site backup settings')
  const {password, generated} = await ensureOffsitePassword(ctx.offsite.store, est.uai)
  const {repository} = await configureGuestOffsite(target, est.uai, ctx.offsite.settings, password)
  ctx.io.debug(`${est.uai}: off-site repository ${repository}${generated ? ' (key generated)' : ''}`)
  entry.offsite = {settings: offsiteDigest(ctx.offsite.settings, est.uai), at: ctx.now().toISOString()}
  entry.steps.offsite = entry.offsite.at
  await ctx.journal.write(entry)
  return `off-site copies to ${repository}`
}

/**
 * For a VM deploy otherwise leaves alone (up to date, or drifted by hand): its off-site settings,
 * when the inventory's are not those last given (an offsite: section added or changed) and the
 * VM runs. Returns what was done, undefined when nothing was.
 */
async function offsiteIfChanged(item: PlanItem, est: Establishment, ctx: OneCtx): Promise<string | undefined> {
  if (!(await offsiteChanged(item.uai, est, ctx))) return undefined
  const api = await ctx.hypervisors.get(item.hypervisor)
  if ((await api.vmStatus(item.node, item.vmid))?.status !== 'running') {
    ctx.io.warn(`${item.uai}: VM ${item.vmid} is not running: its off-site settings will be given at the next deploy once it runs`)
    return undefined
  }
  const previous = await ctx.journal.read(item.uai)
  const entry: JournalEntry = previous ?? {uai: item.uai, hypervisor: item.hypervisor, node: item.node, vmid: item.vmid, image: item.image, runner: RUNNER, startedAt: ctx.now().toISOString(), steps: {}, finishedAt: ctx.now().toISOString(), outcome: 'updated'}
  return configureOffsite({api, node: item.node, vmid: item.vmid, uai: item.uai}, est, ctx, entry)
}

function lastStep(e: JournalEntry): string | undefined {
  return Object.entries(e.steps).sort((a, b) => (a[1]! < b[1]! ? -1 : 1)).slice(-1)[0]?.[0]
}

/** POST create; "already exists" after a lost answer is resolved by re-reading the VM. */
async function createVm(api: PveApi, est: Establishment, item: PlanItem, image: DeployImage, ctx: OneCtx): Promise<void> {
  const hv = ctx.hypervisors.definition(item.hypervisor)
  await createVmFromImage(api, {uai: est.uai, hypervisor: item.hypervisor, node: item.node, vmid: item.vmid}, createParams(est, hv, image, ctx.now()), {
    io: ctx.io,
    update: ctx.update,
    isOurs: (meta) => meta?.uai === est.uai,
  })
}

async function finishSetup(item: PlanItem, est: Establishment, target: GuestTarget, ctx: OneCtx, step: (s: DeployStep) => Promise<void>): Promise<void> {
  await bootVm(target, est.osDiskGb, {...ctx, step})
  ctx.update('setting the establishment secrets')
  const changed = await ctx.credentials.configure(target.api, est)
  ctx.io.debug(`${est.uai}: pgi-configure changed ${changed.join(', ') || 'nothing'}`)
  await step('configured')
  await markConfigured(target, est.name, ctx.now)
  await step('marked')
}

async function applyDrift(item: PlanItem, est: Establishment, target: GuestTarget, plan: Plan, ctx: OneCtx, step: (s: DeployStep) => Promise<void>): Promise<string> {
  const hv = ctx.hypervisors.definition(item.hypervisor)
  const {api, node, vmid} = target
  const done: string[] = []
  const pending: string[] = []
  const cfg = plan.configs.get(item.uai) ?? (await api.vmConfig(node, vmid))!
  const params = updateParams(item.drifts, est, hv, cfg)
  if (params) {
    ctx.update(`updating ${Object.keys(params).filter((k) => k !== 'digest').join(', ')}`)
    if (params.tags !== undefined) {
      // tags follow the image recorded on the VM (rollout changes that), with the inventory's ring
      const meta = parseDescription(typeof cfg.description === 'string' ? cfg.description : undefined)
      params.tags = formatTags({uai: est.uai, image: meta?.image ?? item.image}, est.ring)
    }
    await api.updateVmConfig(node, vmid, {...params, digest: cfg.digest})
    done.push(...item.drifts.filter((d) => d.fix === 'config').map((d) => d.setting))
    if (touchesCloudInit(params)) {
      await api.regenerateCloudinit(node, vmid)
      pending.push('cloud-init settings apply at the next reboot')
    }
    if (['cores', 'memory', 'net0'].some((k) => k in params)) pending.push('cores/memory/network changes apply at the next reboot')
    await step('updated')
  }
  for (const d of item.drifts.filter((x: Drift) => x.fix === 'resize')) {
    const disk = d.setting === 'os_disk_gb' ? 'virtio0' : 'virtio1'
    ctx.update(`growing ${disk} to ${d.want} GiB`)
    await api.resizeDisk(node, vmid, disk, `${d.want}G`)
    done.push(d.setting)
    await step('resized')
  }
  if (item.drifts.some((d) => d.fix === 'start')) {
    ctx.update('starting')
    await api.startVm(node, vmid, {timeoutMs: 600_000})
    await step('started')
    await waitForAgent(target, {timeoutMs: ctx.agentTimeoutMs ?? 600_000, intervalMs: ctx.pollIntervalMs, onProgress: ctx.update, signal: ctx.signal})
    await waitForHealthy(target, {timeoutMs: ctx.healthTimeoutMs ?? 1_200_000, intervalMs: ctx.pollIntervalMs, onProgress: ctx.update, signal: ctx.signal})
    done.push('started')
  }
  const manual = item.drifts.filter((d) => d.fix === 'manual')
  for (const d of manual) ctx.io.warn(`${item.uai}: ${fmtDrift(d)}`)
  return [...(done.length ? [`updated ${done.join(', ')}`] : []), ...pending, ...(manual.length ? [`left as is: ${manual.map((d) => d.setting).join(', ')}`] : [])].join('; ')
}

async function ensureHandoff(item: PlanItem, est: Establishment, ctx: OneCtx): Promise<string> {
  if (await ctx.credentials.handoffExists(est)) return ctx.credentials.handoffPath(est)
  const api = await ctx.hypervisors.get(item.hypervisor)
  return writeHandoff({api, node: item.node, vmid: item.vmid, uai: item.uai}, est, ctx)
}

/** The handoff, listing the databases the VM has at this moment (read from it, not from the inventory). */
async function writeHandoff(target: GuestTarget, est: Establishment, ctx: OneCtx): Promise<string> {
  ctx.update('reading the databases for the AMI handoff')
  const databases = await readHandoffDatabases(target.api, est, ctx.io)
  ctx.update('writing the AMI handoff')
  return ctx.credentials.writeHandoff(est, databases ? {databases} : {})
}
