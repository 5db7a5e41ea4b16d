/**
 * `pgi backup …` (docs/backups.md): an establishment's backups in both places — the local ones
 * on its data disk, read over the guest agent (pgi-db backups), and the off-site snapshots, read
 * with restic on this machine from the Région's repository — and the Région's retention.
 *
 * The off-site part needs no VM: it is what is left when the server is gone. A VM that cannot be
 * reached leaves the local part empty with the reason, never the whole listing.
 */
import {FleetSession} from '../fleet/open.js'
import {runPgiDb, type PgiDbBackup} from '../fleet/pgidb.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {Selection} from '../inventory/select.js'
import type {Establishment, OffsiteSettings} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveConnector} from '../hypervisors.js'
import type {SecretStore} from '../secrets/store.js'
import {offsiteSnapshots, pruneOffsite, readOffsitePassword, redactUrl, requireOffsite, type OffsiteSnapshot, type PruneResult, type ResticTarget} from './offsite.js'


/** One backup as `pgi backup list` shows it: a nightly set (every database), or one database's dump, or an off-site snapshot. */
export interface BackupRow {
  where: 'local' | 'offsite'
  /** The nightly set's stamp, a dump's id, or the off-site snapshot's id. */
  id: string
  /** nightly, manual, before-replace, final (local); snapshot (off-site). */
  kind: string
  date: string
  /** Bytes on the data disk (local), bytes the snapshot holds (off-site). */
  size: number | null
  /** The databases it holds (local; for a snapshot: those of the set it holds, when that set is still on the data disk). */
  databases: string[]
  /** The nightly set a snapshot holds. */
  set?: string | null
  /**
   * Local: the restore check of pgi-backup --verify / pgi-db (ok, method, at), null when never
   * checked. Off-site: the same check of the set it holds, when made on the server.
   */
  verified: {ok: boolean; method: string; at: string | null} | null
}

export interface BackupListResult {
  uai: string
  name: string
  backups: BackupRow[]
  /** Why the local backups could not be read (VM stopped or gone, guest agent silent). */
  localError?: string
  /** Why the off-site snapshots could not be read (no offsite: section, repository unreachable, wrong key). */
  offsiteError?: string
  offsiteErrorClass?: string
  /** The repository as this machine reaches it (without credentials). */
  repository?: string
}

export interface BackupRequest {
  inventoryPath: string
  secretsDir: string
  io: Io
  env?: NodeJS.ProcessEnv
  connect?: PveConnector
}

/** The local backups (guest's pgi-db), grouped: one row per nightly set, one per other dump. */
function localRows(entries: PgiDbBackup[]): BackupRow[] {
  const sets = new Map<string, BackupRow>()
  const rows: BackupRow[] = []
  for (const e of entries) {
    if (e.kind === 'nightly') {
      let row = sets.get(e.id)
      if (!row) {
        row = {where: 'local', id: e.id, kind: 'nightly', date: e.date, size: 0, databases: [], verified: e.verified ? {...e.verified} : null}
        sets.set(e.id, row)
        rows.push(row)
      }
      row.size = (row.size ?? 0) + (e.size ?? 0)
      row.databases.push(e.database)
      // a set is verified when each of its databases is
      if (!e.verified) row.verified = null
      else if (row.verified && !e.verified.ok) row.verified = {...e.verified}
    } else {
      rows.push({where: 'local', id: e.id, kind: e.kind, date: e.date, size: e.size, databases: [e.database], verified: e.verified})
    }
  }
  return rows
}

function target(o: OffsiteSettings, uai: string, password: ResticTarget['password']): ResticTarget {
  return {uai, repository: offsiteRepositories(o, uai).region, password}
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

async function localBackups(fleet: FleetSession, est: Establishment): Promise<PgiDbBackup[]> {
  const t = await fleet.guest(est)
  return runPgiDb<PgiDbBackup[]>(t, ['backups'], {timeoutMs: 120_000, idempotent: true})
}

async function snapshotsOf(o: OffsiteSettings, store: SecretStore, est: Establishment, io: Io): Promise<{t: ResticTarget; snaps: OffsiteSnapshot[]}> {
  const t = target(o, est.uai, await readOffsitePassword(store, est.uai))
  return {t, snaps: await offsiteSnapshots(t, io)}
}

/** The fleet of a backup command: the establishments selected, with the secret store open (repository keys). */
export function openBackupFleet(req: BackupRequest, selection: Selection): Promise<FleetSession> {
  return FleetSession.open({
    inventory: req.inventoryPath,
    selection,
    secretsDir: req.secretsDir,
    store: 'always',
    io: req.io,
    ...(req.env ? {env: req.env} : {}),
    ...(req.connect ? {connect: req.connect} : {}),
  })
}

/** `pgi backup list UAI`: local and off-site backups of one establishment, newest first. */
export async function listBackups(req: BackupRequest & {uai: string; local?: boolean; offsite?: boolean}): Promise<BackupListResult> {
  const fleet = await openBackupFleet(req, {uais: [req.uai]})
  try {
    const est = fleet.establishments[0]
    const out: BackupListResult = {uai: est.uai, name: est.name, backups: []}
    const [local, off] = await Promise.allSettled([
      req.local === false ? Promise.resolve([] as PgiDbBackup[]) : localBackups(fleet, est),
      req.offsite === false ? Promise.resolve(undefined) : snapshotsOf(requireOffsite(fleet.inventory), fleet.secrets, est, req.io),
    ])
    const rows: BackupRow[] = []
    if (local.status === 'fulfilled') rows.push(...localRows(local.value))
    else out.localError = errorMessage(local.reason)
    const sets = new Map(rows.filter((r) => r.kind === 'nightly').map((r) => [r.id, r]))
    if (off.status === 'fulfilled' && off.value) {
      out.repository = redactUrl(off.value.t.repository)
      for (const s of off.value.snaps) {
        const set = s.set ? sets.get(s.set) : undefined
        rows.push({where: 'offsite', id: s.id, kind: 'snapshot', date: s.date, size: s.size, databases: set?.databases ?? [], set: s.set, verified: set?.verified ?? null})
      }
    } else if (off.status === 'rejected') {
      out.offsiteError = errorMessage(off.reason)
      const cls = (off.reason as {details?: {errorClass?: string}})?.details?.errorClass
      if (cls) out.offsiteErrorClass = cls
    }
    rows.sort((a, b) => (a.date < b.date ? 1 : a.date > b.date ? -1 : a.where < b.where ? -1 : 1))
    out.backups = rows
    return out
  } finally {
    await fleet.close()
  }
}

export interface PruneRow extends Partial<PruneResult> {
  uai: string
  ok: boolean
  error?: string
}

/**
 * `pgi backup prune`: the inventory's retention applied to each selected establishment's
 * repository, from this machine (the VMs cannot delete: their access is append-only). One
 * establishment's failure does not stop the others.
 */
export async function pruneBackups(req: BackupRequest & {selection: Selection; dryRun: boolean}): Promise<PruneRow[]> {
  const fleet = await openBackupFleet(req, req.selection)
  try {
    const o = requireOffsite(fleet.inventory)
    const rows: PruneRow[] = []
    for (const est of fleet.establishments) {
      try {
        const t = target(o, est.uai, await readOffsitePassword(fleet.secrets, est.uai))
        req.io.info(`${est.uai}: ${req.dryRun ? 'what the retention would remove' : 'applying the retention'} (daily ${o.retention.daily}, weekly ${o.retention.weekly}, monthly ${o.retention.monthly}) in ${redactUrl(t.repository)}`)
        rows.push({...(await pruneOffsite(t, o.retention, {dryRun: req.dryRun}, req.io)), ok: true})
      } catch (err) {
        rows.push({uai: est.uai, ok: false, error: errorMessage(err)})
      }
    }
    return rows
  } finally {
    await fleet.close()
  }
}
