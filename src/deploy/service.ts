/**
 * The deploy use case behind `pgi deploy`: open the fleet (src/fleet/open.ts: inventory, selection,
 * secret store, hypervisors), plan, confirm, execute. Returns plain objects (no secret).
 */
import {join} from 'node:path'

import {ErrorCode} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {withFleet, type FleetRequest, type FleetSession} from '../fleet/open.js'
import {DEFAULT_IMAGE, type ImageRef} from '../image/images.js'
import {journalDir, stateDir} from '../paths.js'
import {storeCredentials, type ConnectionSource} from '../fleet/credentials.js'
import type {DeployImage} from './desired.js'
import {fmtDrift, needsWork, planDeploy, type DeployTarget, type PlanItem} from './plan.js'
import {executeDeploy, type DeployResult} from './run.js'

export interface DeployRequest extends Omit<FleetRequest, 'requestTimeoutMs'> {
  /** The image of every selected establishment (else each one's inventory `image`, a version of the reference image). */
  image?: ImageRef
  /** For establishments whose inventory names none (when no --image): the newest built reference image. */
  defaultImage?: ImageRef
  /** Verifies and describes an image (signature + checksum). */
  resolveImage: (ref: ImageRef) => Promise<DeployImage>
  /** Stage with download-url from this URL template instead of uploading (`{file}`). */
  imageUrl?: string
  /** Upload rate cap per node, KiB/s. */
  bwlimitKiB?: number
  /**
   * Folder of the AMI handoff files. Default: for each establishment, the folder its handoff was
   * written to before (the deploy journal), else `<stateDir>/handoffs`.
   */
  handoffDir?: string
  dryRun?: boolean
  maxParallel?: number
  maxPerHypervisor?: number
  agentTimeoutMs?: number
  healthTimeoutMs?: number
  pollIntervalMs?: number
  /** Asked once, after the plan is shown, when something would change; throws to stop. */
  confirm: (question: string) => Promise<void>
  /** Shows the plan to people (the command prints a table). */
  showPlan?: (rows: PlanRow[]) => void
  /** How the AMI reaches each VM, when not at the inventory address (a lab's forwarded ports). */
  connection?: ConnectionSource
  signal?: AbortSignal
}

/** One line of the plan, as shown and as returned in --json. */
export interface PlanRow extends DeployTarget {
  action: PlanItem['action']
  detail: string
  drifts?: {setting: string; want: string; have: string; fix: string}[]
  blocked?: {code: string; message: string; suggestions: string[]}
  /** The declared databases: there (exists), to create (missing), or not known yet (unknown: checked once the VM is healthy). */
  databases: {name: string; state: 'exists' | 'missing' | 'unknown'}[]
}

export interface DeployReport {
  dryRun: boolean
  /** True when nothing needed a change (nothing was sent to any hypervisor). */
  upToDate: boolean
  plan: PlanRow[]
  /** Absent on --dry-run. */
  result?: DeployResult
  /** The folder given, else the default one (an establishment's handoff stays where it was written before). */
  handoffDir: string
}

export function planRows(items: PlanItem[]): PlanRow[] {
  return items.map((i) => ({
    uai: i.uai,
    name: i.name,
    hypervisor: i.hypervisor,
    node: i.node,
    vmid: i.vmid,
    image: i.image,
    action: i.action,
    detail: i.action === 'drifted' ? i.drifts.map(fmtDrift).join('; ') : i.summary,
    ...(i.drifts.length ? {drifts: i.drifts.map((d) => ({setting: d.setting, want: d.want, have: d.have, fix: d.fix}))} : {}),
    ...(i.blocked ? {blocked: i.blocked} : {}),
    databases: i.databases.map((d) => ({name: d.name, state: d.state})),
  }))
}

export async function runDeploy(req: DeployRequest): Promise<DeployReport> {
  return withFleet(req, (fleet) => deployWith(req, fleet))
}

async function deployWith(req: DeployRequest, fleet: FleetSession): Promise<DeployReport> {
  const {env, hypervisors} = fleet
  const establishments = [...fleet.establishments]
  const store = fleet.secrets
  const handoffDir = req.handoffDir ?? join(stateDir(env), 'handoffs')

  req.io.info(`planning ${establishments.length} establishment(s) on ${new Set(establishments.map((e) => e.hypervisor)).size} hypervisor(s)`)
  const plan = await planDeploy(establishments, {
    hypervisors,
    io: req.io,
    imageRef: (e) => req.image ?? (e.image ? {name: DEFAULT_IMAGE, version: e.image} : req.defaultImage),
    resolveImage: req.resolveImage,
  })
  const rows = planRows(plan.items)
  req.showPlan?.(rows)
  const work = plan.items.filter(needsWork)
  const upToDate = work.length === 0 && plan.items.every((i) => i.action !== 'blocked')
  if (req.dryRun) return {dryRun: true, upToDate, plan: rows, handoffDir}
  if (work.length === 0) {
    req.io.info(plan.items.some((i) => i.action === 'blocked') ? 'nothing can be changed (see blocked)' : 'everything is up to date: nothing to change, no write request sent')
  } else {
    const counts = countBy(work.map((w) => w.action))
    await req.confirm(`Deploy will change ${work.length} establishment(s) (${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}). Go on?`)
  }
  const result = await executeDeploy(plan, establishments, {
    hypervisors,
    io: req.io,
    credentials: storeCredentials({store, handoffDir, explicitDir: req.handoffDir !== undefined, recordDir: join(journalDir(env), 'handoffs'), io: req.io, connection: req.connection}),
    journalDir: journalDir(env),
    maxParallel: req.maxParallel,
    maxPerHypervisor: req.maxPerHypervisor,
    agentTimeoutMs: req.agentTimeoutMs,
    healthTimeoutMs: req.healthTimeoutMs,
    pollIntervalMs: req.pollIntervalMs,
    imageUrl: req.imageUrl,
    bwlimitKiB: req.bwlimitKiB,
    ...(fleet.inventory.offsite ? {offsite: {settings: fleet.inventory.offsite, store}} : {}),
    signal: req.signal,
  })
  return {dryRun: false, upToDate, plan: rows, result, handoffDir}
}

function countBy(xs: string[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const x of xs) out[x] = (out[x] ?? 0) + 1
  return out
}

/** Exit status of a dry run: like a real run's (4 when something is blocked, 8 when every hypervisor is unreachable). */
export function planExitCode(rows: PlanRow[]): ExitCodeValue {
  const blocked = rows.filter((r) => r.blocked)
  if (blocked.length === 0) return ExitCode.OK
  if (blocked.length === rows.length && blocked.every((r) => r.blocked!.code === blocked[0]!.blocked!.code) && (blocked[0]!.blocked!.code === ErrorCode.TLS_MISMATCH || blocked[0]!.blocked!.code === ErrorCode.UNREACHABLE)) {
    return ExitCode.UNREACHABLE
  }
  return ExitCode.PARTIAL
}
