/**
 * `pgi db` as a library: an establishment's Tryton databases, through its VM's guest agent and
 * the image's database engine (`pgi-db`, run by src/fleet/pgidb.ts). Each use case takes an open
 * FleetSession and a UAI, does one thing and returns a plain result that never holds a password
 * (a class's passwords go only into a file encrypted to the AMI, src/db/passwords.ts).
 *
 * What is checked here, before anything reaches the VM: names (the engine's rule), the student
 * list (every bad line), a dump's format and size; the engine checks the rest (a name that
 * exists, a model that does not, room on the data disk, another operation on the same database)
 * and its refusals come back as typed errors with their exit codes (src/fleet/pgidb.ts).
 */
import {open as openFile, stat, writeFile} from 'node:fs/promises'
import {basename, dirname, resolve} from 'node:path'

import {asPgiError, ErrorCode, UsageError, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {copyFromGuest} from '../fleet/guest-copy.js'
import type {GuestTarget} from '../fleet/guest.js'
import type {FleetSession} from '../fleet/open.js'
import {listDatabases, runPgiDb, type PgiDbBackup, type PgiDbDatabase} from '../fleet/pgidb.js'
import {settleAll} from '../fleet/pool.js'
import type {Io} from '../io.js'
import type {Establishment} from '../inventory/types.js'
import {checkPasswordsTarget, writeClassPasswords, type ClassAccount} from './passwords.js'
import {loadStudentList} from './students.js'
import {DB_UPLOAD_MAX_BYTES, removeUpload, uploadToGuest} from './transfer.js'

export {dbNameProblem} from './names.js'

export interface DbContext {
  fleet: FleetSession
  io: Io
}

/** Long operations under software emulation: a class of thirty takes minutes. */
const LONG_MS = 30 * 60_000

async function target(ctx: DbContext, uai: string): Promise<{est: Establishment; t: GuestTarget}> {
  const est = await ctx.fleet.establishment(uai)
  return {est, t: await ctx.fleet.guest(est)}
}

function noticeOf(ctx: DbContext, r: {notice?: string}): void {
  if (r.notice) ctx.io.warn(r.notice)
}

// ---- list ---------------------------------------------------------------------------------------

export interface DbListEntry {
  uai: string
  ok: boolean
  databases?: PgiDbDatabase[]
  error?: Record<string, unknown>
}

export interface DbListResult {
  establishments: DbListEntry[]
  failed: number
}

/** The databases of each establishment, establishments in parallel (a few per hypervisor). */
export async function listDbs(ctx: DbContext, establishments: Establishment[]): Promise<DbListResult> {
  const settled = await settleAll(establishments, (e) => e.hypervisor, async (est) => listDatabases(await ctx.fleet.guest(est)), {max: 8, perKey: 4})
  const out: DbListEntry[] = settled.map((r) => {
    if (r.ok) return {uai: r.item.uai, ok: true, databases: r.value}
    const e = asPgiError(r.error)
    if (establishments.length > 1) ctx.io.error(`${r.item.uai}: ${e.message}`)
    return {uai: r.item.uai, ok: false, error: e.toJSON()}
  })
  const failed = out.filter((o) => !o.ok).length
  if (failed > 0 && failed === out.length) {
    if (out.length === 1) throw asPgiError(settled[0] && !settled[0].ok ? settled[0].error : new Error('failed'))
    throw new UserError(ErrorCode.PARTIAL_FAILURE, `the databases of none of the ${out.length} establishments could be listed`, {
      details: {establishments: out.map((o) => ({uai: o.uai, error: o.error}))},
      suggestions: out.slice(0, 5).map((o) => `${o.uai}: ${String(o.error?.message)}`),
    })
  }
  return {establishments: out, failed}
}

// ---- create, copy -------------------------------------------------------------------------------

export interface CreateOptions {
  name: string
  template?: string
  from?: string
  company?: string
  fiscalYear?: number
}

export interface CreateResult {
  uai: string
  database: string
  modules: string[]
  from: string
  company: string | null
  fiscal_years?: unknown
  method: string
  closed_connections?: number
  notice?: string
  seconds: number
}

export async function createDb(ctx: DbContext, uai: string, o: CreateOptions): Promise<CreateResult> {
  const {t} = await target(ctx, uai)
  const args = ['create', o.name]
  if (o.from) args.push('--from', o.from)
  else args.push('--template', o.template ?? 'bts')
  if (o.company !== undefined) args.push('--company', o.company)
  if (o.fiscalYear !== undefined) args.push('--fiscal-year', String(o.fiscalYear))
  ctx.io.info(`${uai}: creating ${o.name}${o.from ? ` from ${o.from}` : ''}`)
  const r = await runPgiDb<Omit<CreateResult, 'uai'>>(t, args, {timeoutMs: LONG_MS})
  noticeOf(ctx, r)
  return {uai, ...r}
}

export interface CopyResult {
  uai: string
  source: string
  database: string
  method: string
  closed_connections?: number
  notice?: string
  cron_disabled?: number
  seconds: number
}

export async function copyDb(ctx: DbContext, uai: string, src: string, dst: string, opts: {keepConnections?: boolean} = {}): Promise<CopyResult> {
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: copying ${src} to ${dst}`)
  const r = await runPgiDb<Omit<CopyResult, 'uai'>>(t, ['copy', src, dst, ...(opts.keepConnections ? ['--keep-connections'] : [])], {timeoutMs: LONG_MS})
  noticeOf(ctx, r)
  return {uai, ...r}
}

// ---- class --------------------------------------------------------------------------------------

export interface ClassOptions {
  model: string
  studentsFile: string
  mode: 'per-student' | 'shared'
  prefix?: string
  teacher?: string
  label?: string
  keepConnections?: boolean
  /** Folder of the encrypted passwords file. */
  outDir: string
}

interface GuestClassStudent {
  login: string
  last_name: string
  first_name: string
  class: string | null
  password: string
  line: number
}

interface GuestClassResult {
  class: string
  mode: string
  model: string
  prefix: string
  method: string
  closed_connections?: number
  notice?: string
  teacher: {login: string; created: boolean; password: string | null}
  databases: {name: string; students: GuestClassStudent[]}[]
  seconds: number
}

/** What `pgi db class` returns: the engine's answer, everything but the passwords (they are in `passwords_file`). */
export interface ClassResult extends Omit<GuestClassResult, 'teacher' | 'databases'> {
  uai: string
  teacher: Omit<GuestClassResult['teacher'], 'password'>
  databases: {name: string; students: Omit<GuestClassStudent, 'password'>[]}[]
  students: number
  /** The file, encrypted to the AMI, holding every generated password. */
  passwords_file: string
}

export async function makeClass(ctx: DbContext, uai: string, o: ClassOptions): Promise<ClassResult> {
  // every check that can be made here is made before the VM is asked anything
  const est = await ctx.fleet.establishment(uai)
  const {bytes, students} = await loadStudentList(o.studentsFile)
  await checkPasswordsTarget(est, o.outDir)
  const t = await ctx.fleet.guest(est)
  ctx.io.info(`${uai}: ${students.length} student${students.length > 1 ? 's' : ''} read from ${o.studentsFile}; sending the list to the VM`)
  const up = await uploadToGuest(t, [{name: 'students.csv', data: bytes}])
  let r: GuestClassResult
  try {
    const args = ['class', '--model', o.model, '--students', up.files[0]!.path, '--mode', o.mode]
    if (o.prefix) args.push('--prefix', o.prefix)
    if (o.teacher) args.push('--teacher', o.teacher)
    if (o.label) args.push('--label', o.label)
    if (o.keepConnections) args.push('--keep-connections')
    ctx.io.info(`${uai}: making the class from ${o.model} (${o.mode})`)
    r = await runPgiDb<GuestClassResult>(t, args, {timeoutMs: LONG_MS})
  } finally {
    await removeUpload(t, up.dir)
  }
  noticeOf(ctx, r)
  const accounts: ClassAccount[] = r.databases.flatMap((d) => d.students.map((s) => ({database: d.name, login: s.login, password: s.password, lastName: s.last_name, firstName: s.first_name, line: s.line})))
  const teacher = r.teacher.created && r.teacher.password ? {database: r.databases.map((d) => d.name).join(', '), login: r.teacher.login, password: r.teacher.password} : undefined
  let file: string
  try {
    file = await writeClassPasswords({est, outDir: o.outDir, label: r.class, model: r.model, mode: r.mode, teacher, students: accounts})
  } catch (err) {
    // the databases exist and nobody has their passwords: say so, and how to give new ones
    throw new UserError(ErrorCode.DB_FAILED, `the class ${r.class} was made in the VM, but its passwords file could not be written: ${(err as Error).message}`, {
      where: {uai},
      suggestions: [`Drop the class's databases (\`pgi db drop ${uai} NAME\`) and make it again once ${o.outDir} can be written.`],
      details: {databases: r.databases.map((d) => d.name)},
    })
  }
  return {
    uai,
    class: r.class,
    mode: r.mode,
    model: r.model,
    prefix: r.prefix,
    method: r.method,
    ...(r.closed_connections !== undefined ? {closed_connections: r.closed_connections} : {}),
    ...(r.notice ? {notice: r.notice} : {}),
    teacher: {login: r.teacher.login, created: r.teacher.created},
    databases: r.databases.map((d) => ({name: d.name, students: d.students.map((s) => ({login: s.login, last_name: s.last_name, first_name: s.first_name, class: s.class, line: s.line}))})),
    students: accounts.length,
    passwords_file: file,
    seconds: r.seconds,
  }
}

// ---- backups ------------------------------------------------------------------------------------

// a backup entry is the engine's own (PgiDbBackup, src/fleet/pgidb.ts): pgi db and pgi backup list it alike

export async function backupDbs(ctx: DbContext, uai: string, names: string[], opts: {verify?: boolean} = {}): Promise<{uai: string; backups: PgiDbBackup[]}> {
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: backing up ${names.length > 0 ? names.join(', ') : 'every database'}${opts.verify ? ' (each restored into a scratch database to verify)' : ''}`)
  const r = await runPgiDb<PgiDbBackup[]>(t, ['backup', ...names, ...(opts.verify ? ['--verify'] : [])], {timeoutMs: 3 * LONG_MS})
  return {uai, backups: r}
}

export async function listBackups(ctx: DbContext, uai: string, name?: string): Promise<{uai: string; backups: PgiDbBackup[]}> {
  const {t} = await target(ctx, uai)
  const r = await runPgiDb<PgiDbBackup[]>(t, ['backups', ...(name ? [name] : [])], {timeoutMs: 120_000, idempotent: true})
  return {uai, backups: r}
}

export interface RestoreResult {
  uai: string
  database: string
  from: {id: string; kind: string; date: string; size: number}
  replaced: boolean
  kept: PgiDbBackup | null
  closed_connections?: number
  notice?: string
  seconds: number
}

export async function restoreDb(ctx: DbContext, uai: string, name: string, o: {from?: string; as?: string; replace?: boolean}): Promise<RestoreResult> {
  if (o.as && o.replace) throw new UsageError('--as and --replace exclude each other', {where: {flag: 'replace'}})
  const {t} = await target(ctx, uai)
  const args = ['restore', name, '--from', o.from ?? 'latest']
  if (o.as) args.push('--as', o.as)
  if (o.replace) args.push('--replace')
  ctx.io.info(`${uai}: restoring ${name} (${o.from ?? 'latest'})${o.as ? ` as ${o.as}` : o.replace ? ' in place' : ''}`)
  const r = await runPgiDb<Omit<RestoreResult, 'uai'>>(t, args, {timeoutMs: LONG_MS})
  noticeOf(ctx, r)
  return {uai, ...r}
}

export async function dropDb(ctx: DbContext, uai: string, name: string): Promise<{uai: string; database: string; dropped: boolean; final_backup: PgiDbBackup}> {
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: dropping ${name} (a final dump is kept first)`)
  const r = await runPgiDb<{database: string; dropped: boolean; final_backup: PgiDbBackup}>(t, ['drop', name], {timeoutMs: LONG_MS})
  return {uai, ...r}
}

// ---- export, import -----------------------------------------------------------------------------

export interface ExportResult {
  uai: string
  database: string
  file: string
  manifest: string
  size: number
  sha256: string
  tryton_series: string
  tryton_version: string
  modules: string[]
  guest_path: string
}

/** Refuses to overwrite a file unless asked. */
async function refuseExisting(file: string, force: boolean): Promise<void> {
  if (force) return
  if (await stat(file).then(() => true, () => false)) {
    throw new UserError(ErrorCode.REFUSED, `${file} exists: not overwritten`, {
      exitCode: ExitCode.REFUSED,
      where: {flag: 'out', file},
      suggestions: ['Choose another file with --out, or add --force to replace it.'],
    })
  }
}

export async function exportDb(ctx: DbContext, uai: string, name: string, o: {out: string; force?: boolean}): Promise<ExportResult> {
  const out = resolve(o.out)
  await refuseExisting(out, Boolean(o.force))
  if (!(await stat(dirname(out)).then((s) => s.isDirectory(), () => false))) {
    throw new UsageError(`the folder of --out ${out} does not exist`, {where: {flag: 'out'}, suggestions: ['Create it first, or give a file in an existing folder.']})
  }
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: dumping ${name} in the VM`)
  const r = await runPgiDb<{path: string; manifest: string; size: number; sha256: string; tryton_series: string; tryton_version: string; modules: string[]; database: string; [k: string]: unknown}>(t, ['export', name], {timeoutMs: LONG_MS})
  const copied = await copyFromGuest(t, r.path, out, {expectSha256: r.sha256, onProgress: (s) => ctx.io.info(`${uai}: ${s}`)})
  // the manifest beside the file: `pgi db import` reads the Tryton series from it
  const {path: _p, manifest: _m, ...manifest} = r
  await writeFile(`${out}.json`, JSON.stringify({...manifest, file: basename(out)}, null, 2) + '\n', {mode: 0o600})
  return {uai, database: name, file: out, manifest: `${out}.json`, size: copied.bytes, sha256: copied.sha256, tryton_series: r.tryton_series, tryton_version: r.tryton_version, modules: r.modules, guest_path: r.path}
}

/** PostgreSQL custom-format archives start with these bytes (pg_backup_archiver.c). */
const PGDMP = Buffer.from('PGDMP')

/** Checks a dump file here before anything is sent: a file, not empty, under the limit, a custom-format archive. */
export async function checkDumpFile(file: string): Promise<{size: number}> {
  const invalid = (message: string, suggestions: string[]) => new UserError(ErrorCode.DB_INVALID, message, {exitCode: ExitCode.INVALID_INPUT, where: {file}, suggestions})
  const st = await stat(file).catch(() => undefined)
  if (!st || !st.isFile()) throw invalid(`${file}: no such file`, ['Give the dump made by `pgi db export` (or pg_dump -Fc).'])
  if (st.size === 0) throw invalid(`${file} is empty`, ['Give the dump made by `pgi db export` (or pg_dump -Fc).'])
  if (st.size > DB_UPLOAD_MAX_BYTES) {
    throw invalid(`${file} is ${st.size} bytes: pgi db import sends at most ${DB_UPLOAD_MAX_BYTES} bytes (${DB_UPLOAD_MAX_BYTES / 1024 / 1024} MiB) through the guest agent`, [
      'Copy it into the VM with scp (the AMI\'s SSH login) and run `pgi-db import FILE --as NAME` there as root (docs/databases.md).',
    ])
  }
  const fh = await openFile(file, 'r')
  try {
    const head = Buffer.alloc(5)
    await fh.read(head, 0, 5, 0)
    if (!head.equals(PGDMP)) {
      throw invalid(`${file} is not a PostgreSQL custom-format dump (it does not start with PGDMP): nothing was sent`, [
        'Export the database with `pgi db export` (or pg_dump -Fc); a plain SQL dump is not accepted.',
      ])
    }
  } finally {
    await fh.close()
  }
  return {size: st.size}
}

export interface ImportResult {
  uai: string
  database: string
  size: number
  modules: string[]
  tryton_series: string
  series_from: string
  cron_disabled?: number
  seconds: number
  sent: {bytes: number; calls: number}
}

export async function importDb(ctx: DbContext, uai: string, file: string, as: string): Promise<ImportResult> {
  const local = resolve(file)
  await checkDumpFile(local)
  const {readFile} = await import('node:fs/promises')
  const data = await readFile(local)
  const manifest = await readFile(`${local}.json`).catch(() => undefined)
  const name = basename(local).replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[^A-Za-z0-9]+/, '').slice(0, 90) || 'import.dump'
  const {t} = await target(ctx, uai)
  ctx.io.info(`${uai}: sending ${basename(local)} (${data.length} bytes) to the VM`)
  const up = await uploadToGuest(t, [{name, data}, ...(manifest ? [{name: `${name}.json`, data: manifest}] : [])], {onProgress: (s) => ctx.io.info(`${uai}: ${s}`)})
  try {
    ctx.io.info(`${uai}: checking the dump (pg_restore --list, Tryton series, modules) and importing it as ${as}`)
    const r = await runPgiDb<Omit<ImportResult, 'uai' | 'sent'>>(t, ['import', up.files[0]!.path, '--as', as], {timeoutMs: LONG_MS})
    return {uai, ...r, sent: {bytes: data.length, calls: up.files.reduce((n, f) => n + f.calls, 0)}}
  } finally {
    await removeUpload(t, up.dir)
  }
}
