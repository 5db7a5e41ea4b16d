import {createHash, randomBytes} from 'node:crypto'

import {readStudents, slug} from '../db/students.js'
// (a cycle with simulated-guest.ts, which runs this: its constants are read only when a command runs)
import {TEMPLATE_MODULES, TEMPLATE_ROWS, type DataDisk, type GuestEnv, type RunResult, type SimDatabase} from './simulated-guest-state.js'

/**
 * `pgi-db` in the simulated guest: a model of the image's database engine
 * (images/pgi-tryton/files/usr/local/sbin/pgi-db over pgidb.py; docs/databases.md "The engine"),
 * written from its contract: the same commands and options, the same JSON results (the fields
 * the host reads), the same error codes and exit statuses (3 invalid input, 4 not found,
 * 5 exists, 8 no room; 2 usage), the same names for what it makes (class databases
 * PREFIX_prenom_nom, logins prenom.nom with homonyms numbered, backup ids STAMP-KIND), and the
 * same files on the data disk (per-database dumps and their JSON entries under
 * /srv/pgi/backups/databases/DB/, exports under /srv/pgi/exports/). What it does not model: the
 * real SQL (a database is its modules, row counts and summary), locks between concurrent
 * operations (the simulated guest runs one command at a time: exit 7 never happens here), and
 * Tryton series other than the image's.
 *
 * A simulated dump is "PGDMP" (a custom-format archive's first bytes, which pgi checks before
 * sending a file) followed by the database as JSON; anything else is "not a dump".
 */

const NAME_RE = /^[a-z][a-z0-9_]{0,62}$/
const PREFIX_RE = /^[a-z][a-z0-9_]{0,39}$/
const LOGIN_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/
const RESERVED = ['pgi_tmp_', 'pgi_template_', 'pgi_verify_']
const DB_BACKUPS = '/srv/pgi/backups/databases'
const BACKUPS = '/srv/pgi/backups'
const EXPORTS = '/srv/pgi/exports'
/** What the health model counts per database (simulated-guest's health, get-fsinfo). */
const DB_BYTES = 40 * 2 ** 20
const LIMIT_PCT = 90
const SERIES = '6.0'
const VERSION = '6.0.40'
const MANUAL_KEEP = 10
const PASSWORD_ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789'

export interface SimDbMeta {
  kind: string | null
  class: string | null
  student?: string
  company: string | null
  /** Tryton logins of the database (the model's users are copied with it). */
  users: string[]
}

/** The summary the engine keeps in each database (pgi_meta); defaults for databases made otherwise. */
function metaOf(d: SimDatabase): SimDbMeta {
  const m = (d as SimDatabase & {meta?: SimDbMeta}).meta
  return m ?? {kind: null, class: null, company: 'Entreprise modèle', users: ['admin']}
}

function withMeta(d: SimDatabase, meta: SimDbMeta): SimDatabase {
  return Object.assign(structuredClone({modules: d.modules, rows: d.rows}), {meta: structuredClone(meta)})
}

class DbError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message)
  }
}

const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex')
const iso = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
const stampOf = (ms: number): string => iso(ms).replace(/[-:]/g, '')

function checkName(name: string | undefined, what = 'database name'): string {
  if (name === undefined || !NAME_RE.test(name)) {
    throw new DbError('invalid_name', `'${name}' is not a valid ${what}: 1 to 63 characters among lowercase letters, digits and _, starting with a letter (a PostgreSQL identifier that needs no quoting)`, 3, {name})
  }
  if (RESERVED.some((p) => name.startsWith(p)) || ['postgres', 'template0', 'template1'].includes(name)) {
    throw new DbError('reserved_name', `'${name}' is reserved (names starting with ${RESERVED.join(', ')} are the engine's own)`, 3, {name})
  }
  return name
}

function requireDb(disk: DataDisk, name: string): SimDatabase {
  checkName(name)
  const d = disk.databases.get(name)
  if (!d) throw new DbError('not_found', `database ${name} does not exist`, 4, {database: name})
  return d
}

function requireFree(disk: DataDisk, names: string[]): void {
  const taken = names.filter((n) => disk.databases.has(n))
  if (taken.length > 0) throw new DbError('exists', `${taken.length === 1 ? 'a database named' : 'databases named'} ${taken.join(', ')} already exist${taken.length === 1 ? 's' : ''}: an existing database is never changed`, 5, {databases: taken})
}

function used(env: GuestEnv): number {
  const disk = env.disk!
  return 180 * 2 ** 20 + disk.databases.size * DB_BYTES + [...disk.files.values()].reduce((n, f) => n + f.data.length, 0)
}

function checkSpace(env: GuestEnv, needed: number, what: string): void {
  if (env.diskSizeBytes <= 0) return
  const u = used(env)
  const after = (100 * (u + needed)) / env.diskSizeBytes
  if (after > LIMIT_PCT) {
    const pct = (x: number) => Math.round(x * 10) / 10
    throw new DbError(
      'no_space',
      `not enough room on the data disk for ${what}: ${pct((100 * u) / env.diskSizeBytes)} % used, ${pct(after)} % after (limit ${LIMIT_PCT} %): free room (old backups, archived classes) or grow the disk`,
      8,
      {needed_bytes: needed, used_bytes: u, size_bytes: env.diskSizeBytes, used_pct: pct((100 * u) / env.diskSizeBytes), after_pct: pct(after), limit_pct: LIMIT_PCT},
    )
  }
}

function genPassword(n: number): string {
  const b = randomBytes(n)
  return [...b].map((x) => PASSWORD_ALPHABET[x % PASSWORD_ALPHABET.length]).join('')
}

function dumpBytes(name: string, d: SimDatabase): Buffer {
  return Buffer.concat([Buffer.from('PGDMP'), Buffer.from(JSON.stringify({format: 'pgi-simulated-dump', database: name, modules: d.modules, rows: d.rows, meta: metaOf(d), tryton_series: SERIES, nonce: randomBytes(8).toString('hex')}))])
}

function readDumpBytes(data: Buffer): (SimDatabase & {meta: SimDbMeta; tryton_series?: string}) | undefined {
  if (data.subarray(0, 5).toString() !== 'PGDMP') return undefined
  try {
    const d = JSON.parse(data.subarray(5).toString()) as {format?: string; modules?: Record<string, string>; rows?: Record<string, number>; meta?: SimDbMeta; tryton_series?: string}
    if (d.format !== 'pgi-simulated-dump' || !d.modules || !d.rows) return undefined
    return {modules: d.modules, rows: d.rows, meta: d.meta ?? {kind: null, class: null, company: null, users: ['admin']}, ...(d.tryton_series ? {tryton_series: d.tryton_series} : {})}
  } catch {
    return undefined
  }
}

interface Entry {
  format: 1
  id: string
  database: string
  kind: string
  file: string
  sha256: string
  size: number
  row_counts: Record<string, number>
  created_at: string
  verified: {ok: boolean; method: string; at: string}
}

function entryOut(e: Entry, path: string) {
  return {id: e.id, database: e.database, kind: e.kind, date: e.created_at, size: e.size, sha256: e.sha256, verified: e.verified, path}
}

function put(env: GuestEnv, path: string, data: Buffer): void {
  env.disk!.files.set(path, {data, mtime: env.now()})
}

function dumpDatabase(env: GuestEnv, name: string, kind: string, verify = false) {
  const d = env.disk!.databases.get(name)!
  const stamp = stampOf(env.now())
  const dir = `${DB_BACKUPS}/${name}`
  let id = `${stamp}-${kind}`
  for (let n = 2; env.disk!.files.has(`${dir}/${id}.dump`); n++) id = `${stamp}-${kind}-${n}`
  const data = dumpBytes(name, d)
  const entry: Entry = {format: 1, id, database: name, kind, file: `${id}.dump`, sha256: sha256(data), size: data.length, row_counts: {...d.rows}, created_at: iso(env.now()), verified: {ok: true, method: verify ? 'restore' : 'list', at: iso(env.now())}}
  put(env, `${dir}/${id}.dump`, data)
  put(env, `${dir}/${id}.json`, Buffer.from(JSON.stringify(entry)))
  return entryOut(entry, `${dir}/${id}.dump`)
}

function backupsOf(env: GuestEnv, name?: string) {
  const disk = env.disk!
  const out: ReturnType<typeof entryOut>[] = []
  for (const [path, f] of disk.files) {
    const m = /^\/srv\/pgi\/backups\/databases\/([^/]+)\/([^/.][^/]*)\.json$/.exec(path)
    if (!m || (name && m[1] !== name)) continue
    try {
      const e = JSON.parse(f.data.toString()) as Entry
      const dump = `${DB_BACKUPS}/${m[1]}/${e.file}`
      if (disk.files.has(dump)) out.push(entryOut(e, dump))
    } catch {
      // not an entry
    }
  }
  for (const [path, f] of disk.files) {
    const m = /^\/srv\/pgi\/backups\/([^/.][^/]*)\/manifest\.json$/.exec(path)
    if (!m || m[1] === 'databases') continue
    try {
      const man = JSON.parse(f.data.toString()) as {finished_at?: string; started_at?: string; databases: {name: string; file: string; sha256: string; size: number}[]}
      for (const e of man.databases) {
        if (name && e.name !== name) continue
        out.push({id: m[1]!, database: e.name, kind: 'nightly', date: man.finished_at ?? man.started_at ?? '', size: e.size, sha256: e.sha256, verified: null as unknown as Entry['verified'], path: `${BACKUPS}/${m[1]}/${e.file}`})
      }
    } catch {
      // not a manifest
    }
  }
  return out.sort((a, b) => (a.date + a.id < b.date + b.id ? 1 : -1))
}

function prune(env: GuestEnv, name: string): string[] {
  const disk = env.disk!
  const manual = [...disk.files.keys()]
    .map((k) => new RegExp(`^${DB_BACKUPS}/${name}/([^/]*-manual[^/]*)\\.json$`).exec(k)?.[1])
    .filter((x): x is string => Boolean(x))
    .sort()
  const removed = manual.slice(0, Math.max(0, manual.length - MANUAL_KEEP))
  for (const id of removed) for (const ext of ['.dump', '.json']) disk.files.delete(`${DB_BACKUPS}/${name}/${id}${ext}`)
  return removed
}

/** Options of one pgi-db command line (argparse's rules, for the options the engine has). */
function parse(args: string[], spec: {flags?: string[]; bools?: string[]; multi?: string[]}): {pos: string[]; opt: Record<string, string>; multi: Record<string, string[]>; bool: Set<string>} {
  const pos: string[] = []
  const opt: Record<string, string> = {}
  const multi: Record<string, string[]> = {}
  const bool = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (a.startsWith('--')) {
      const [k, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined]
      if (spec.bools?.includes(k)) bool.add(k)
      else if (spec.flags?.includes(k) || spec.multi?.includes(k)) {
        const v = inline ?? args[++i]
        if (v === undefined) throw new DbError('usage', `pgi-db: argument --${k}: expected one argument`, 2)
        if (spec.multi?.includes(k)) (multi[k] ??= []).push(v)
        else opt[k] = v
      } else throw new DbError('usage', `pgi-db: unrecognized arguments: ${a}`, 2)
    } else pos.push(a)
  }
  return {pos, opt, multi, bool}
}

function copyDatabase(env: GuestEnv, src: string, meta: Partial<SimDbMeta>): SimDatabase {
  const d = env.disk!.databases.get(src)!
  return withMeta(d, {...metaOf(d), ...meta})
}

function create(env: GuestEnv, args: string[]) {
  const {pos, opt} = parse(args, {flags: ['company', 'fiscal-year', 'from', 'template', 'lang'], bools: ['bare', 'no-login-check', 'keep-connections'], multi: ['module']})
  const name = checkName(pos[0])
  const disk = env.disk!
  const company = opt.company?.trim()
  if (opt.company !== undefined && (!company || company.length > 120)) throw new DbError('invalid_company', `company name '${opt.company}': 1 to 120 characters`, 3)
  if (opt['fiscal-year'] !== undefined && !/^\d{4}$/.test(opt['fiscal-year'])) throw new DbError('invalid_year', `fiscal year '${opt['fiscal-year']}': YYYY`, 3)
  if (!disk.trytonAdmin) throw new DbError('not_configured', 'no Tryton admin password yet: run pgi-configure with tryton_admin first', 3)
  if (opt.template !== undefined && opt.template !== 'bts') throw new DbError('no_template', `no template '${opt.template}' in this image (bts)`, 4)
  if (opt.from !== undefined) requireDb(disk, opt.from)
  requireFree(disk, [name])
  checkSpace(env, DB_BYTES, `creating ${name}`)
  const year = opt['fiscal-year'] ?? String(new Date(env.now()).getUTCFullYear())
  const made = opt.from
    ? copyDatabase(env, opt.from, {kind: 'copy', class: null, ...(company ? {company} : {})})
    : withMeta({modules: {...TEMPLATE_MODULES}, rows: {...TEMPLATE_ROWS}}, {kind: 'create', class: null, company: company ?? 'Entreprise modèle', users: ['admin']})
  disk.databases.set(name, made)
  return {database: name, lang: 'fr', modules: Object.keys(made.modules).sort(), from: opt.from ?? 'template', company: company ?? null, fiscal_years: [opt.from ? {company: 1, fiscal_year: year, action: 'existing'} : {company: 1, fiscal_year: year, action: 'moved', start: `${year}-01-01`, end: `${year}-12-31`, from: '2020'}], method: 'template', closed_connections: 0, seconds: 0.1}
}

function copy(env: GuestEnv, args: string[]) {
  const {pos} = parse(args, {bools: ['keep-connections']})
  const [src, dst] = pos
  if (!src || !dst) throw new DbError('usage', 'pgi-db copy: the following arguments are required: source, target', 2)
  const disk = env.disk!
  checkName(dst)
  requireDb(disk, src)
  requireFree(disk, [dst])
  checkSpace(env, DB_BYTES, `copying ${src}`)
  disk.databases.set(dst, copyDatabase(env, src, {kind: 'copy', class: null}))
  return {method: 'template', closed_connections: 0, source: src, database: dst, cron_disabled: 0, seconds: 0.1}
}

function makeClass(env: GuestEnv, args: string[]) {
  const {opt} = parse(args, {flags: ['model', 'students', 'mode', 'prefix', 'teacher', 'label'], bools: ['keep-connections']})
  const disk = env.disk!
  const mode = opt.mode ?? 'per-student'
  if (!opt.model || !opt.students) throw new DbError('usage', 'pgi-db class: the following arguments are required: --model, --students', 2)
  if (mode !== 'per-student' && mode !== 'shared') throw new DbError('usage', `pgi-db class: argument --mode: invalid choice: '${mode}'`, 2)
  const teacher = opt.teacher ?? 'professeur'
  if (!LOGIN_RE.test(teacher) || ['admin', 'root', 'pgi_health'].includes(teacher)) throw new DbError('invalid_login', `teacher login '${teacher}': lowercase letters, digits, . _ - (not admin)`, 3)
  const file = env.disk!.files.get(opt.students) ?? env.runFiles.get(opt.students)
  if (!file) throw new DbError('no_file', `cannot read the student list ${opt.students}: No such file or directory`, 3)
  const {students, errors} = readStudents(file.data)
  if (errors.length > 0) {
    throw new DbError('invalid_csv', `the student list has ${errors.length} bad line${errors.length > 1 ? 's' : ''} (nothing was created): ${errors.slice(0, 10).map((e) => `line ${e.line}: ${e.message}`).join('; ')}`, 3, {rows: errors})
  }
  const codes = [...new Set(students.map((s) => s.class).filter((c): c is string => Boolean(c)))].sort()
  const label = opt.label ?? (codes.length === 1 ? codes[0] : undefined)
  let prefix = opt.prefix
  if (prefix === undefined) prefix = (label ? slug(label, '_') : opt.model).replace(/^[^a-z]+/, '').slice(0, 40).replace(/_+$/, '') || 'classe'
  if (!PREFIX_RE.test(prefix) || RESERVED.some((p) => prefix!.startsWith(p))) throw new DbError('invalid_prefix', `prefix '${prefix}': 1 to 40 lowercase letters, digits and _, starting with a letter`, 3)
  const model = requireDb(disk, opt.model)
  // plan_class: logins prenom.nom (homonyms numbered), databases PREFIX_login
  const taken = new Set(['admin', 'root', 'pgi_health', teacher])
  const names = new Set<string>()
  const planned = students.map((s) => {
    const base = `${slug(s.firstName)}.${slug(s.lastName)}`.slice(0, 60).replace(/^\.+|\.+$/g, '')
    let login = base
    for (let n = 2; taken.has(login); n++) login = `${base}${n}`
    taken.add(login)
    let database = prefix!
    if (mode === 'per-student') {
      const stem = `${prefix}_${login.replace(/[.-]/g, '_')}`.replace(/_+/g, '_').slice(0, 60).replace(/_+$/, '')
      database = stem
      for (let n = 2; names.has(database); n++) database = `${stem}${n}`
      names.add(database)
    }
    return {...s, login, database, password: genPassword(10)}
  })
  const targets = [...new Set(planned.map((s) => s.database))].sort()
  for (const t of targets) checkName(t)
  requireFree(disk, targets)
  const modelMeta = metaOf(model)
  const clash = planned.filter((s) => modelMeta.users.includes(s.login)).map((s) => s.login)
  if (clash.length > 0) throw new DbError('login_exists', `the model already has users with the logins ${clash.slice(0, 10).join(', ')}`, 3, {logins: clash})
  checkSpace(env, DB_BYTES * targets.length, `a class of ${targets.length} database${targets.length > 1 ? 's' : ''} from ${opt.model}`)
  const teacherOut = {login: teacher, created: false, password: null as string | null}
  if (!modelMeta.users.includes(teacher)) {
    teacherOut.password = genPassword(12)
    teacherOut.created = true
  }
  const classLabel = label ?? prefix
  for (const db of targets) {
    const mine = planned.filter((s) => s.database === db)
    const users = [...new Set([...modelMeta.users, teacher, ...mine.map((s) => s.login)])]
    const meta: SimDbMeta = {kind: mode === 'per-student' ? 'class-student' : 'class-shared', class: classLabel, company: modelMeta.company, users, ...(mode === 'per-student' ? {student: `${mine[0]!.firstName} ${mine[0]!.lastName}`} : {})}
    const d = withMeta(model, meta)
    d.rows.res_user = (d.rows.res_user ?? 0) + users.length - modelMeta.users.length
    disk.databases.set(db, d)
  }
  return {
    class: classLabel,
    mode,
    model: opt.model,
    prefix,
    method: 'template',
    closed_connections: 0,
    teacher: teacherOut,
    databases: targets.map((name) => ({name, students: planned.filter((s) => s.database === name).map((s) => ({login: s.login, last_name: s.lastName, first_name: s.firstName, class: s.class, password: s.password, line: s.line}))})),
    passwords: 'in this output only: the engine keeps none',
    seconds: 0.1 * targets.length,
  }
}

function backup(env: GuestEnv, args: string[]) {
  const {pos, bool} = parse(args, {bools: ['verify']})
  const disk = env.disk!
  const names = pos.length > 0 ? pos : [...disk.databases.keys()].sort()
  for (const n of names) requireDb(disk, n)
  checkSpace(env, (names.length * DB_BYTES) / 4, `backing up ${names.length} database${names.length !== 1 ? 's' : ''}`)
  return names.map((n) => ({...dumpDatabase(env, n, 'manual', bool.has('verify')), pruned: prune(env, n)}))
}

function restore(env: GuestEnv, args: string[]) {
  const {pos, opt, bool} = parse(args, {flags: ['from', 'as'], bools: ['replace']})
  const disk = env.disk!
  const name = checkName(pos[0])
  if (opt.as && bool.has('replace')) throw new DbError('usage', 'pgi-db restore: argument --replace: not allowed with argument --as', 2)
  const entries = backupsOf(env, name)
  if (entries.length === 0) throw new DbError('no_backup', `no backup of ${name} to restore`, 4, {database: name})
  const ident = opt.from ?? 'latest'
  const entry = ident === 'latest' ? entries[0]! : entries.find((e) => e.id === ident)
  if (!entry) throw new DbError('no_backup', `no backup ${ident} of ${name} (pgi-db backups ${name} lists them)`, 4, {database: name, id: ident})
  const replace = bool.has('replace')
  const target = replace ? name : opt.as ? checkName(opt.as) : !disk.databases.has(name) ? name : checkName(`${name.slice(0, 48)}_${entry.date.slice(0, 16).replace(/-/g, '').replace('T', '_').replace(/:/g, '')}`)
  const inPlace = replace && disk.databases.has(name)
  if (!inPlace) requireFree(disk, [target])
  checkSpace(env, entry.size * 10 + (inPlace ? DB_BYTES : 0), `restoring ${name}`)
  const data = disk.files.get(entry.path)?.data
  if (!data || sha256(data) !== entry.sha256) throw new DbError('checksum', `backup ${entry.id} of ${name} is damaged (sha256 mismatch): not restored`, 3)
  const d = readDumpBytes(data) ?? (() => {
    // a nightly set's dump (simulated-guest's format: the database as JSON)
    const j = JSON.parse(data.toString()) as {modules: Record<string, string>; rows: Record<string, number>}
    return {modules: j.modules, rows: j.rows, meta: metaOf(disk.databases.get(name) ?? {modules: {}, rows: {}})}
  })()
  const kept = inPlace ? dumpDatabase(env, name, 'before-replace') : null
  disk.databases.set(target, withMeta(d, target !== name ? {...d.meta, kind: 'restore'} : d.meta))
  return {database: target, from: {id: entry.id, kind: entry.kind, date: entry.date, size: entry.size}, replaced: inPlace, kept, seconds: 0.1, ...(inPlace ? {closed_connections: 0, notice: `0 session(s) on ${name} closed for the replacement: whoever had it open in Tryton sees one error on their next action, then works on the restored database`} : {})}
}

function drop(env: GuestEnv, args: string[]) {
  const name = checkName(args[0])
  const disk = env.disk!
  requireDb(disk, name)
  checkSpace(env, DB_BYTES / 4, `the final backup of ${name}`)
  const final = dumpDatabase(env, name, 'final')
  disk.databases.delete(name)
  return {database: name, dropped: true, final_backup: final}
}

function exportDb(env: GuestEnv, args: string[]) {
  const {pos, opt} = parse(args, {flags: ['out']})
  const name = checkName(pos[0])
  const disk = env.disk!
  const d = requireDb(disk, name)
  checkSpace(env, DB_BYTES / 4, `exporting ${name}`)
  const path = opt.out ?? `${EXPORTS}/${name}-${stampOf(env.now())}.dump`
  const data = dumpBytes(name, d)
  put(env, path, data)
  const manifest = {format: 1, kind: 'pgi-db export', database: name, file: path.split('/').pop(), size: data.length, sha256: sha256(data), tryton_series: SERIES, tryton_version: VERSION, modules: Object.keys(d.modules).sort(), created_at: iso(env.now()), image: {name: 'pgi-tryton', version: env.osVersion}}
  put(env, `${path}.json`, Buffer.from(JSON.stringify(manifest)))
  return {...manifest, path, manifest: `${path}.json`}
}

function importDb(env: GuestEnv, args: string[]) {
  const {pos, opt} = parse(args, {flags: ['as']})
  const path = pos[0]
  if (!path || !opt.as) throw new DbError('usage', 'pgi-db import: the following arguments are required: file, --as', 2)
  const name = checkName(opt.as)
  const disk = env.disk!
  requireFree(disk, [name])
  const data = disk.files.get(path)?.data ?? env.runFiles.get(path)?.data
  const base = path.split('/').pop()
  if (!data) throw new DbError('no_file', `no such file ${path}`, 3)
  if (data.length === 0) throw new DbError('invalid_dump', `${path} is empty`, 3)
  const d = readDumpBytes(data)
  if (!d) throw new DbError('invalid_dump', `${base} is not a PostgreSQL custom-format dump: pg_restore: error: input file does not appear to be a valid archive`, 3)
  let series = d.tryton_series
  let from = 'pgi_meta'
  if (!series) {
    const man = disk.files.get(`${path}.json`)
    series = man ? (JSON.parse(man.data.toString()) as {tryton_series?: string}).tryton_series : undefined
    from = 'manifest'
  }
  if (series !== SERIES) {
    throw new DbError('other_series', `${base} comes from Tryton ${series ?? 'unknown'}; this server runs Tryton ${SERIES}: a database moves between series only through an upgrade (trytond-admin --all on a server of the newer series, with its migration steps)`, 3, {dump_series: series ?? null, server_series: SERIES})
  }
  const missing = Object.keys(d.modules).filter((m) => !(m in TEMPLATE_MODULES))
  if (missing.length > 0) throw new DbError('missing_modules', `${base} uses Tryton modules this server does not have: ${missing.join(', ')}`, 3, {modules: missing})
  checkSpace(env, data.length * 10, `importing ${base}`)
  disk.databases.set(name, withMeta(d, {...d.meta, kind: 'import', class: null}))
  return {size: data.length, modules: Object.keys(d.modules).sort(), tryton_series: SERIES, series_from: from, database: name, admin_password_set: true, cron_disabled: 0, seconds: 0.1}
}

function list(env: GuestEnv) {
  const disk = env.disk!
  const last = new Map<string, ReturnType<typeof entryOut>>()
  for (const e of backupsOf(env)) if (!last.has(e.database)) last.set(e.database, e)
  return [...disk.databases.keys()].sort().map((name) => {
    const d = disk.databases.get(name)!
    const m = metaOf(d)
    const b = last.get(name)
    return {name, size: DB_BYTES, tryton: true, modules: Object.keys(d.modules).sort(), kind: m.kind, class: m.class, ...(m.student ? {student: m.student} : {}), company: m.company, last_backup: b ? {id: b.id, date: b.date, kind: b.kind} : null}
  })
}

/**
 * The databases pgi-health and `pgi-db login-check` log into (pgidb.login_targets): those made by
 * `pgi-db create`, or not made by pgi-db at all; copies, class and imported databases are not.
 */
export function loginTargets(disk: DataDisk): string[] {
  return [...disk.databases].filter(([, d]) => {
    const kind = metaOf(d).kind
    return !kind || kind === 'create'
  }).map(([n]) => n).sort()
}

/** `pgi-db login-check [DB…]`: a Tryton login into each (the admin's), as the image's engine does. */
function loginCheck(env: GuestEnv, args: string[]): RunResult {
  const disk = env.disk!
  const names = args.length > 0 ? args : loginTargets(disk)
  const out = names.map((name) => {
    if (!disk.databases.has(name)) return {name, ok: false, error: `database ${name} does not exist`, seconds: 0}
    if (!env.trytondUp) return {name, ok: false, error: 'URLError: <urlopen error [Errno 111] Connection refused>', seconds: 0}
    return {name, ok: true, user: 'ok', seconds: 0.1}
  })
  return {out: JSON.stringify(out) + '\n', err: '', code: out.every((r) => r.ok) ? 0 : 1}
}

/** The engine's sub-commands (but login-check, whose output is its own), by name. */
const COMMANDS: Record<string, (env: GuestEnv, rest: string[]) => unknown> = {
  list: (env) => list(env),
  create,
  copy,
  class: makeClass,
  backup,
  backups: (env, rest) => {
    if (rest[0] !== undefined) checkName(rest[0])
    return backupsOf(env, rest[0])
  },
  restore,
  drop,
  export: exportDb,
  import: importDb,
}

/** Runs `pgi-db ARGS…` in the simulated guest. */
export function simulatedPgiDb(env: GuestEnv, args: string[]): RunResult {
  const failed = (e: DbError): RunResult => ({out: JSON.stringify({error: {code: e.code, message: e.message, ...e.extra}}) + '\n', err: `pgi-db: ${e.message}\n`, code: e.status})
  if (!env.boot.datadisk.ok || !env.disk) return failed(new DbError('failed', 'PostgreSQL is not running (no data disk)', 1))
  const [cmd, ...rest] = args
  if (cmd === 'login-check') return loginCheck(env, rest)
  try {
    const run = cmd === undefined || !Object.hasOwn(COMMANDS, cmd) ? undefined : COMMANDS[cmd]
    if (!run) throw new DbError('usage', `pgi-db: argument cmd: invalid choice: '${cmd ?? ''}'`, 2)
    const out = run(env, rest)
    return {out: JSON.stringify(out) + '\n', err: '', code: 0}
  } catch (e) {
    if (e instanceof DbError) return failed(e)
    return failed(new DbError('failed', `${(e as Error).name}: ${(e as Error).message}`, 1))
  }
}
