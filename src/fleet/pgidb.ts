/**
 * The VM's database engine, `pgi-db` (images/pgi-tryton/files/usr/local/sbin/pgi-db, docs/databases.md
 * "The engine"), run over the guest agent: the one way the host creates, copies, lists, backs up,
 * restores and drops Tryton databases (`pgi deploy`'s declared databases, `pgi db`, status). Every
 * pgi-db command prints one JSON value on stdout, or {"error": {code, message}} with an exit status
 * that says what kind of failure it was; this module turns those into pgi's typed errors.
 */
import {ErrorCode, UserError, type ErrorCodeValue} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {guestWhere, type GuestTarget} from './guest.js'

export const GUEST_DB = '/usr/local/sbin/pgi-db'

/** What a guest tool's exit status means on this side: pgi's error code, exit code and next step. */
export interface GuestRefusal {
  code: ErrorCodeValue
  exit: ExitCodeValue
  next: string
  /** How the message says it ended ("refused" when not given). */
  ended?: string
}

const STATUS: Record<number, GuestRefusal> = {
  3: {code: ErrorCode.DB_INVALID, exit: ExitCode.INVALID_INPUT, next: 'Fix the input named in the message; nothing was changed.'},
  4: {code: ErrorCode.DB_NOT_FOUND, exit: ExitCode.INVALID_INPUT, next: 'List the databases with `pgi db list UAI` and use one of their names.'},
  5: {code: ErrorCode.DB_EXISTS, exit: ExitCode.REFUSED, next: 'Choose another name; an existing database is never overwritten without --replace.'},
  7: {code: ErrorCode.DB_BUSY, exit: ExitCode.REFUSED, next: 'Another operation holds this database: wait for it to end (`pgi db list UAI`), then retry.'},
  8: {code: ErrorCode.DB_NO_ROOM, exit: ExitCode.REFUSED, next: 'Free room on the data disk (old backups, archived classes) or grow it, then retry; nothing was changed.'},
  // stopped in the VM (SIGTERM: the VM shutting down, someone stopping it; docs/databases.md): the
  // engine undid what it had begun. A failure of the operation, not an interruption of pgi itself
  // (exit 130 is for that), so exit 1.
  130: {code: ErrorCode.DB_INTERRUPTED, exit: ExitCode.FAILURE, ended: 'was stopped', next: 'The VM stopped the operation (a shutdown or a restart) and undid what it had begun: check the VM is up (`pgi status UAI`), then run the command again.'},
}

/** What pgi-db printed when it failed. */
export interface PgiDbFailure {
  code: string
  message: string
  [k: string]: unknown
}

export interface PgiDbOptions {
  /** Given to pgi-db on its standard input (a CSV of students…); the guest agent takes ~60 KB at most. */
  inputData?: string
  /** Default 10 min: a class of thirty under software emulation takes minutes. */
  timeoutMs?: number
  /** True only for commands that change nothing (list, backups, login-check): they may be re-sent after a lost answer. */
  idempotent?: boolean
  /**
   * Exit statuses besides 0 whose JSON output is the answer, not a failure (login-check exits 1
   * when a login fails, and prints each database's result all the same).
   */
  answerStatuses?: number[]
}


function lastLine(s: string): string {
  return s.trim().split('\n').slice(-3).join(' | ').slice(0, 400) || '(no output)'
}

/**
 * Runs `pgi-db ARGS…` in the VM and returns its JSON result. A failure becomes a UserError whose
 * code and exit code follow pgi-db's status (busy → exit 7, invalid input → 3…), with pgi-db's own
 * message and the VM named.
 */
export async function runPgiDb<T>(t: GuestTarget, args: string[], opts: PgiDbOptions = {}): Promise<T> {
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_DB, ...args], {
    timeoutMs: opts.timeoutMs ?? 600_000,
    idempotent: opts.idempotent ?? false,
    // someone waits on each of these (a class, a restore): its end seen within a second, not
    // up to the 5 s the fleet's polling reaches; one status request a second per running command
    pollMaxMs: 1000,
    ...(opts.inputData !== undefined ? {inputData: opts.inputData} : {}),
  })
  let out: unknown
  try {
    out = JSON.parse(r.stdout.trim().split('\n').slice(-1)[0] ?? '')
  } catch {
    out = undefined
  }
  if ((r.exitcode === 0 || opts.answerStatuses?.includes(r.exitcode)) && out !== undefined && !(out as {error?: unknown} | null)?.error) return out as T
  const failure = (out as {error?: PgiDbFailure} | undefined)?.error
  const s = STATUS[r.exitcode]
  const what = `pgi-db ${args[0] ?? ''}`.trim()
  const message = failure?.message ?? lastLine(r.stderr || r.stdout)
  if (s) {
    throw new UserError(s.code, `${what} ${s.ended ?? 'refused'} in VM ${t.vmid}: ${message}`, {
      exitCode: s.exit,
      where: guestWhere(t),
      suggestions: [s.next],
      ...(failure ? {details: {guest: failure}} : {}),
    })
  }
  throw new UserError(ErrorCode.DB_FAILED, `${what} failed in VM ${t.vmid} (exit ${r.exitcode}): ${message}`, {
    where: guestWhere(t),
    suggestions: ['Nothing half-made is left (pgi-db drops what it did not finish). Look at the guest journal (journalctl -t pgi-db) for the cause, then retry.'],
    ...(failure ? {details: {guest: failure}} : {}),
  })
}

/** One backup as the engine lists it (`pgi-db backups`, `backup`, the dump kept by `drop`; docs/databases.md). */
export interface PgiDbBackup {
  id: string
  database: string
  kind: string
  date: string
  size: number
  sha256: string
  verified: {ok: boolean; method: string; at: string} | null
  path: string
  pruned?: string[]
}

/** One database as `pgi-db list` shows it (pgidb.py list_databases). */
export interface PgiDbDatabase {
  name: string
  /** Bytes. */
  size: number
  /** A Tryton database (ir_module exists) or another one. */
  tryton: boolean
  /** Activated Tryton modules, sorted. */
  modules: string[]
  /** What made it: template, copy, class, import… (its pgi_meta), null when pgi-db did not. */
  kind: string | null
  /** The class label of a class database. */
  class: string | null
  student?: string
  /** The company's name when it has exactly one. */
  company?: string | null
  last_backup: {id: string; date: string; kind: string} | null
  /** Why it could not be read (it is listed all the same). */
  error?: string
}

/** The VM's Tryton databases (`pgi-db list`). */
export async function listDatabases(t: GuestTarget, timeoutMs = 120_000): Promise<PgiDbDatabase[]> {
  return runPgiDb<PgiDbDatabase[]>(t, ['list'], {timeoutMs, idempotent: true})
}

/** What `pgi-db create` prints (pgidb.py create). */
export interface PgiDbCreated {
  database: string
  modules: string[]
  /** "template", or the source database. */
  from: string
  company: string | null
  /** Per company: the fiscal year and what was done for it (moved, created, existing). */
  fiscal_years: {company?: number; fiscal_year?: string | number | null; action?: string; [k: string]: unknown}[]
  method: string
  /** Wall time in the VM. */
  seconds: number
}

/**
 * Creates database `name` from the image's template (`pgi-db create`): the company renamed, the
 * fiscal year of `fiscalYear`. Refused with PGI_DB_EXISTS when a database of that name exists:
 * an existing database is never changed. For deploy's declared databases, whose caller takes
 * "exists" as done.
 */
export async function createDatabase(t: GuestTarget, db: {name: string; company?: string; fiscalYear?: number}, timeoutMs = 1_800_000): Promise<PgiDbCreated> {
  const args = ['create', db.name]
  if (db.company !== undefined) args.push('--company', db.company)
  if (db.fiscalYear !== undefined) args.push('--fiscal-year', String(db.fiscalYear))
  // may be re-sent after a lost answer or a server fault: a create that did happen is then refused
  // as existing (PGI_DB_EXISTS, which deploy counts as existing), never made twice
  return runPgiDb<PgiDbCreated>(t, args, {timeoutMs, idempotent: true})
}

/** One database's result of `pgi-db login-check` (pgidb.py login_check). */
export interface PgiDbLogin {
  name: string
  ok: boolean
  error?: string
  seconds?: number
}

/**
 * A real Tryton login (common.db.login over the VM's JSON-RPC) into each of `names`
 * (`pgi-db login-check`). The first login to a database makes trytond load it: a minute or more
 * under software emulation, hence the long default.
 */
export async function loginCheck(t: GuestTarget, names: string[], timeoutMs = 900_000): Promise<PgiDbLogin[]> {
  return runPgiDb<PgiDbLogin[]>(t, ['login-check', ...names], {timeoutMs, idempotent: true, answerStatuses: [1]})
}

/**
 * The record pgi-health.timer writes every 2 minutes (images/pgi-tryton/files/usr/local/lib/pgi/
 * health-record; src/status/health-record.ts reads all of it): read here through the agent's
 * file-read, a GET, for its list of databases — what deploy's plan needs without running anything
 * in the VM.
 */
export const GUEST_HEALTH_RECORD = '/run/pgi/health.json'

/**
 * The names of the VM's databases as its last health record lists them, with the record's time;
 * undefined when there is no usable record (just booted, an image without the timer, a record
 * without a database list).
 */
export async function recordedDatabases(t: GuestTarget): Promise<{names: string[]; at: string} | undefined> {
  let text: string
  try {
    text = await t.api.agentFileRead(t.node, t.vmid, GUEST_HEALTH_RECORD)
  } catch {
    return undefined
  }
  try {
    const rec = JSON.parse(text) as {at?: unknown; health?: {databases?: unknown}}
    const dbs = rec.health?.databases
    if (typeof rec.at !== 'string' || !Array.isArray(dbs)) return undefined
    return {names: dbs.flatMap((d) => (typeof (d as {name?: unknown})?.name === 'string' ? [(d as {name: string}).name] : [])), at: rec.at}
  } catch {
    return undefined
  }
}
