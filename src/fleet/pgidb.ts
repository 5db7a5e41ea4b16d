/**
 * The VM's database engine, `pgi-db` (images/pgi-tryton/files/usr/local/sbin/pgi-db, docs/databases.md
 * "The engine"), run over the guest agent: the one way the host creates, copies, lists, backs up,
 * restores and drops Tryton databases (`pgi deploy`'s declared databases, `pgi db`, status). Every
 * pgi-db command prints one JSON value on stdout, or {"error": {code, message}} with an exit status
 * that says what kind of failure it was; this module turns those into pgi's typed errors.
 */
import {ErrorCode, UserError, type ErrorCodeValue, type ErrorLocation} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import type {GuestTarget} from './guest.js'

export const GUEST_DB = '/usr/local/sbin/pgi-db'

/** pgi-db's exit statuses (its docstring) → pgi's error code, exit code and what to do next. */
const STATUS: Record<number, {code: ErrorCodeValue; exit: ExitCodeValue; next: string}> = {
  3: {code: ErrorCode.DB_INVALID, exit: ExitCode.INVALID_INPUT, next: 'Fix the input named in the message; nothing was changed.'},
  4: {code: ErrorCode.DB_NOT_FOUND, exit: ExitCode.INVALID_INPUT, next: 'List the databases with `pgi db list UAI` and use one of their names.'},
  5: {code: ErrorCode.DB_EXISTS, exit: ExitCode.REFUSED, next: 'Choose another name; an existing database is never overwritten without --replace.'},
  7: {code: ErrorCode.DB_BUSY, exit: ExitCode.REFUSED, next: 'Another operation holds this database: wait for it to end (`pgi db list UAI`), then retry.'},
  8: {code: ErrorCode.DB_NO_ROOM, exit: ExitCode.REFUSED, next: 'Free room on the data disk (old backups, archived classes) or grow it, then retry; nothing was changed.'},
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
}

function where(t: GuestTarget): ErrorLocation {
  return {uai: t.uai, hypervisor: t.api.hypervisor, node: t.node, vmid: t.vmid}
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
    ...(opts.inputData !== undefined ? {inputData: opts.inputData} : {}),
  })
  let out: unknown
  try {
    out = JSON.parse(r.stdout.trim().split('\n').slice(-1)[0] ?? '')
  } catch {
    out = undefined
  }
  if (r.exitcode === 0 && out !== undefined) return out as T
  const failure = (out as {error?: PgiDbFailure} | undefined)?.error
  const s = STATUS[r.exitcode]
  const what = `pgi-db ${args[0] ?? ''}`.trim()
  const message = failure?.message ?? lastLine(r.stderr || r.stdout)
  if (s) {
    throw new UserError(s.code, `${what} refused in VM ${t.vmid}: ${message}`, {
      exitCode: s.exit,
      where: where(t),
      suggestions: [s.next],
      ...(failure ? {details: {guest: failure}} : {}),
    })
  }
  throw new UserError(ErrorCode.DB_FAILED, `${what} failed in VM ${t.vmid} (exit ${r.exitcode}): ${message}`, {
    where: where(t),
    suggestions: ['Nothing half-made is left (pgi-db drops what it did not finish). Look at the guest journal (journalctl -t pgi-db) for the cause, then retry.'],
    ...(failure ? {details: {guest: failure}} : {}),
  })
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
