/**
 * The fleet-wide parts of a major upgrade (docs/rollout.md, "Major upgrade") behind `pgi rollout
 * plan` and `pgi rollout prune`: the data disk space a migration needs, from what the guest
 * reports, and the removal of the old cluster a committed upgrade left. The per-establishment
 * steps are in establishment.ts, the guest's side in guest-scripts.ts (MAJOR_SCRIPT) and the
 * image's pgimajor.py.
 */
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {asPgiError} from '../errors.js'
import {parseDescription} from '../fleet/vm-meta.js'
import {settleAll} from '../fleet/pool.js'
import {withFleet, type FleetRequest} from '../fleet/open.js'
import {sleep} from '../sleep.js'
import {checkKilled, describe, FINAL_STEPS, GateFailed, where, type Run} from './mark.js'
import {describeMajorStatus, majorInGuest, type MajorInfo} from './guest-scripts.js'

/**
 * The data disk's space for a major upgrade: the old cluster stays (read-only, until `pgi rollout
 * prune`), the new one is about as big (a restore of the same data, plus a margin for the WAL and
 * trytond-admin's work), and the pre-swap dumps are written beside both.
 */
export interface MigrationPlan {
  fromPg: string
  toPg: string
  databases?: number
  oldClusterBytes: number
  newClusterBytes: number
  dumpsBytes: number
  /** old + new + dumps */
  totalBytes: number
  /** What the data disk must still have free: new + dumps. */
  needBytes: number
  freeBytes: number
  diskBytes: number
}

const MiB = 1 << 20

/** The space a major upgrade needs from what the guest reports (MAJOR_SCRIPT info). */
export function migrationPlan(info: MajorInfo, toPg: string): MigrationPlan {
  const old = info.clusters[info.pg]?.bytes ?? 0
  const fresh = Math.ceil(old * 1.2) + 256 * MiB
  // the new backup's dumps: as big as the latest one (the data grows little in between), else a
  // quarter of the cluster (pg_dump -Z6 of Tryton databases, measured: ~1/5)
  const dumps = info.backup?.bytes ? Math.ceil(info.backup.bytes * 1.1) : Math.ceil(old / 4)
  return {
    fromPg: info.pg,
    toPg,
    ...(info.backup ? {databases: info.backup.databases} : {}),
    oldClusterBytes: old,
    newClusterBytes: fresh,
    dumpsBytes: dumps,
    totalBytes: old + fresh + dumps,
    needBytes: fresh + dumps,
    freeBytes: info.disk.free,
    diskBytes: info.disk.total,
  }
}

export function describeMigration(m: MigrationPlan): string {
  const mb = (b: number) => `${Math.round(b / MiB)} MiB`
  return `PostgreSQL ${m.fromPg} → ${m.toPg}${m.databases !== undefined ? `, ${m.databases} database(s)` : ''}: old ${mb(m.oldClusterBytes)} + new ${mb(m.newClusterBytes)} + dumps ${mb(m.dumpsBytes)} = ${mb(m.totalBytes)}; needs ${mb(m.needBytes)} free, ${mb(m.freeBytes)} free of ${mb(m.diskBytes)}`
}

// ---- prune -----------------------------------------------------------------------------------

export interface PruneRow {
  uai: string
  outcome: 'pruned' | 'nothing' | 'skipped' | 'failed'
  /** The old cluster (a major upgrade's disaster copy) and its size. */
  cluster?: string
  bytes?: number
  detail: string
}

export interface PruneRequest extends FleetRequest {
  /** Asked once, with every cluster listed, before anything is removed (typed confirmation). */
  confirm: (question: string, expected: string) => Promise<void>
  /**
   * Only the clusters kept longer than their establishment's `old_cluster_days` (the inventory's
   * retention): a scheduled job's `pgi rollout prune --old-clusters --expired --all --yes`.
   */
  expiredOnly?: boolean
  now?: () => Date
}

const DAY_MS = 86_400_000

/**
 * Whether an old cluster kept since `committedAt` is past its retention (`days`; undefined: kept
 * until pruned by hand), and until when it is kept otherwise.
 */
export function oldClusterRetention(committedAt: string | undefined, days: number | undefined, now: Date): {expired: boolean; detail: string} {
  if (days === undefined) return {expired: false, detail: 'kept until pruned by hand (the inventory sets no old_cluster_days)'}
  const at = committedAt ? Date.parse(committedAt) : Number.NaN
  // a commit time the guest did not record (an older image's tool): kept, never guessed
  if (Number.isNaN(at)) return {expired: false, detail: 'kept: the guest recorded no commit time for the upgrade'}
  const until = new Date(at + days * DAY_MS)
  return until.getTime() <= now.getTime()
    ? {expired: true, detail: `kept ${days} days since ${committedAt!.slice(0, 10)} (old_cluster_days): expired`}
    : {expired: false, detail: `kept until ${until.toISOString().slice(0, 10)} (old_cluster_days: ${days})`}
}

/**
 * Removes the PostgreSQL cluster a committed major upgrade left on each selected data disk (the
 * read-only disaster copy of the old version's databases). Only where the guest records the
 * upgrade as committed, runs the new cluster, and no rollout is mid-way on the VM; the clusters
 * are listed and a typed confirmation asked once before the first is removed.
 */
export async function pruneOldClusters(req: PruneRequest): Promise<{rows: PruneRow[]; exitCode: ExitCodeValue}> {
  return withFleet(req, async (fleet) => {
    const found = await settleAll(
      fleet.establishments,
      (e) => e.hypervisor,
      async (e) => {
        const api = await fleet.hypervisors.get(e.hypervisor)
        const cfg = await api.vmConfig(e.node, e.vmid)
        const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
        if (!cfg || !meta) return {e, row: {uai: e.uai, outcome: 'skipped', detail: `VM ${e.vmid} ${cfg ? 'was not deployed by pgi' : 'does not exist'}`} as PruneRow}
        if (meta.rollout && !FINAL_STEPS.has(meta.rollout.step)) return {e, row: {uai: e.uai, outcome: 'skipped', detail: `rollout ${meta.rollout.id} is mid-way (step ${meta.rollout.step}): finish it first`} as PruneRow}
        const t = {api, node: e.node, vmid: e.vmid, uai: e.uai}
        const info = await majorInGuest<MajorInfo>(t, {action: 'info'}, 120_000)
        const old = info.state.major?.old_cluster
        if (!old || info.state.major?.pruned_at) return {e, row: {uai: e.uai, outcome: 'nothing', detail: 'no old cluster on the data disk'} as PruneRow}
        if (info.status?.state !== 'committed') return {e, row: {uai: e.uai, outcome: 'skipped', detail: `the major upgrade is not committed (${info.status?.state ?? 'no status'}): the old cluster is the way back`} as PruneRow}
        const c = Object.values(info.clusters).find((x) => x.path === old)
        if (req.expiredOnly) {
          const keep = oldClusterRetention(info.status.committed_at, e.oldClusterDays, (req.now ?? (() => new Date()))())
          if (!keep.expired) return {e, row: {uai: e.uai, outcome: 'nothing', cluster: old, bytes: c?.bytes ?? 0, detail: keep.detail} as PruneRow}
        }
        return {e, t, row: {uai: e.uai, outcome: 'pruned', cluster: old, bytes: c?.bytes ?? 0, detail: ''} as PruneRow}
      },
      {max: 20, perKey: 8},
    )
    const rows: PruneRow[] = []
    const todo: {t: {api: Awaited<ReturnType<typeof fleet.hypervisors.get>>; node: string; vmid: number; uai: string}; row: PruneRow}[] = []
    for (const o of found) {
      if (!o.ok) rows.push({uai: o.item.uai, outcome: 'failed', detail: asPgiError(o.error).message})
      else if (o.value.row.outcome === 'pruned' && o.value.t) todo.push({t: o.value.t, row: o.value.row})
      else rows.push(o.value.row)
    }
    if (todo.length > 0) {
      const list = todo.map((x) => `${x.row.uai}: ${x.row.cluster} (${Math.round((x.row.bytes ?? 0) / 2 ** 20)} MiB)`).join('; ')
      const expected = todo.length === 1 ? todo[0]!.row.uai : `${todo.length} clusters`
      await req.confirm(`Remove the old PostgreSQL cluster (the disaster copy of the databases before their major upgrade) of ${todo.length} establishment(s): ${list}? It cannot be undone; the databases in use are not touched.`, expected)
      for (const x of todo) {
        try {
          const r = await majorInGuest<{pruned: string; bytes: number}>(x.t, {action: 'prune'})
          rows.push({...x.row, bytes: r.bytes, detail: `removed ${r.pruned}`})
        } catch (err) {
          rows.push({...x.row, outcome: 'failed', detail: asPgiError(err).message})
        }
      }
    }
    const failed = rows.filter((r) => r.outcome === 'failed').length
    return {rows, exitCode: failed === 0 ? ExitCode.OK : ExitCode.PARTIAL}
  })
}

/** Per-database time budget of a migration under software emulation, and the fixed part (boot, roles, checks). */
export const MIGRATION_PER_DATABASE_MS = 20 * 60_000
export const MIGRATION_BASE_MS = 20 * 60_000

export function migrationTimeoutFor(databases: number, override?: number): number {
  return override ?? MIGRATION_BASE_MS + Math.max(1, databases) * MIGRATION_PER_DATABASE_MS
}

/**
 * Waits for the guest's migration (pgimajor.py's status file), showing each database's step,
 * until it is done; a failed migration, or one still running after the timeout, fails the gate
 * (and so rolls the establishment back) with the guest's reason.
 */
export async function waitForMigration(r: Run, databases: number): Promise<void> {
  const {ctx} = r
  const timeoutMs = migrationTimeoutFor(databases, ctx.migrationTimeoutMs)
  const deadline = Date.now() + timeoutMs
  let last = ''
  for (;;) {
    checkKilled(r)
    let info: MajorInfo | undefined
    try {
      info = await majorInGuest<MajorInfo>(r.t, {action: 'info'}, 120_000)
    } catch (err) {
      // the guest agent answers before the data disk is mounted: not a failure yet
      if (ctx.signal?.aborted) throw err
      ctx.io.debug(`${r.est.uai}: migration status not readable yet: ${describe(err)}`)
    }
    const st = info?.status
    const mine = st && st.id === r.id
    // refused before the migration started (no request found, a data disk it will not mount):
    // said at once rather than after the whole budget
    if (!mine && info?.datadisk?.ok === false) throw new GateFailed(`the new OS did not prepare the data disk: ${info.datadisk.error ?? '?'}`, where(r))
    if (!mine && info?.upgrade?.ok === false) throw new GateFailed(`the new OS's pgi-upgrade failed before the migration: ${info.upgrade.error ?? '?'}`, where(r))
    if (mine && st.state === 'failed') throw new GateFailed(`major upgrade failed in the guest: ${st.error ?? describeMajorStatus(st)}`, where(r))
    if (mine && (st.state === 'done' || st.state === 'committed')) {
      ctx.io.info(`${r.est.uai}: ${describeMajorStatus(st)} (${st.databases.map((d) => `${d.name} ${Math.round(Object.values(d.seconds ?? {}).reduce((a, b) => a + b, 0))} s`).join(', ')})`)
      return
    }
    const text = mine ? describeMajorStatus(st) : info ? 'migration: waiting for the new OS to start it' : 'migration: waiting for the guest'
    if (text !== last) {
      ctx.update?.(text)
      // a line per change in CI logs too (listr2's task text is only seen on a terminal)
      ctx.io.debug(`${r.est.uai}: ${text}`)
      last = text
    }
    if (Date.now() >= deadline) throw new GateFailed(`the major upgrade's migration did not finish within ${Math.round(timeoutMs / 60_000)} min (${text})`, where(r))
    await sleep(ctx.pollIntervalMs)
  }
}
