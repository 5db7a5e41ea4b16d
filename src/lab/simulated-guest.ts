import {randomBytes} from 'node:crypto'

import {simulatedPgiConsole, simulatedTlsInfo} from './simulated-console.js'
import {loginTargets, simulatedPgiDb} from './simulated-pgidb.js'
import {simulatedStageDelta, simulatedStoreProbe, STORE_PROBE_MARK} from './simulated-stage-delta.js'
import {BACKUP_MAX_AGE_S, BACKUPS, compareVersions, DATA, DEFAULT_KEEP, fail, FIRST_BACKUP_GRACE_S, IMAGE_JSON, iso, ok, PROBE_MARK, RESTORE_MARK, RUN_DIR, sha256, stampOf, STATE_FILE, TRYTON_SOFTWARE, UPLOADS, type SimDatabase, type BootState, type GuestEnv, type RunResult} from './simulated-guest-state.js'

/**
 * The guest of the simulated lab backend: a model of the pgi-tryton image's guest contract
 * (docs/image.md), written from what the image's own programs do (images/pgi-tryton/files):
 *
 * - at boot: pgi-datadisk (the data disk holds /srv/pgi: state.json made on first use), pgi-hostkeys
 *   (SSH host keys saved on the data disk, so a new OS disk presents the same ones), pgi-upgrade
 *   (an OS newer than the data disk records the upgrade; an older one is refused and left as is);
 * - pgi-health (its checks, problems and exit status), pgi-configure (JSON on stdin), pgi-db
 *   (every command: src/lab/simulated-pgidb.ts), pgi-console's command line and pgi-tls's record
 *   (src/lab/simulated-console.ts), pgi-backup (dumps + manifest with sha256 and row counts, pruning) and
 *   `pgi-backup --verify` (checksums, then a "restore" of each dump whose row counts must match:
 *   a backup that was not made, or was changed, does not verify);
 * - the programs pgi sends through the agent besides the contract's tools (recognised by their
 *   text, as a real shell would run them): rollout's probe and restore scripts, the SSH host key
 *   listing, the chunked copy of a file out of the guest and into it (src/db/transfer.ts), `rm -rf`,
 *   `systemctl`, `cat`.
 *
 * State lives where the image keeps it: what /srv/pgi holds (databases, backups, state.json, the
 * Tryton admin password hash, the saved host keys) belongs to the data disk's volume and follows
 * it; /etc belongs to the OS disk's volume; /tmp and /run last one boot. A "dump" is the
 * database's content (modules, row counts of the key tables) as JSON, so a restore gives back
 * exactly what was dumped. Anything else exits 127, as a missing program would.
 */

// ---- boot ----------------------------------------------------------------------------------------

/** The boot-time units of the image, in their order: pgi-datadisk, pgi-hostkeys, pgi-upgrade. */
export function bootGuest(env: Omit<GuestEnv, 'boot'>): BootState {
  const disk = env.disk
  if (!disk) {
    const error = 'no data disk: /dev/disk/by-id/virtio-pgi-data is missing (attach a virtio disk with serial=pgi-data)'
    return {datadisk: {ok: false, error}, upgrade: {ok: false, error: `${STATE_FILE} is missing: is the data disk mounted?`}}
  }
  const formatted = disk.state === undefined
  if (!disk.state) {
    disk.state = {format: 1, created_at: iso(env.now()), created_by: {name: 'pgi-tryton', version: env.osVersion}, image: {name: 'pgi-tryton', version: env.osVersion}, history: []}
  }
  if (!disk.hostKeys) {
    disk.hostKeys = [
      {type: 'ECDSA', bits: 256, fingerprint: `SHA256:${randomBytes(32).toString('base64').replace(/=+$/, '')}`},
      {type: 'ED25519', bits: 256, fingerprint: `SHA256:${randomBytes(32).toString('base64').replace(/=+$/, '')}`},
      {type: 'RSA', bits: 3072, fingerprint: `SHA256:${randomBytes(32).toString('base64').replace(/=+$/, '')}`},
    ]
  }
  const boot: BootState = {datadisk: {ok: true, mounted: true, formatted}, upgrade: {ok: true}}
  boot.upgrade = upgrade({...env, boot})
  return boot
}

/** pgi-upgrade's rule (see its docstring); returns what it writes to /run/pgi/upgrade.json. */
function upgrade(env: GuestEnv): BootState['upgrade'] {
  const disk = env.disk!
  const state = disk.state!
  const have = state.image?.version
  const want = env.osVersion
  if (have === want) {
    state.tryton ??= [...TRYTON_SOFTWARE]
    return {ok: true, action: 'none', version: want}
  }
  if (have !== undefined && compareVersions(want, have) < 0) {
    return {ok: false, error: `this OS image (${want}) is older than the data disk (${have}): databases left as they are; deploy version ${have} or newer`}
  }
  const dbs = [...disk.databases.keys()]
  const same = JSON.stringify(state.tryton) === JSON.stringify(TRYTON_SOFTWARE)
  let backupPath: string | null = null
  if (dbs.length > 0 && !same) {
    const b = takeBackup(env, DEFAULT_KEEP)
    if ('err' in b) return {ok: false, error: `/usr/local/sbin/pgi-backup failed (exit 1): ${b.err}`}
    backupPath = b.path
  }
  const done = same ? [] : dbs
  state.history.push({at: iso(env.now()), from: have ?? null, to: want, databases: done, backup: backupPath, tryton_unchanged: same})
  state.image = {name: 'pgi-tryton', version: want}
  state.tryton = [...TRYTON_SOFTWARE]
  disk.upgrades++
  return {ok: true, action: 'upgraded', from: have ?? null, to: want, databases: done, up_to_date: same ? dbs : []}
}

// ---- files ---------------------------------------------------------------------------------------

function isRunPath(path: string): boolean {
  return path.startsWith('/tmp/') || path.startsWith('/run/')
}

/** Reads a file of the guest (undefined: no such file). */
export function readGuestFile(env: GuestEnv, path: string): Buffer | undefined {
  if (path === STATE_FILE) return env.disk?.state ? Buffer.from(JSON.stringify(env.disk.state, null, 2) + '\n') : undefined
  if (path === `${RUN_DIR}/upgrade.json`) return Buffer.from(JSON.stringify(env.boot.upgrade) + '\n')
  if (path === `${RUN_DIR}/datadisk.json`) return Buffer.from(JSON.stringify(env.boot.datadisk) + '\n')
  // pgi-tls's record (src/lab/simulated-console.ts)
  if (path === `${RUN_DIR}/tls.json`) return simulatedTlsInfo(env)
  if (path === DATA || path.startsWith(`${DATA}/`)) return env.boot.datadisk.ok ? env.disk?.files.get(path)?.data : undefined
  if (isRunPath(path)) return env.runFiles.get(path)?.data
  const f = env.osFiles.get(path)
  if (f) return f.data
  if (path === IMAGE_JSON) return Buffer.from(JSON.stringify({name: 'pgi-tryton', version: env.osVersion, ports: {ssh: 22, web: 80, jsonrpc: 8000, postgresql: 5432}}) + '\n')
  if (path === '/etc/hostname') return Buffer.from(`${env.hostname}\n`)
  return undefined
}

/** Writes a file of the guest; false when its folder cannot exist (no data disk mounted). */
export function writeGuestFile(env: GuestEnv, path: string, data: Buffer): boolean {
  const f = {data, mtime: env.now()}
  if (path === DATA || path.startsWith(`${DATA}/`)) {
    if (!env.disk || !env.boot.datadisk.ok) return false
    env.disk.files.set(path, f)
  } else if (isRunPath(path)) env.runFiles.set(path, f)
  else env.osFiles.set(path, f)
  return true
}

function listFiles(env: GuestEnv, dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`
  const map = dir.startsWith(DATA) ? env.disk?.files : isRunPath(prefix) ? env.runFiles : env.osFiles
  return [...(map?.keys() ?? [])].filter((k) => k.startsWith(prefix)).sort()
}

function removeTree(env: GuestEnv, dir: string): void {
  for (const k of listFiles(env, dir)) (dir.startsWith(DATA) ? env.disk?.files : isRunPath(k) ? env.runFiles : env.osFiles)?.delete(k)
}

// ---- programs ------------------------------------------------------------------------------------

/** Runs one command of the guest (argv as the agent passes it, stdin as text). */
export function runGuestCommand(env: GuestEnv, command: string[], input: string | undefined): RunResult {
  const prog = (command[0] ?? '').split('/').pop() ?? ''
  const args = command.slice(1)
  switch (prog) {
    case 'pgi-health':
      return health(env)
    case 'pgi-configure':
      return configure(env, input)
    case 'pgi-backup':
      return backupCommand(env, args)
    case 'pgi-offsite':
      return offsiteCommand(env, args, input)
    case 'pgi-db':
      return simulatedPgiDb(env, args)
    case 'pgi-console':
      return simulatedPgiConsole(env, args)
    case 'pgi-stage-delta':
      return env.stageDelta ? simulatedStageDelta(env, env.stageDelta, args) : fail(`${prog}: command not found (simulated guest)`, 127)
    case 'python3':
      if (args[0] === '-c' && args[1]?.startsWith(STORE_PROBE_MARK) && env.stageDelta) return simulatedStoreProbe(env.stageDelta, args[2] ?? '')
      if (args[0] === '-c' && args[1]?.startsWith(PROBE_MARK)) return probe(env, input)
      if (args[0] === '-c' && args[1]?.startsWith(RESTORE_MARK)) return restore(env, input)
      return fail(`python3: the simulated guest runs only pgi's own scripts`, 127)
    case 'sh':
      return shell(env, args)
    case 'systemctl':
      return systemctl(env, args)
    case 'cat': {
      const f = readGuestFile(env, args[0] ?? '')
      return f === undefined ? fail(`cat: ${args[0]}: No such file or directory`) : ok(f.toString())
    }
    case 'rm': {
      const target = args.filter((a) => !a.startsWith('-')).at(-1) ?? ''
      if (!target.startsWith('/tmp/') && !target.startsWith(`${UPLOADS}/.upload.`)) return fail(`rm: the simulated guest only removes files under /tmp and uploads' folders`)
      removeTree(env, target)
      env.runFiles.delete(target)
      return ok('')
    }
    case 'true':
      return ok('')
    case 'health-record':
      // the simulated backend computes /run/pgi/health.json when it is read: nothing to write
      return ok('')
    case 'hostname':
      return ok(`${env.hostname}\n`)
    default:
      return fail(`${prog}: command not found (simulated guest)`, 127)
  }
}

function health(env: GuestEnv): RunResult {
  const problems: string[] = []
  const disk = env.disk
  const checks: Record<string, Record<string, unknown>> = {}
  const mounted = env.boot.datadisk.ok
  if (mounted && disk) {
    const used = 180 * 2 ** 20 + disk.databases.size * 40 * 2 ** 20 + [...disk.files.values()].reduce((n, f) => n + f.data.length, 0)
    const pct = env.diskSizeBytes > 0 ? Math.round((1000 * used) / env.diskSizeBytes) / 10 : null
    checks.data_disk = {ok: pct === null || pct < 90, mounted: true, used_bytes: used, size_bytes: env.diskSizeBytes, used_pct: pct}
    if (pct !== null && pct >= 90) problems.push(`data_disk: ${pct}% used`)
  } else {
    checks.data_disk = {ok: false, mounted: false, used_bytes: null, size_bytes: null, used_pct: null, ...(env.boot.datadisk.error ? {detail: env.boot.datadisk.error} : {})}
    problems.push(`data_disk: ${DATA} is not mounted${env.boot.datadisk.error ? ` (${env.boot.datadisk.error})` : ''}`)
  }
  // PostgreSQL's cluster is on the data disk: no disk, no PostgreSQL
  if (mounted) checks.postgresql = {ok: true, detail: 'PostgreSQL 15.14 accepting connections'}
  else {
    checks.postgresql = {ok: false, detail: 'not accepting connections'}
    problems.push('postgresql: not accepting connections (pg_isready exit 2)')
  }
  const dbs = mounted && disk ? [...disk.databases].sort(([a], [b]) => (a < b ? -1 : 1)).map(([name, d]) => ({name, modules: {...d.modules}})) : []
  if (env.trytondUp && mounted) checks.trytond = {ok: true, version: '6.0'}
  else {
    checks.trytond = {ok: false, detail: '<urlopen error [Errno 111] Connection refused>'}
    problems.push('trytond: <urlopen error [Errno 111] Connection refused>')
  }
  // pgi-health logs into the declared databases (pgidb.login_targets: made by pgi-db create, or not by pgi-db)
  if (checks.trytond.ok && dbs.length > 0) {
    const targets = loginTargets(disk!)
    checks.tryton_login = {ok: true, databases: targets.map((name) => ({name, ok: true, seconds: 0.1}))}
  }
  // nginx serves the web client's files itself, whether trytond answers or not
  checks.web = {ok: true}
  checks.backup = backupCheck(env, dbs.length, problems)
  if (env.boot.upgrade.error) problems.push(`upgrade: ${env.boot.upgrade.error}`)
  const healthy = problems.length === 0 && Object.values(checks).every((c) => c.ok)
  // pgi-offsite's status as pgi-health reports it (never among the problems): the simulated guest never pushes
  const offsite = mounted && readGuestFile(env, `${DATA}/.pgi/offsite.json`) ? {configured: true, state: 'pending', last_success_at: null, age_s: null} : {configured: false}
  const out = {healthy, image: {name: 'pgi-tryton', version: env.osVersion}, checks, databases: dbs, problems, offsite, at: iso(env.now())}
  return {out: JSON.stringify(out) + '\n', err: '', code: healthy ? 0 : 1}
}

function manifestPaths(env: GuestEnv): string[] {
  if (!env.disk) return []
  return [...env.disk.files.keys()].filter((k) => /^\/srv\/pgi\/backups\/[^/.][^/]*\/manifest\.json$/.test(k)).sort()
}

function backupCheck(env: GuestEnv, dbCount: number, problems: string[]): Record<string, unknown> {
  const stamps = manifestPaths(env)
  const now = env.now()
  if (stamps.length > 0) {
    const last = stamps.at(-1)!
    const f = env.disk!.files.get(last)!
    let m: {finished_at?: string; started_at?: string} = {}
    try {
      m = JSON.parse(f.data.toString()) as typeof m
    } catch {
      // a manifest that is not JSON: no date
    }
    const age = Math.floor((now - f.mtime) / 1000)
    const ok = age <= BACKUP_MAX_AGE_S
    if (!ok) problems.push(`backup: last backup is ${Math.floor(age / 3600)} h old`)
    return {ok, last: m.finished_at ?? m.started_at ?? null, age_s: age, path: last.slice(0, -'/manifest.json'.length)}
  }
  if (dbCount === 0) return {ok: true, last: null, age_s: null, detail: 'no database to back up yet'}
  const created = env.disk?.state?.created_at
  const ageDisk = created ? (now - Date.parse(created)) / 1000 : undefined
  const ok = ageDisk !== undefined && ageDisk < FIRST_BACKUP_GRACE_S
  if (!ok) problems.push('backup: no backup of the databases yet')
  return {ok, last: null, age_s: null, detail: ok ? 'first nightly backup pending' : 'no backup yet'}
}

/**
 * pgi-offsite: --configure (its checks, the root-only file on the data disk: what deploy sends)
 * and --status; pushing and --restore run restic on the lab's machine (src/lab/simulated-offsite.ts,
 * through the agent's exec, which hands them over before this is reached).
 */
function offsiteCommand(env: GuestEnv, args: string[], input: string | undefined): RunResult {
  const file = `${DATA}/.pgi/offsite.json`
  if (args[0] === '--status') return ok(JSON.stringify({configured: readGuestFile(env, file) !== undefined, state: null}) + '\n')
  if (args[0] !== '--configure') return fail(`pgi-offsite: ${args.join(' ') || 'a push'} needs restic and a repository, which the simulated guest has not`, 1)
  const refuse = (message: string) => fail(`pgi-offsite: ${message}`, 3, JSON.stringify({error: {code: 'invalid', message}}) + '\n')
  let c: Record<string, unknown>
  try {
    c = JSON.parse(input ?? '') as Record<string, unknown>
  } catch {
    return refuse('the settings on stdin are not JSON')
  }
  if (typeof c !== 'object' || c === null || Array.isArray(c)) return refuse('the settings on stdin are not a JSON object')
  const unknown = Object.keys(c).filter((k) => !['repository', 'password', 'host', 'limit_upload_kib', 'window'].includes(k))
  if (unknown.length) return refuse(`unknown setting(s): ${unknown.sort().join(', ')}`)
  for (const k of ['repository', 'password', 'host']) if (typeof c[k] !== 'string' || c[k] === '') return refuse(`"${k}" is missing`)
  if (!/^(rest:https?:\/\/|sftp:|s3:|\/)/.test(c.repository as string)) return refuse('"repository" must be a restic repository')
  if (!writeGuestFile(env, file, Buffer.from(JSON.stringify(c)))) return fail(`pgi-offsite: ${DATA} is not mounted`, 1)
  return ok(JSON.stringify({configured: true, repository: (c.repository as string).replace(/(https?:\/\/)[^@/]+@/, '$1***@')}) + '\n')
}

function configure(env: GuestEnv, input: string | undefined): RunResult {
  let cfg: Record<string, {login?: unknown; password?: unknown}>
  try {
    cfg = (input && input.trim() ? JSON.parse(input) : {}) as typeof cfg
  } catch (e) {
    return fail(`pgi-configure: stdin is not JSON: ${(e as Error).message}`)
  }
  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) return fail('pgi-configure: stdin must be a JSON object')
  const unknown = Object.keys(cfg).filter((k) => !['sql_admin', 'tryton_admin', 'ami'].includes(k))
  if (unknown.length > 0) return fail(`pgi-configure: unknown keys: ${unknown.sort().join(', ')}`)
  if (!env.boot.datadisk.ok || !env.disk) return fail('pgi-configure: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: No such file or directory')
  const disk = env.disk
  // Reported: what this run changed (the model compares with what is set; a setting already so is
  // not listed, which makes a re-run's answer [] and tells callers nothing was pending).
  const changed: string[] = []
  const fp = (login: unknown, password: unknown) => sha256(JSON.stringify([login, password]))
  for (const key of ['sql_admin', 'tryton_admin', 'ami'] as const) {
    const v = cfg[key]
    if (v === undefined) continue
    if (typeof v !== 'object' || v === null) return fail(`pgi-configure: "${key}" must be an object`, 1, JSON.stringify({changed, error: `"${key}" must be an object`}) + '\n')
    const login = v.login ?? {sql_admin: 'pgi_admin', tryton_admin: 'admin', ami: 'ami'}[key]
    if (typeof login !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(login)) return fail(`pgi-configure: ${key}.login ${JSON.stringify(login)} is not valid`, 1, JSON.stringify({changed, error: 'login'}) + '\n')
    if (v.password !== undefined && (typeof v.password !== 'string' || v.password === '')) return fail(`pgi-configure: "password" must be a non-empty string`, 1, JSON.stringify({changed, error: 'password'}) + '\n')
    if (key === 'sql_admin') {
      const before = disk.sqlRoles.get(login)
      const next = v.password === undefined ? (before ?? fp(login, undefined)) : fp(login, v.password)
      if (before !== next) changed.push(key)
      disk.sqlRoles.set(login, next)
    } else if (key === 'tryton_admin') {
      if (login !== 'admin') return fail('pgi-configure: tryton_admin.login must be "admin" (the Tryton administrator of every database)', 1, JSON.stringify({changed, error: 'login'}) + '\n')
      if (v.password === undefined) continue
      const next = sha256(String(v.password))
      if (disk.trytonAdmin !== next) changed.push(key)
      disk.trytonAdmin = next
    } else {
      if (['root', 'postgres', 'tryton'].includes(login)) return fail(`pgi-configure: ami.login '${login}' is not allowed`, 1, JSON.stringify({changed, error: 'login'}) + '\n')
      const before = env.accounts.get(login)
      const next = v.password === undefined ? (before ?? '!') : fp(login, v.password)
      if (before !== next) changed.push(key)
      env.accounts.set(login, next)
    }
  }
  return ok(JSON.stringify({changed}) + '\n')
}

interface Manifest {
  format: 1
  started_at: string
  finished_at: string
  image: {name: string; version: string}
  roles: {file: string; sha256: string}
  databases: {name: string; file: string; sha256: string; size: number; row_counts: Record<string, number>}[]
  filestore: {path: string; bytes: number}
}

/** pgi-backup (no --verify): every database dumped, roles, manifest; older backups pruned. */
function takeBackup(env: GuestEnv, keep: number): {path: string} | {err: string} {
  const disk = env.disk
  if (!disk || !env.boot.datadisk.ok) return {err: `${DATA} is not mounted: no backup taken`}
  const started = env.now()
  // one backup a second at most, as the real stamp allows: a second one within the same second
  // (possible only with the lab's scaled-down durations) takes the next free stamp
  let t = started
  while (disk.files.has(`${BACKUPS}/${stampOf(t)}/manifest.json`)) t += 1000
  const dir = `${BACKUPS}/${stampOf(t)}`
  const roles = Buffer.from(['--', '-- PostgreSQL database cluster dump (roles)', '--', 'CREATE ROLE tryton;', ...[...disk.sqlRoles.keys()].map((r) => `CREATE ROLE ${r};`), ''].join('\n'))
  const entries: Manifest['databases'] = []
  const put = (path: string, data: Buffer) => disk.files.set(path, {data, mtime: env.now()})
  for (const [name, d] of [...disk.databases].sort(([a], [b]) => (a < b ? -1 : 1))) {
    // the "dump": the database's content; a nonce stands for pg_dump's own timestamps
    const dump = Buffer.from(JSON.stringify({format: 'pgi-simulated-dump', database: name, modules: d.modules, rows: d.rows, nonce: randomBytes(8).toString('hex')}))
    put(`${dir}/${name}.dump`, dump)
    entries.push({name, file: `${name}.dump`, sha256: sha256(dump), size: dump.length, row_counts: {...d.rows}})
  }
  put(`${dir}/roles.sql`, roles)
  const manifest: Manifest = {
    format: 1,
    started_at: iso(started),
    finished_at: iso(env.now()),
    image: {name: 'pgi-tryton', version: env.osVersion},
    roles: {file: 'roles.sql', sha256: sha256(roles)},
    databases: entries,
    filestore: {path: '/srv/pgi/tryton/filestore', bytes: 0},
  }
  put(`${dir}/manifest.json`, Buffer.from(JSON.stringify(manifest, null, 2) + '\n'))
  // prune: keep the newest `keep` backups
  const all = manifestPaths(env)
  for (const m of keep > 0 ? all.slice(0, Math.max(0, all.length - keep)) : []) removeTree(env, m.slice(0, -'/manifest.json'.length))
  return {path: `${dir}/manifest.json`}
}

function readManifest(env: GuestEnv, mpath: string): Manifest | undefined {
  const f = readGuestFile(env, mpath)
  if (!f) return undefined
  try {
    const m = JSON.parse(f.toString()) as Manifest
    return m && typeof m === 'object' && Array.isArray(m.databases) ? m : undefined
  } catch {
    return undefined
  }
}

/** The content of a dump file (undefined when it is not one). */
function readDump(data: Buffer): SimDatabase | undefined {
  try {
    const d = JSON.parse(data.toString()) as {format?: string; modules?: Record<string, string>; rows?: Record<string, number>}
    return d.format === 'pgi-simulated-dump' && d.rows && d.modules ? {modules: d.modules, rows: d.rows} : undefined
  } catch {
    return undefined
  }
}

function verify(env: GuestEnv, given: string | undefined): {manifest: string; verified: {name: string; ok: true; row_counts: Record<string, number>}[]} | {err: string} {
  let path = given
  if (!path) {
    const all = manifestPaths(env)
    if (all.length === 0) return {err: `no backup to verify in ${BACKUPS}`}
    path = all.at(-1)!
  }
  const mpath = path.endsWith('manifest.json') ? path : `${path.replace(/\/$/, '')}/manifest.json`
  const base = mpath.slice(0, mpath.lastIndexOf('/'))
  const m = readManifest(env, mpath)
  if (!m) return {err: `${mpath} is missing or not JSON`}
  const results: {name: string; ok: true; row_counts: Record<string, number>}[] = []
  for (const e of m.databases) {
    const f = readGuestFile(env, `${base}/${e.file}`)
    if (!f) return {err: `[Errno 2] No such file or directory: '${base}/${e.file}'`}
    if (sha256(f) !== e.sha256) return {err: `${base}/${e.file}: checksum mismatch`}
    const restored = readDump(f)
    if (!restored) return {err: `pg_restore of ${e.name} failed: pg_restore: error: input file does not appear to be a valid archive`}
    if (JSON.stringify(sortKeys(restored.rows)) !== JSON.stringify(sortKeys(e.row_counts))) {
      return {err: `${e.name}: row counts differ after restore: ${JSON.stringify(restored.rows)} != ${JSON.stringify(e.row_counts)}`}
    }
    results.push({name: e.name, ok: true, row_counts: e.row_counts})
  }
  return {manifest: mpath, verified: results}
}

function sortKeys(o: Record<string, number>): [string, number][] {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1))
}

function backupCommand(env: GuestEnv, args: string[]): RunResult {
  let verifyArg: string | undefined | null = null
  let keep = DEFAULT_KEEP
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!
    if (a === '--verify') {
      const next = args[i + 1]
      verifyArg = next !== undefined && !next.startsWith('--') ? (i++, next) : undefined
    } else if (a === '--keep') {
      keep = Number(args[++i])
      if (!Number.isInteger(keep)) return fail(`pgi-backup: error: argument --keep: invalid int value: '${args[i]}'`, 2)
    } else return fail(`pgi-backup: error: unrecognized arguments: ${a}`, 2)
  }
  if (verifyArg !== null) {
    const r = verify(env, verifyArg)
    if ('err' in r) return fail(`pgi-backup: ${r.err}`)
    return ok(JSON.stringify(r) + '\n')
  }
  const r = takeBackup(env, keep)
  if ('err' in r) return fail(`pgi-backup: ${r.err}`)
  return ok(`${r.path}\n`)
}

function probe(env: GuestEnv, input: string | undefined): RunResult {
  let req: {manifest?: string; login?: {login: string; password: string}}
  try {
    req = JSON.parse(input || '{}') as typeof req
  } catch (e) {
    return fail(`json.decoder.JSONDecodeError: ${(e as Error).message}`)
  }
  const m = req.manifest ? readManifest(env, req.manifest) : undefined
  const disk = env.disk
  const databases = (m?.databases ?? []).map((e) => {
    const d: Record<string, unknown> = {name: e.name}
    const cur = env.boot.datadisk.ok ? disk?.databases.get(e.name) : undefined
    if (!cur) {
      d.opens = false
      d.error = env.boot.datadisk.ok ? `connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: FATAL:  database "${e.name}" does not exist` : 'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: No such file or directory'
      return d
    }
    d.row_counts = {...cur.rows}
    d.opens = true
    if (req.login) {
      if (!env.trytondUp) {
        d.login = false
        d.login_error = '<urlopen error [Errno 111] Connection refused>'
      } else if (req.login.login !== 'admin' || !disk?.trytonAdmin || sha256(req.login.password) !== disk.trytonAdmin) {
        d.login = false
        d.login_error = "{'message': 'Wrong login or password', 'code': 'LoginException'}"
      } else d.login = true
    }
    return d
  })
  return ok(JSON.stringify({databases, state: disk?.state ?? {}, upgrade: env.boot.upgrade}) + '\n')
}

function restore(env: GuestEnv, input: string | undefined): RunResult {
  let req: {manifest: string; version: string}
  try {
    req = JSON.parse(input || '') as typeof req
  } catch (e) {
    return fail(`json.decoder.JSONDecodeError: ${(e as Error).message}`)
  }
  const mpath = req.manifest
  const base = mpath.slice(0, mpath.lastIndexOf('/'))
  const m = readManifest(env, mpath)
  if (!m) return fail(`${mpath} is missing or not JSON`)
  if (!env.disk || !env.boot.datadisk.ok) return fail('systemctl start postgresql@15-main.service failed (exit 1): Job for postgresql@15-main.service failed')
  const dumps: [string, SimDatabase][] = []
  for (const e of m.databases) {
    const f = readGuestFile(env, `${base}/${e.file}`)
    if (!f || sha256(f) !== e.sha256) return fail(`${e.file}: checksum mismatch, nothing restored`)
    const d = readDump(f)
    if (!d) return fail(`pg_restore of ${e.name} failed: pg_restore: error: input file does not appear to be a valid archive`)
    dumps.push([e.name, d])
  }
  for (const [name, d] of dumps) env.disk.databases.set(name, structuredClone(d))
  const state = env.disk.state!
  state.history.push({at: iso(env.now()), restored_from: mpath, to: req.version, databases: dumps.map(([n]) => n)})
  state.image = {name: state.image?.name ?? 'pgi-tryton', version: req.version}
  env.disk.restores++
  // `systemctl restart pgi-upgrade.service`, then trytond
  env.boot.upgrade = upgrade(env)
  return ok(JSON.stringify({restored: dumps.map(([n]) => n), version: req.version}) + '\n')
}

function systemctl(env: GuestEnv, args: string[]): RunResult {
  const verb = args.find((a) => !a.startsWith('-'))
  if (verb === 'is-system-running') {
    const degraded = !env.boot.datadisk.ok || !env.boot.upgrade.ok || !env.trytondUp
    return degraded ? {out: 'degraded\n', err: '', code: 1} : ok('running\n')
  }
  if (verb === 'start' || verb === 'stop' || verb === 'restart') return ok('')
  return fail(`systemctl: the simulated guest knows is-system-running, start, stop and restart`, 1)
}

/**
 * `/bin/sh -c SCRIPT sh ARGS…`: the scripts pgi sends are recognised by what they do (a real
 * shell would run any script; the model knows pgi's).
 */
function shell(env: GuestEnv, args: string[]): RunResult {
  if (args[0] !== '-c' || args[1] === undefined) return fail('sh: the simulated guest runs scripts given with -c', 127)
  const script = args[1]
  const params = args.slice(3)
  if (/ssh-keygen -l -E sha256 -f/.test(script)) {
    // pgi-hostkeys put the data disk's saved keys in /etc/ssh
    const keys = env.boot.datadisk.ok ? (env.disk?.hostKeys ?? []) : []
    if (keys.length === 0) return fail('ssh-keygen: /etc/ssh/ssh_host_*_key.pub: No such file or directory', 255)
    return ok(keys.map((k) => `${k.bits} ${k.fingerprint} root@${env.hostname} (${k.type})`).join('\n') + '\n')
  }
  if (/base64 -w0 -- "\$1" \| split -b "\$2"/.test(script)) {
    // copy out of the guest: the file's base64 cut into chunks in a private temp folder
    const [path, chunkArg] = params
    const f = readGuestFile(env, path ?? '')
    if (!f) return fail(`base64: ${path}: No such file or directory`)
    const size = Number(chunkArg)
    if (!Number.isInteger(size) || size <= 0) return fail(`split: invalid number of bytes: '${chunkArg}'`)
    const dir = `/tmp/pgi-xfer.${randomBytes(3).toString('hex')}`
    const text = f.toString('base64')
    const names: string[] = []
    for (let i = 0, n = 0; i < text.length || n === 0; i += size, n++) {
      const name = `c.${String(n).padStart(5, '0')}`
      env.runFiles.set(`${dir}/${name}`, {data: Buffer.from(text.slice(i, i + size)), mtime: env.now()})
      names.push(name)
      if (text.length === 0) break
    }
    return ok(`${dir}\n${names.join('\n')}\n`)
  }
  if (script.includes('mktemp -d "$1/.upload.XXXXXX"')) {
    // upload into the guest (src/db/transfer.ts MKDIR_SCRIPT): a private folder on the data disk
    if (!env.disk || !env.boot.datadisk.ok) return fail(`mkdir: cannot create directory '${params[0]}': No such file or directory`)
    return ok(`${params[0]}/.upload.${randomBytes(3).toString('hex')}\n`)
  }
  if (script.includes('cat c.* | base64 -d > "$2.partial"')) {
    // (JOIN_SCRIPT) the pieces joined and decoded into the file, its sha256 printed
    const [dir, target] = params
    const pieces = listFiles(env, dir ?? '').filter((k) => /\/c\.[^/]*$/.test(k))
    const text = pieces.map((k) => readGuestFile(env, k)!.toString()).join('')
    const data = Buffer.from(text, 'base64')
    for (const k of pieces) env.disk?.files.delete(k)
    if (!writeGuestFile(env, target ?? '', data)) return fail(`sh: cannot create ${target}: No such file or directory`)
    return ok(`${sha256(data)}  ${target}\n`)
  }
  if (script.includes('while [ ! -b "$1" ]')) {
    // the hot-plugged staging disk's by-id link (src/fleet/stage-delta.ts): there at once
    return ok('')
  }
  return fail('sh: the simulated guest does not know this script', 127)
}
