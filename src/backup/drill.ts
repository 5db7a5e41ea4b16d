/**
 * `pgi backup drill` (docs/backups.md "Restore drills"): proves that off-site copies become
 * working PGI servers. For a sample of the selected establishments (all of those named, or N
 * chosen at random from --all / a group), one after the other: the latest off-site snapshot is
 * restored into a scratch VM created from an image on the inventory's drill hypervisor
 * (src/backup/scratch.ts), with the same restore and the same checks as `pgi backup restore`
 * (pgi-offsite --restore in the guest: sha256 of each dump against the manifest, row counts and
 * figures compared with the manifest before any database takes its name, a Tryton login on
 * each); the drill passes when every database was restored with matching row counts and a login
 * that worked. The outcome is recorded per establishment in the state folder
 * (src/fleet/drill-record.ts) for `pgi status`, and the scratch VM and its disks are removed —
 * always, also after a failure; a removal that fails is said, and the next drill removes it.
 */
import {ErrorCode, UserError, asPgiError} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {writeDrillOutcome, type DrillOutcome} from '../fleet/drill-record.js'
import type {DeployImage} from '../fleet/images.js'
import {removeVm, type BootWaits} from '../fleet/vm-create.js'
import type {FleetSession} from '../fleet/open.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {Selection} from '../inventory/select.js'
import type {DrillSettings, Establishment, OffsiteSettings} from '../inventory/types.js'
import {offsiteSnapshots, readOffsitePassword, requireOffsite} from './offsite.js'
import {guestRestoreRequest, pickSnapshot, restoreInGuest} from './restore.js'
import {createScratchVm, removeLeftoverScratch, requireDrill} from './scratch.js'
import {openBackupFleet, type BackupRequest} from './service.js'

export interface DrillRequest extends BackupRequest, BootWaits {
  selection: Selection
  /** How many of the selected establishments to drill, chosen at random (ignored when UAIs are named: all of them). */
  sample: number
  /** The image of a scratch VM: the establishment's inventory image version, else the newest built (resolved and verified by the caller). */
  resolveImage: (version: string | undefined) => Promise<DeployImage>
  /** The guest's restore: default 6 h. */
  timeoutMs?: number
  random?: () => number
  now?: () => Date
}

export interface DrillResult {
  /** The establishments drilled, in the order they were. */
  drills: DrillOutcome[]
  /** Scratch VMs left by an earlier (killed) drill, removed before this one. */
  leftoversRemoved: number[]
  exitCode: ExitCodeValue
}

/** `n` of `list` at random (Fisher–Yates on a copy), in inventory order. */
export function sampleOf<T>(list: readonly T[], n: number, random: () => number = Math.random): T[] {
  const idx = list.map((_, i) => i)
  for (let i = idx.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[idx[i], idx[j]] = [idx[j]!, idx[i]!]
  }
  return idx.slice(0, n).sort((a, b) => a - b).map((i) => list[i]!)
}

export function checkSample(sample: number): void {
  if (!Number.isInteger(sample) || sample < 1) {
    throw new UserError(ErrorCode.USAGE, `--sample ${sample}: a drill restores at least one establishment`, {
      exitCode: ExitCode.USAGE,
      where: {flag: 'sample'},
      suggestions: ['Give --sample 1 or more (default 1), or name the establishments to drill.'],
    })
  }
}

/** `pgi backup drill [UAI…|--all|--group G] [--sample N]`. */
export async function runDrill(req: DrillRequest): Promise<DrillResult> {
  checkSample(req.sample)
  const named = (req.selection.uais?.length ?? 0) > 0
  const fleet = await openBackupFleet(req, req.selection)
  try {
    const o = requireOffsite(fleet.inventory)
    const d = requireDrill(fleet.inventory, o, 'restore drills')
    const chosen = named ? [...fleet.establishments] : sampleOf(fleet.establishments, req.sample, req.random)
    const api = await fleet.hypervisors.get(d.hypervisor)
    const leftoversRemoved = await removeLeftoverScratch(api, d, req.io)
    const drills: DrillOutcome[] = []
    for (const est of chosen) {
      const outcome = await drillOne(fleet, est, o, d, req)
      await writeDrillOutcome(outcome, req.env)
      drills.push(outcome)
    }
    const exitCode = drills.some((x) => !x.ok) ? ExitCode.UNHEALTHY : drills.some((x) => !x.scratch.removed && x.scratch.vmid !== null) ? ExitCode.PARTIAL : ExitCode.OK
    return {drills, leftoversRemoved, exitCode}
  } finally {
    await fleet.close()
  }
}

async function drillOne(fleet: FleetSession, est: Establishment, o: OffsiteSettings, d: DrillSettings, req: DrillRequest): Promise<DrillOutcome> {
  const now = req.now ?? (() => new Date())
  const started = Date.now()
  const update = (text: string) => req.io.info(`${est.uai}: ${text}`)
  const outcome: DrillOutcome = {
    uai: est.uai,
    at: '',
    snapshot: null,
    snapshotTime: null,
    databases: [],
    ok: false,
    scratch: {hypervisor: d.hypervisor, node: d.node, vmid: null, removed: false},
    seconds: 0,
  }
  try {
    const password = await readOffsitePassword(fleet.secrets, est.uai)
    const region = {uai: est.uai, repository: offsiteRepositories(o, est.uai).region, password}
    update('reading the latest off-site snapshot')
    const snap = pickSnapshot(await offsiteSnapshots(region, req.io, {sizes: false}), 'latest', est.uai, region.repository)
    outcome.snapshot = snap.id
    outcome.snapshotTime = snap.date
    const image = await req.resolveImage(est.image)
    const vm = await createScratchVm(fleet.hypervisors, est, d, 'drill', image, {
      ...req,
      io: req.io,
      update,
      now,
      onCreated: (vmid) => (outcome.scratch.vmid = vmid),
    })
    update(`restoring snapshot ${snap.id} (${snap.date}) in scratch VM ${vm.target.vmid}`)
    const out = await restoreInGuest(vm.target, guestRestoreRequest(o, est.uai, password, snap.id, false), password, req.timeoutMs ?? 6 * 3600_000)
    outcome.snapshot = out.snapshot
    outcome.snapshotTime = out.snapshot_time
    outcome.databases = out.databases.map((x) => ({name: x.name, rowCountsMatch: x.row_counts_match, login: x.login}))
    const bad = [
      ...out.databases.filter((x) => !x.row_counts_match).map((x) => `${x.name}: row counts differ from the manifest`),
      ...out.databases.filter((x) => x.login === false).map((x) => `${x.name}: Tryton login failed${x.login_error ? ` (${x.login_error})` : ''}`),
    ]
    if (out.databases.length === 0) bad.push('the snapshot holds no database')
    outcome.ok = bad.length === 0
    if (!outcome.ok) outcome.reason = bad.join('; ')
  } catch (err) {
    const e = asPgiError(err)
    outcome.ok = false
    outcome.reason = `${e.code}: ${e.message}`
  } finally {
    if (outcome.scratch.vmid !== null) {
      try {
        const api = await fleet.hypervisors.get(d.hypervisor)
        await removeVm(api, d.node, outcome.scratch.vmid, update)
        outcome.scratch.removed = true
      } catch (err) {
        outcome.scratch.removeError = asPgiError(err).message
        req.io.warn(`${est.uai}: scratch VM ${outcome.scratch.vmid} on ${d.hypervisor}/${d.node} could not be removed: ${outcome.scratch.removeError}; the next drill removes it (or remove it by hand)`)
      }
    }
    outcome.at = now().toISOString()
    outcome.seconds = Math.round((Date.now() - started) / 100) / 10
  }
  req.io.info(`${est.uai}: drill ${outcome.ok ? 'passed' : `FAILED: ${outcome.reason}`}`)
  return outcome
}
