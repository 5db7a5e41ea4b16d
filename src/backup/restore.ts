/**
 * `pgi backup restore UAI --to UAI2` (docs/backups.md "Restore runbook"): an establishment's
 * databases rebuilt from its off-site copy on another establishment's VM — the replacement
 * server, or a Région server while the school's hardware is replaced.
 *
 * This machine checks what it can without touching the target (the two establishments, the
 * source's key in the secret store, the snapshot in the source's repository), then the target VM
 * does the work with the image's own code: `pgi-offsite --restore` (restic restore of the
 * snapshot with the source's key, given on the guest agent's stdin — never on a command line —
 * each dump checked against the manifest, restored by pgi-db's code, row counts and business
 * figures compared before anything takes its name, a Tryton login on each database). The AMI of
 * the target then gets a new handoff listing the databases its server has now.
 *
 * Existing databases on the target are never overwritten unless asked (--replace) and confirmed;
 * even then the guest keeps a before-replace dump of each one first.
 */
import {join} from 'node:path'

import {ErrorCode, SafetyRefusal, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {guestWhere, type GuestTarget} from '../fleet/guest.js'
import type {GuestRefusal} from '../fleet/pgidb.js'
import {storeCredentials, type ConnectionSource} from '../fleet/credentials.js'
import {readHandoffDatabases} from '../fleet/handoff.js'
import type {DeployImage} from '../fleet/images.js'
import {removeVm, type BootWaits} from '../fleet/vm-create.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {Establishment, OffsiteSettings} from '../inventory/types.js'
import {journalDir, stateDir} from '../paths.js'
import type {Secret} from '../secret.js'
import {GUEST_OFFSITE, offsiteSnapshots, readOffsitePassword, redactUrl, requireOffsite, type OffsiteSnapshot} from './offsite.js'
import {createScratchVm, findLabVm, requireDrill} from './scratch.js'
import {openBackupFleet, type BackupRequest} from './service.js'

/** A snapshot id as restic prints it (short: 8 hex digits) or whole; or "latest". */
export const SNAPSHOT_ID_RE = /^(latest|[0-9a-f]{8,64})$/

export interface RestoreRequest extends BackupRequest {
  /** The establishment whose off-site copy is restored. */
  uai: string
  /** The establishment whose VM receives the databases (absent with toLab). */
  to?: string
  /** Restore onto a new VM on the inventory's offsite.drill hypervisor instead (kept), with a new handoff for it. */
  toLab?: boolean
  /** The image of the lab VM (toLab): the establishment's inventory version, else the newest built. */
  resolveImage?: (version: string | undefined) => Promise<DeployImage>
  /** Waits of the lab VM's boot. */
  boot?: BootWaits
  /** A snapshot id of the source's repository, or "latest". */
  snapshot: string
  /** Replace databases of the same name on the target (each kept first as a before-replace dump). */
  replace: boolean
  /** Asked before databases of the target are replaced; throws to stop. */
  confirm: (question: string) => Promise<void>
  /** Folder of the new AMI handoff (default: where deploy wrote the target's, else `<state dir>/handoffs`). */
  handoffDir?: string
  /** How the AMI reaches the target VM, when not at the inventory address (a lab's forwarded ports). */
  connection?: ConnectionSource
  /** The guest's whole restore (restic restore over the link, pg_restore): default 6 h. */
  timeoutMs?: number
}

/** One database as the target VM restored it (pgi-offsite --restore). */
export interface RestoredDatabase {
  name: string
  tryton: boolean
  row_counts: Record<string, number>
  /** The row counts equal the manifest's (the guest refuses the whole restore otherwise). */
  row_counts_match: boolean
  /** The business figures (trial balance, posted invoices) were compared too. */
  figures_checked: boolean
  /** A Tryton login worked (null: not a Tryton database). */
  login: boolean | null
  login_error?: string
  replaced: boolean
  seconds: number
}

export interface RestoreResult {
  from: string
  /** The target establishment; with --to-lab, the source (the lab VM serves it). */
  to: string
  /** The lab VM made by --to-lab (kept). */
  lab?: {hypervisor: string; node: string; vmid: number; address: string}
  /** The snapshot restored (short id), when it was taken, by which server, of which nightly set. */
  snapshot: string
  snapshotTime: string
  host: string
  set: string | null
  repository: string
  databases: RestoredDatabase[]
  /** Dumps the guest kept of what --replace replaced (pgi-db restore brings them back). */
  kept: string[]
  /** Every Tryton database accepted a login. */
  loginOk: boolean
  /** The target AMI's new handoff (absent when it could not be written: see handoffError). */
  handoff?: string
  handoffError?: string
  seconds: number
}

interface GuestRestoreOut {
  snapshot: string
  snapshot_time: string
  host: string
  set: string | null
  databases: RestoredDatabase[]
  kept: string[]
  login_ok: boolean
  seconds: number
  error?: {code: string; message: string; databases?: string[]; error_class?: string}
}

/** pgi-offsite --restore's exit statuses (pgi-db's) → pgi's error code, exit code and what to do next. */
const GUEST_STATUS: Record<number, GuestRefusal> = {
  3: {code: ErrorCode.OFFSITE_RESTORE_REFUSED, exit: ExitCode.INVALID_INPUT, next: 'The snapshot cannot be restored on this server (see the message); nothing was changed.'},
  4: {code: ErrorCode.OFFSITE_SNAPSHOT_NOT_FOUND, exit: ExitCode.INVALID_INPUT, next: 'List the snapshots with `pgi backup list UAI --no-local` and give one with --snapshot.'},
  5: {code: ErrorCode.DB_EXISTS, exit: ExitCode.REFUSED, next: 'The target already has databases of these names: restore onto a new server, or add --replace (each one is kept first as a before-replace dump).'},
  7: {code: ErrorCode.DB_BUSY, exit: ExitCode.REFUSED, next: 'Another operation holds one of these databases on the target: wait for it to end, then retry.'},
  8: {code: ErrorCode.DB_NO_ROOM, exit: ExitCode.REFUSED, next: "Grow the target's data disk (inventory data_disk_gb, pgi deploy), then retry; nothing was changed."},
}

function sameUaiError(uai: string): UserError {
  return new UserError(ErrorCode.USAGE, `--to ${uai} names the establishment being restored: a backup is restored onto another establishment's server`, {
    exitCode: ExitCode.USAGE,
    where: {flag: 'to', uai},
    suggestions: [`To bring back a database of ${uai} on its own server, use \`pgi db restore ${uai} DATABASE\` (local backups).`, 'After replacing the server of an establishment, deploy it and restore with --to onto it from a copy made under its former UAI, or onto a spare establishment.'],
  })
}

/** The snapshot to restore among `snaps` (newest first); NOT_FOUND with the choices when absent. */
export function pickSnapshot(snaps: OffsiteSnapshot[], wanted: string, uai: string, repository: string): OffsiteSnapshot {
  const found = wanted === 'latest' ? snaps[0] : snaps.find((s) => wanted.startsWith(s.id) || s.id.startsWith(wanted))
  if (!found) {
    throw new UserError(
      ErrorCode.OFFSITE_SNAPSHOT_NOT_FOUND,
      snaps.length === 0 ? `${uai} has no off-site snapshot in ${redactUrl(repository)}: nothing to restore` : `${uai} has no off-site snapshot ${wanted} in ${redactUrl(repository)}`,
      {
        exitCode: ExitCode.INVALID_INPUT,
        where: {uai, ...(wanted !== 'latest' ? {flag: 'snapshot'} : {})},
        details: {snapshots: snaps.slice(0, 10).map((s) => s.id)},
        suggestions: snaps.length === 0 ? ["The VM pushes after its nightly backup: check the source's off-site status (pgi status)."] : [`Snapshots: ${snaps.slice(0, 5).map((s) => `${s.id} (${s.date})`).join(', ')}. \`pgi backup list ${uai} --no-local\` lists them all.`],
      },
    )
  }
  return found
}

/** The JSON `pgi-offsite --restore` reads on stdin. Reveals the password: give it to the agent's stdin only. */
export function guestRestoreRequest(o: OffsiteSettings, uai: string, password: Secret, snapshot: string, replace: boolean): string {
  return JSON.stringify({repository: offsiteRepositories(o, uai).vm, password: password.reveal(), snapshot, replace, host: uai})
}

/** Runs the restore in the target VM; a refusal or failure becomes a typed error naming the VM. */
export async function restoreInGuest(t: GuestTarget, input: string, password: Secret, timeoutMs: number): Promise<GuestRestoreOut> {
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_OFFSITE, '--restore'], {inputData: input, timeoutMs, idempotent: false})
  let out: GuestRestoreOut | undefined
  try {
    out = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as GuestRestoreOut
  } catch {
    out = undefined
  }
  const where = guestWhere(t)
  // exit 1 with a result: restored, but a login failed (the caller reports it)
  if (out && !out.error && (r.exitcode === 0 || r.exitcode === 1) && Array.isArray(out.databases)) return out
  const hide = (s: string) => s.split(password.reveal()).join('***')
  const message = hide(out?.error?.message ?? (r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ').slice(0, 400)) || '(no output)'
  if (r.exitcode === 2 || /unrecognized arguments: --restore/.test(r.stderr)) {
    throw new UserError(ErrorCode.OFFSITE_RESTORE_REFUSED, `VM ${t.vmid} of ${t.uai} runs an image whose pgi-offsite cannot restore: ${message}`, {
      exitCode: ExitCode.REFUSED,
      where,
      suggestions: [`Update ${t.uai} to an image with pgi-offsite --restore (pgi rollout), then retry.`],
    })
  }
  const s = GUEST_STATUS[r.exitcode]
  if (s) throw new UserError(s.code, `restore in VM ${t.vmid} of ${t.uai} refused: ${message}`, {exitCode: s.exit, where, suggestions: [s.next], ...(out?.error ? {details: {guest: out.error}} : {})})
  const cls = out?.error?.error_class
  throw new UserError(ErrorCode.OFFSITE_FAILED, `restore in VM ${t.vmid} of ${t.uai} failed (exit ${r.exitcode}): ${message}`, {
    exitCode: cls === 'unreachable' ? ExitCode.UNREACHABLE : ExitCode.FAILURE,
    where,
    suggestions: [
      cls === 'unreachable' ? "The target VM does not reach the source's repository (offsite.repository in the inventory): check its network path to the Région's server." : 'Nothing was renamed or replaced on the target when the restore failed (what was half-made is dropped); read the guest journal (journalctl -t pgi-offsite), then retry.',
    ],
    ...(out?.error ? {details: {guest: out.error}} : {}),
  })
}

/** `pgi backup restore UAI --to UAI2 | --to-lab`. */
export async function restoreBackup(req: RestoreRequest): Promise<RestoreResult> {
  if (req.toLab && req.to !== undefined) {
    throw new UserError(ErrorCode.USAGE, '--to and --to-lab name two different targets: give one', {exitCode: ExitCode.USAGE, where: {flag: 'to-lab'}, suggestions: ['--to UAI2 restores onto that establishment\'s server; --to-lab onto a new VM on the drill hypervisor.']})
  }
  if (!req.toLab && req.to === undefined) {
    throw new UserError(ErrorCode.USAGE, 'missing required flag --to (or --to-lab)', {exitCode: ExitCode.USAGE, where: {flag: 'to'}, suggestions: ["Name the establishment whose server receives the databases (--to UAI2), or restore onto a new Région VM (--to-lab)."]})
  }
  if (req.to !== undefined && req.uai === req.to) throw sameUaiError(req.uai)
  if (!SNAPSHOT_ID_RE.test(req.snapshot)) {
    throw new UserError(ErrorCode.USAGE, `--snapshot ${JSON.stringify(req.snapshot)} is not a snapshot id`, {
      exitCode: ExitCode.USAGE,
      where: {flag: 'snapshot'},
      suggestions: ['Give "latest" or an id from `pgi backup list UAI --no-local` (8 hexadecimal digits or more).'],
    })
  }
  const started = Date.now()
  const fleet = await openBackupFleet(req, {uais: req.to !== undefined ? [req.uai, req.to] : [req.uai]})
  let lab: {api: GuestTarget['api']; node: string; vmid: number | null} | undefined
  try {
    const from = fleet.establishments.find((e) => e.uai === req.uai)!
    const o = requireOffsite(fleet.inventory)
    const drill = req.toLab ? requireDrill(fleet.inventory, o, 'lab restores') : undefined
    if (drill) {
      const api = await fleet.hypervisors.get(drill.hypervisor)
      const existing = await findLabVm(api, drill, from.uai)
      if (existing) {
        throw new SafetyRefusal(`a lab VM of ${from.uai} already exists: VM ${existing.vmid} on ${drill.hypervisor}/${existing.node}`, {
          where: {uai: from.uai, hypervisor: drill.hypervisor, node: existing.node, vmid: existing.vmid},
          suggestions: [`Restore onto it with --to is not possible (it is not an establishment of the inventory): remove it on the hypervisor once no longer needed (qm destroy ${existing.vmid} --purge), then run again.`],
        })
      }
    }
    const password = await readOffsitePassword(fleet.secrets, from.uai)
    const region = {uai: from.uai, repository: offsiteRepositories(o, from.uai).region, password}
    req.io.info(`${from.uai}: reading the off-site snapshots in ${redactUrl(region.repository)}`)
    const snap = pickSnapshot(await offsiteSnapshots(region, req.io, {sizes: false}), req.snapshot, from.uai, region.repository)
    let t: GuestTarget
    let to: Establishment
    if (drill) {
      if (!req.resolveImage) throw new Error('restoreBackup: --to-lab needs resolveImage')
      const image = await req.resolveImage(from.image)
      lab = {api: await fleet.hypervisors.get(drill.hypervisor), node: drill.node, vmid: null}
      const vm = await createScratchVm(fleet.hypervisors, from, drill, 'lab', image, {
        ...req.boot,
        io: req.io,
        update: (text) => req.io.info(`${from.uai} (lab): ${text}`),
        now: () => new Date(),
        onCreated: (vmid) => (lab!.vmid = vmid),
      })
      t = vm.target
      to = vm.est
    } else {
      to = fleet.establishments.find((e) => e.uai === req.to)!
      t = await fleet.guest(to)
    }
    if (req.replace && !drill) {
      await req.confirm(`Restore snapshot ${snap.id} of ${from.uai} (${snap.date}) onto VM ${to.vmid} of ${to.uai}, REPLACING its databases of the same names (each kept first as a before-replace dump)?`)
    }
    req.io.info(`${to.uai}: restoring snapshot ${snap.id} of ${from.uai} (${snap.date}${snap.set ? `, nightly set ${snap.set}` : ''}) in VM ${t.vmid}`)
    const out = await restoreInGuest(t, guestRestoreRequest(o, from.uai, password, snap.id, req.replace && !drill), password, req.timeoutMs ?? 6 * 3600_000)
    const result: RestoreResult = {
      from: from.uai,
      to: to.uai,
      ...(drill ? {lab: {hypervisor: drill.hypervisor, node: drill.node, vmid: t.vmid, address: to.network.address}} : {}),
      snapshot: out.snapshot,
      snapshotTime: out.snapshot_time,
      host: out.host,
      set: out.set,
      repository: redactUrl(region.repository),
      databases: out.databases,
      kept: out.kept ?? [],
      loginOk: out.login_ok,
      seconds: 0,
    }
    // the lab VM is whole: it stays even if what follows fails
    lab = undefined
    // the AMI of the target: a new handoff listing the databases the server has now
    try {
      // deploy's record of where the target's handoff lives, rewritten there (it lists the databases)
      const env = req.env ?? process.env
      const creds = storeCredentials({
        store: fleet.secrets,
        handoffDir: req.handoffDir ?? join(stateDir(env), 'handoffs'),
        explicitDir: req.handoffDir !== undefined,
        recordDir: join(journalDir(env), 'handoffs'),
        io: req.io,
        connection: req.connection,
      })
      // a lab VM gets the establishment's own secrets, as its server had them
      if (drill) await creds.configure(t.api, to)
      const databases = await readHandoffDatabases(t.api, to, req.io)
      result.handoff = await creds.writeHandoff(to, databases ? {databases} : {})
    } catch (err) {
      result.handoffError = err instanceof Error ? err.message : String(err)
      req.io.warn(`${to.uai}: the new handoff was not written: ${result.handoffError}; \`pgi credentials handoff ${to.uai}\` writes it`)
    }
    result.seconds = Math.round((Date.now() - started) / 100) / 10
    return result
  } finally {
    // a lab restore that did not finish leaves no half-made VM behind
    if (lab?.vmid != null) {
      const vmid = lab.vmid
      await removeVm(lab.api, lab.node, vmid).catch((err: unknown) => req.io.warn(`${req.uai}: the unfinished lab VM ${vmid} could not be removed: ${err instanceof Error ? err.message : String(err)}; remove it on the hypervisor`))
    }
    await fleet.close()
  }
}
