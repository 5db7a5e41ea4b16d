/**
 * The simulated guest's `pgi-offsite` push and `--restore` (the image's sbin/pgi-offsite is the
 * real one: its behaviour is what this models). The simulated lab has no network: the Région's
 * restic REST server the VMs reach (`rest:http(s)://HOST:PORT/NAME/`) is modelled as the folder
 * `$PGI_LAB_OFFSITE_DIR/NAME` of the machine the lab runs on, where this runs the real restic
 * (without that variable, pushing and restoring fail as on a VM with no path to a repository).
 *
 * Push (`pgi-offsite`, `--now`, `--force`): the newest nightly set of the data disk staged as
 * `<stage>/nightly/…` and backed up from inside the stage with the tags pgi-nightly, set=STAMP and root=stage under the VM's host
 * name (the repository is created on the first push), as the real push does.
 *
 * Restore (`--restore`, the request as JSON on stdin): the snapshot chosen as the real one
 * chooses it, its nightly set restored with restic into a work folder, each dump's sha256 checked
 * against the manifest, every database "restored" (the simulated dump holds its row counts) and
 * its row counts compared with the manifest before anything takes its name (a mismatch changes
 * nothing: exit 1, error "mismatch"), existing names refused without "replace" (exit 5), then the
 * databases added and a Tryton login made on each (it works when trytond runs). The same JSON
 * out, the same exit statuses.
 */
import {mkdtemp, mkdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {run} from '../exec.js'
import {BACKUPS, DATA, iso, sha256, type GuestEnv, type RunResult} from './simulated-guest-state.js'

/** The variable naming the folder that stands for the Région's REST server in a simulated lab. */
export const OFFSITE_DIR_ENV = 'PGI_LAB_OFFSITE_DIR'

interface Settings {
  repository: string
  password: string
  host: string
}

interface SetManifest {
  databases: {name: string; file: string; sha256: string; size?: number; row_counts?: Record<string, number>}[]
}

const out = (o: unknown, code = 0): RunResult => ({out: JSON.stringify(o) + '\n', err: '', code})
const refuse = (code: string, message: string, status: number, extra: Record<string, unknown> = {}): RunResult => ({
  out: JSON.stringify({error: {code, message, ...extra}}) + '\n',
  err: `pgi-offsite: ${message}\n`,
  code: status,
})

/** The local folder of a VM-side repository URL, or undefined when the lab models no server for it. */
export function offsiteFolder(repository: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const root = env[OFFSITE_DIR_ENV]
  const m = /^rest:https?:\/\/[^/]+\/(.+?)\/?$/.exec(repository)
  if (!root || !m || m[1]!.split('/').some((p) => p === '..' || p === '')) return undefined
  return join(root, m[1]!)
}

/** The tag of a snapshot whose tree starts at the stage (backed up from inside it, as the real push does). */
const ROOT_TAG = 'root=stage'

async function restic(dir: string, s: Settings, args: string[], cache: string, cwd?: string): Promise<{code: number; stdout: string; stderr: string}> {
  const r = await run('restic', ['-r', dir, ...args], {env: {RESTIC_PASSWORD: s.password, RESTIC_CACHE_DIR: cache}, allowFailure: true, timeoutMs: 10 * 60_000, cwd})
  return {code: r.exitCode, stdout: r.stdout, stderr: r.stderr.split(s.password).join('***')}
}

/** `pgi-offsite` commands this module runs (a push or --restore); undefined for the others. */
export function simulatedOffsite(env: GuestEnv, args: string[], input: string | undefined): Promise<RunResult> | undefined {
  if (args[0] === '--restore') return restore(env, input)
  if (args.length === 0 || args.every((a) => a === '--now' || a === '--force')) return push(env)
  return undefined
}

function settingsOf(env: GuestEnv): Settings | undefined {
  const f = env.disk?.files.get(`${DATA}/.pgi/offsite.json`)
  if (!f) return undefined
  try {
    return JSON.parse(f.data.toString()) as Settings
  } catch {
    return undefined
  }
}

async function push(env: GuestEnv): Promise<RunResult> {
  const s = settingsOf(env)
  if (!s || !env.disk) return refuse('not_configured', 'no off-site settings on this server (pgi deploy gives them)', 3)
  const dir = offsiteFolder(s.repository)
  if (!dir) return refuse('offsite_unreachable', `the repository ${s.repository} cannot be reached from this VM`, 1, {error_class: 'unreachable'})
  const sets = [...env.disk.files.keys()].map((k) => new RegExp(`^${BACKUPS}/([^/.][^/]*)/manifest\\.json$`).exec(k)?.[1]).filter((x): x is string => !!x).sort()
  const stamp = sets.at(-1)
  if (!stamp) return refuse('no_backup', 'no nightly backup to push yet', 4)
  const work = await mkdtemp(join(tmpdir(), 'pgi-sim-offsite-'))
  try {
    const stage = join(work, 'stage')
    await mkdir(join(stage, 'nightly'), {recursive: true})
    const prefix = `${BACKUPS}/${stamp}/`
    for (const [k, f] of env.disk.files) if (k.startsWith(prefix) && !k.slice(prefix.length).includes('/')) await writeFile(join(stage, 'nightly', k.slice(prefix.length)), f.data)
    const cache = join(work, 'cache')
    if ((await restic(dir, s, ['cat', 'config'], cache)).code !== 0) {
      await mkdir(dir, {recursive: true})
      const init = await restic(dir, s, ['init'], cache)
      if (init.code !== 0) return refuse('failed', `restic init: ${init.stderr.trim().slice(-300)}`, 1, {error_class: 'failed'})
    }
    const b = await restic(dir, s, ['backup', '--json', '--host', s.host, '--tag', 'pgi-nightly', '--tag', `set=${stamp}`, '--tag', ROOT_TAG, '.'], cache, stage)
    const summary = b.stdout.split('\n').map((l) => { try { return JSON.parse(l) as {message_type?: string; snapshot_id?: string; data_added?: number} } catch { return {} } }).find((j) => j.message_type === 'summary')
    if (b.code !== 0 || !summary) return refuse('failed', `restic backup: ${b.stderr.trim().slice(-300)}`, 1, {error_class: 'failed'})
    return out({pushed: stamp, snapshot: summary.snapshot_id, bytes_sent: summary.data_added, at: iso(env.now())})
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

async function restore(env: GuestEnv, input: string | undefined): Promise<RunResult> {
  let req: {repository?: unknown; password?: unknown; snapshot?: unknown; replace?: unknown; host?: unknown}
  try {
    req = JSON.parse(input ?? '') as typeof req
  } catch {
    return refuse('invalid', 'the request on stdin is not JSON', 3)
  }
  if (typeof req.repository !== 'string' || typeof req.password !== 'string' || typeof req.snapshot !== 'string' || !/^(latest|[0-9a-f]{8,64})$/.test(req.snapshot)) {
    return refuse('invalid', 'the request needs "repository", "password" and a "snapshot" id', 3)
  }
  if (!env.disk || !env.boot.datadisk.ok) return refuse('failed', `${DATA} is not mounted`, 1)
  const s: Settings = {repository: req.repository, password: req.password, host: typeof req.host === 'string' ? req.host : ''}
  const dir = offsiteFolder(s.repository)
  if (!dir) return refuse('offsite_unreachable', `the repository could not be read (unreachable): ${s.repository.replace(/(https?:\/\/)[^@/]+@/, '$1***@')}`, 1, {error_class: 'unreachable'})
  const started = env.now()
  const work = await mkdtemp(join(tmpdir(), 'pgi-sim-restore-'))
  try {
    const cache = join(work, 'cache')
    const list = await restic(dir, s, ['snapshots', '--json', '--no-lock', ...(req.snapshot === 'latest' ? [] : [req.snapshot])], cache)
    if (list.code !== 0) {
      if (req.snapshot !== 'latest' && /no matching id|not a snapshot id/i.test(list.stderr)) return refuse('no_snapshot', `no snapshot ${req.snapshot} in the repository`, 4)
      return refuse('offsite_failed', `the repository could not be read: ${list.stderr.trim().slice(-300)}`, 1, {error_class: 'failed'})
    }
    const snaps = ((JSON.parse(list.stdout || '[]') ?? []) as {id: string; time?: string; hostname?: string; paths?: string[]; tags?: string[]}[]).filter((x) => (x.tags ?? []).includes('pgi-nightly'))
    const snap = snaps.sort((a, b) => ((a.time ?? '') < (b.time ?? '') ? -1 : 1)).at(-1)
    if (!snap) return refuse('no_snapshot', `no snapshot ${req.snapshot === 'latest' ? 'at all' : req.snapshot} in the repository`, 4)
    const stage = (snap.tags ?? []).includes(ROOT_TAG) ? '' : (snap.paths?.[0] ?? '')
    const stamp = (snap.tags ?? []).find((t) => t.startsWith('set='))?.slice(4) ?? null
    const target = join(work, 'files')
    const r = await restic(dir, s, ['restore', snap.id, '--target', target, '--include', `${stage}/nightly`], cache)
    if (r.code !== 0) return refuse('offsite_failed', `restic restore of snapshot ${snap.id.slice(0, 8)} failed: ${r.stderr.trim().slice(-300)}`, 1, {error_class: 'failed'})
    const base = join(target, stage.replace(/^\/+/, ''), 'nightly')
    let m: SetManifest
    try {
      m = JSON.parse(await readFile(join(base, 'manifest.json'), 'utf8')) as SetManifest
      if (!Array.isArray(m.databases)) throw new Error('no databases')
    } catch {
      return refuse('no_manifest', `snapshot ${snap.id.slice(0, 8)} holds no backup manifest (nightly/manifest.json)`, 3)
    }
    const restored: {name: string; rows: Record<string, number>; modules: Record<string, string>}[] = []
    for (const e of m.databases) {
      const data = await readFile(join(base, e.file)).catch(() => undefined)
      if (!data || sha256(data) !== e.sha256) return refuse('checksum', `${e.file} in snapshot ${snap.id.slice(0, 8)} does not match its manifest (sha256): nothing restored`, 3)
      let d: {format?: string; rows?: Record<string, number>; modules?: Record<string, string>}
      try {
        d = JSON.parse(data.toString()) as typeof d
      } catch {
        d = {}
      }
      if (d.format !== 'pgi-simulated-dump' || !d.rows || !d.modules) return refuse('failed', `pg_restore of ${e.name} failed: pg_restore: error: input file does not appear to be a valid archive`, 1)
      restored.push({name: e.name, rows: d.rows, modules: d.modules})
    }
    const taken = restored.map((x) => x.name).filter((n) => env.disk!.databases.has(n))
    if (taken.length && req.replace !== true) return refuse('exists', `database(s) ${taken.join(', ')} already exist on this server`, 5, {databases: taken})
    // every row count compared with the manifest BEFORE any database takes its name
    for (const x of restored) {
      const want = m.databases.find((e) => e.name === x.name)!.row_counts
      if (JSON.stringify(sorted(x.rows)) !== JSON.stringify(sorted(want ?? {}))) {
        return refuse('mismatch', `${x.name} restored from snapshot ${snap.id.slice(0, 8)} is not what was backed up: row counts ${JSON.stringify(sorted(x.rows))} differ from the manifest's ${JSON.stringify(sorted(want ?? {}))}; nothing restored`, 1, {database: x.name})
      }
    }
    for (const x of restored) env.disk.databases.set(x.name, {modules: x.modules, rows: x.rows})
    const databases = restored.map((x) => ({name: x.name, tryton: true, row_counts: x.rows, row_counts_match: true, figures_checked: false, login: env.trytondUp, ...(env.trytondUp ? {} : {login_error: 'trytond does not answer'}), replaced: taken.includes(x.name), seconds: 0.1}))
    const loginOk = databases.every((x) => x.login)
    return out({snapshot: snap.id.slice(0, 8), snapshot_time: snap.time, host: snap.hostname, set: stamp, databases, kept: [], login_ok: loginOk, seconds: Math.round((env.now() - started) / 100) / 10}, loginOk ? 0 : 1)
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}

function sorted(o: Record<string, number>): [string, number][] {
  return Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1))
}
