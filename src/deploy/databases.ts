/**
 * The establishment's declared databases (inventory `databases:`) as part of deploy's desired
 * state: planned from what the VM holds, created when missing with the VM's own engine (pgi-db,
 * src/fleet/pgidb.ts), never touched once they exist.
 *
 * Planning only reads: the health record the VM writes every 2 minutes (agent file-read, a GET: a
 * re-deploy or a dry run sends no write request), or `pgi-db list` when there is no record. The
 * run always lists again right before creating: a database that appeared meanwhile is left as it
 * is (and pgi-db refuses to create over one anyway, PGI_DB_EXISTS).
 */
import {ErrorCode, PgiError, UserError, asPgiError} from '../errors.js'
import {createDatabase, listDatabases, loginCheck, recordedDatabases} from '../fleet/pgidb.js'
import {guestWhere, refreshHealthRecord, type GuestTarget} from '../fleet/guest.js'
import type {DeclaredDatabase, Establishment} from '../inventory/types.js'

/** One declared database in the plan: there already, to be created, or not known (VM not running, not readable). */
export interface PlannedDatabase {
  name: string
  state: 'exists' | 'missing' | 'unknown'
}

/** What deploy did for one declared database. */
export interface DatabaseOutcome {
  name: string
  outcome: 'created' | 'existing'
  /** For created: the company and fiscal year it was given, pgi-db's own time (s). */
  company?: string
  fiscalYear?: number
  seconds?: number
  /** The Tryton login check's time in the VM (s): the first login to a new database makes trytond load it. */
  loginSeconds?: number
}

/** The fiscal year a database gets when the inventory names none: the current calendar year. */
export function fiscalYearOf(db: DeclaredDatabase, now: Date): number {
  return db.fiscalYear ?? now.getFullYear()
}

/** The declared databases against the names the VM has (undefined: not known). */
export function planDatabases(declared: readonly DeclaredDatabase[], have: readonly string[] | undefined): PlannedDatabase[] {
  return declared.map((d) => ({name: d.name, state: have === undefined ? 'unknown' : have.includes(d.name) ? 'exists' : 'missing'}))
}

/**
 * What the plan knows of the declared databases of a running, configured VM, from the health
 * record (a GET); `pgi-db list` (a command that changes nothing) only when there is no usable
 * record. A record is at most a few minutes old: a database made since then is planned as
 * missing, and the run, which lists again right before creating, leaves it as it is. Never
 * throws: what could not be read is `unknown`, with the reason.
 */
export async function readPlannedDatabases(t: GuestTarget, est: Establishment): Promise<{databases: PlannedDatabase[]; error?: string}> {
  if (est.databases.length === 0) return {databases: []}
  const rec = await recordedDatabases(t)
  if (rec) return {databases: planDatabases(est.databases, rec.names)}
  try {
    const list = await listDatabases(t)
    return {databases: planDatabases(est.databases, list.map((d) => d.name))}
  } catch (err) {
    return {databases: planDatabases(est.databases, undefined), error: asPgiError(err).message}
  }
}

export interface EnsureOptions {
  now: () => Date
  update?: (text: string) => void
  /** Each pgi-db create's bound (default 30 min: software emulation). */
  createTimeoutMs?: number
}

/**
 * Creates the declared databases the VM lacks (a copy of the image's template: the company named,
 * the fiscal year made), one after the other; an existing one is never touched. Then logs into
 * every declared database for real (`pgi-db login-check`): a database that does not open is a
 * failed deploy, and trytond has loaded each one before the AMI's first login.
 */
export async function ensureDatabases(t: GuestTarget, est: Establishment, opts: EnsureOptions): Promise<DatabaseOutcome[]> {
  if (est.databases.length === 0) return []
  opts.update?.('listing the databases')
  const have = new Set((await listDatabases(t)).map((d) => d.name))
  const out: DatabaseOutcome[] = []
  for (const d of est.databases) {
    if (have.has(d.name)) {
      out.push({name: d.name, outcome: 'existing'})
      continue
    }
    const fiscalYear = fiscalYearOf(d, opts.now())
    opts.update?.(`creating database ${d.name} (company "${d.company}", fiscal year ${fiscalYear})`)
    try {
      const r = await createDatabase(t, {name: d.name, company: d.company, fiscalYear}, opts.createTimeoutMs)
      out.push({name: d.name, outcome: 'created', company: d.company, fiscalYear, seconds: r.seconds})
    } catch (err) {
      // made meanwhile (a teacher, another deploy): it exists, and is left as it is
      if (err instanceof PgiError && err.code === ErrorCode.DB_EXISTS) out.push({name: d.name, outcome: 'existing'})
      else throw err
    }
  }
  opts.update?.(`logging into ${est.databases.map((d) => d.name).join(', ')}`)
  const logins = await loginCheck(t, est.databases.map((d) => d.name))
  for (const l of logins) {
    const o = out.find((x) => x.name === l.name)
    if (o && typeof l.seconds === 'number') o.loginSeconds = l.seconds
  }
  const bad = logins.filter((l) => !l.ok)
  if (bad.length > 0) {
    throw new UserError(ErrorCode.DB_FAILED, `Tryton login failed in ${bad.map((b) => `${b.name} (${b.error ?? 'refused'})`).join(', ')} on VM ${t.vmid}`, {
      where: guestWhere(t),
      suggestions: ['Run `pgi status UAI` for the server\'s checks; the guest journal (journalctl -t pgi-db -t trytond) says why. Deploy again once fixed: existing databases are kept.'],
      details: {databases: out, logins},
    })
  }
  // the server's own record (read by AMIs' status and by the next deploy's plan) says so at once
  if (out.some((d) => d.outcome === 'created')) {
    opts.update?.('recording the server\'s health')
    await refreshHealthRecord(t)
  }
  return out
}

