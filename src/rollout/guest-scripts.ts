/**
 * What rollout runs in the guest through the agent, beyond the guest contract's own tools
 * (pgi-health, pgi-backup [--verify]). Two small Python programs over the image's own library
 * (/usr/local/lib/pgi/pgilib.py) and pgi-backup's own list of key tables, so "row counts" mean the
 * same thing as in the backup manifest. They are passed as `python3 -c SCRIPT` (no file is left
 * in the guest) and read their request as JSON on stdin — the Tryton password travels there,
 * never on a command line. Each prints one JSON object on stdout.
 */
import {sleep} from '../sleep.js'
import {ErrorCode, UserError} from '../errors.js'
import {guestWhere, type GuestTarget} from '../fleet/guest.js'
import {asciiJson} from '../proxmox/client.js'

export const PYTHON = '/usr/bin/python3'
/** First line of each script: also how the simulated guest of the tests recognises them. */
export const PROBE_MARK = '# pgi-rollout-probe'
export const RESTORE_MARK = '# pgi-rollout-restore'
export const MAJOR_MARK = '# pgi-rollout-major'

/**
 * The gate's application checks, for every database of a backup manifest: it opens (the key-table
 * row counts are read), the counts themselves, and a Tryton login (JSON-RPC common.db.login on
 * 127.0.0.1:8000) when credentials are given. Also returns the data disk's state (which image
 * version the databases were last upgraded for) and the boot-time upgrade's result.
 */
export const PROBE_SCRIPT = `${PROBE_MARK}
import importlib.machinery, importlib.util, json, sys, urllib.request
sys.dont_write_bytecode = True  # loading pgi-backup as a module must leave no __pycache__ in /usr/local/sbin
sys.path.insert(0, '/usr/local/lib/pgi')
from pgilib import *
req = json.loads(sys.stdin.read() or '{}')
loader = importlib.machinery.SourceFileLoader('pgi_backup', '/usr/local/sbin/pgi-backup')
pb = importlib.util.module_from_spec(importlib.util.spec_from_loader('pgi_backup', loader))
loader.exec_module(pb)
m = read_json(req.get('manifest') or '', {}) or {}
out = {'databases': [], 'state': read_json(STATE_FILE, {}) or {}, 'upgrade': read_json(RUN_DIR + '/upgrade.json', {}) or {}}
for e in m.get('databases', []):
    d = {'name': e['name']}
    try:
        d['row_counts'] = pb.row_counts(e['name'])
        d['opens'] = True
    except Exception as ex:
        d['opens'] = False
        d['error'] = str(ex)[-300:]
    if d['opens'] and e.get('figures'):
        # the business figures the backup recorded (pgifigures.py): counts, trial balance, posted invoices
        try:
            import pgifigures
            d['figure_differences'] = pgifigures.differences(e['figures'], pgifigures.figures(connect(e['name'])))
        except ImportError:
            pass  # an image without pgifigures (a rollback to an older version): row counts only
        except Exception as ex:
            d['figure_differences'] = ['the figures could not be read: %s' % str(ex)[-300:]]
        finally:
            close(e['name'])
    lg = req.get('login')
    if lg and d['opens'] and is_tryton_db(e['name']):
        try:
            body = json.dumps({'id': 1, 'method': 'common.db.login', 'params': [lg['login'], {'password': lg['password']}, 'fr']}).encode()
            r = urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:8000/%s/' % e['name'], data=body, headers={'Content-Type': 'application/json'}), timeout=60)
            res = json.loads(r.read())
            d['login'] = bool(res.get('result')) and not res.get('error')
            if not d['login']:
                d['login_error'] = str(res.get('error'))[:300]
        except Exception as ex:
            d['login'] = False
            d['login_error'] = str(ex)[-300:]
    out['databases'].append(d)
print(json.dumps(out))
`

/**
 * Restores every database of a (verified) backup manifest and records on the data disk that they
 * are at \`version\` again, then re-runs the boot-time upgrade check and restarts trytond. Used by
 * a rollback when the new OS had already upgraded the databases (the old OS refuses a data disk
 * newer than itself). Checks each dump's sha256 before dropping anything.
 */
export const RESTORE_SCRIPT = `${RESTORE_MARK}
import hashlib, json, os, subprocess, sys
sys.path.insert(0, '/usr/local/lib/pgi')
from pgilib import *
req = json.loads(sys.stdin.read())
mpath = req['manifest']
base = os.path.dirname(mpath)
m = read_json(mpath)
if not m:
    raise SystemExit('%s is missing or not JSON' % mpath)
# a rollback runs this right after the old OS booted: PostgreSQL (and the data disk) may still be
# on their way up; this waits for them (a no-op when PostgreSQL runs)
run(['systemctl', 'start', 'postgresql@15-main.service'])
def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for c in iter(lambda: f.read(1 << 20), b''):
            h.update(c)
    return h.hexdigest()
for e in m['databases']:
    if sha(os.path.join(base, e['file'])) != e['sha256']:
        raise SystemExit('%s: checksum mismatch, nothing restored' % e['file'])
run(['systemctl', 'stop', 'tryton-server.service'], check=False)
restored = []
for e in m['databases']:
    name = e['name']
    close(name)
    psql('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()', params=(name,))
    psql('DROP DATABASE IF EXISTS %s' % quote_ident(name))
    psql("CREATE DATABASE %s OWNER tryton ENCODING 'UTF8' TEMPLATE template0" % quote_ident(name))
    with open(os.path.join(base, e['file']), 'rb') as fh:
        r = subprocess.run(['pg_restore', '-h', '/var/run/postgresql', '-U', 'postgres', '-d', name], stdin=fh, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit('pg_restore of %s failed: %s' % (name, r.stderr.decode(errors='replace')[-500:]))
    restored.append(name)
state = read_json(STATE_FILE, {}) or {}
state.setdefault('history', []).append({'at': iso(now_utc()), 'restored_from': mpath, 'to': req['version'], 'databases': restored})
state['image'] = {'name': (state.get('image') or {}).get('name'), 'version': req['version']}
write_json(STATE_FILE, state, 0o600)
run(['systemctl', 'restart', 'pgi-upgrade.service'], check=False)
run(['systemctl', 'restart', 'tryton-server.service'], check=False)
print(json.dumps({'restored': restored, 'version': req['version']}))
`

/**
 * The host's side of the major-version upgrade (images/pgi-tryton/files/usr/local/lib/pgi/pgimajor.py
 * is the guest's). One script, its action in the JSON request on stdin:
 *
 * - info: the running PostgreSQL major version, the data disk's size and free space, the size of
 *   each cluster on it and of the latest backup's dumps, the data disk's record and the migration's
 *   status file (what `pgi rollout plan` and the gate's progress read). Reads only.
 * - quiesce / wake: stops (starts again) trytond and the teachers' console, so that nothing is
 *   written between the pre-swap backup and the shutdown: the databases are carried across from
 *   that backup, a write after it would be lost.
 * - request: checks the space the migration needs, then writes the request pgimajor.py reads at
 *   the new OS's first boot (the verified manifest, its sha256, the PostgreSQL versions).
 * - reopen: on the old OS after a rollback: the old cluster writable again (pgi-datadisk of the
 *   new OS made it read-only), the data disk's record back to what it was before the migration,
 *   the request withdrawn, PostgreSQL, pgi-upgrade and trytond started again.
 * - commit: after the gate: the migration recorded as committed and its request withdrawn.
 * - prune: removes the old cluster (the disaster copy) of a committed major upgrade.
 */
export const MAJOR_SCRIPT = `${MAJOR_MARK}
import json, os, shutil, subprocess, sys
sys.path.insert(0, '/usr/local/lib/pgi')
from pgilib import *
req = json.loads(sys.stdin.read() or '{}')
action = req.get('action')
REQUEST = STATE_DIR + '/major-upgrade.json'
STATUS = STATE_DIR + '/major-migration.json'
def du(path):
    total = 0
    for d, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(d, n)).st_blocks * 512
            except OSError:
                pass
    return total
def clusters():
    out = {}
    base = DATA + '/postgresql'
    for v in (os.listdir(base) if os.path.isdir(base) else []):
        if v.isdigit() and os.path.exists('%s/%s/main/PG_VERSION' % (base, v)):
            p = '%s/%s/main' % (base, v)
            out[v] = {'path': p, 'bytes': du(p), 'mode': oct(os.stat(p).st_mode & 0o777)}
    return out
def latest_backup():
    try:
        dirs = sorted(d for d in os.listdir(BACKUPS) if not d.startswith('.') and os.path.exists(os.path.join(BACKUPS, d, 'manifest.json')))
    except OSError:
        return None
    if not dirs:
        return None
    m = read_json(os.path.join(BACKUPS, dirs[-1], 'manifest.json'), {}) or {}
    return {'path': os.path.join(BACKUPS, dirs[-1]), 'bytes': sum(int(e.get('size') or 0) for e in m.get('databases', [])), 'databases': len(m.get('databases', []))}
def space():
    st = os.statvfs(DATA)
    return {'total': st.f_blocks * st.f_frsize, 'free': st.f_bavail * st.f_frsize}
state = read_json(STATE_FILE, {}) or {}
if action == 'info':
    print(json.dumps({'pg': PG_VERSION, 'disk': space(), 'clusters': clusters(), 'backup': latest_backup(), 'state': state,
                      'request': read_json(REQUEST), 'status': read_json(STATUS),
                      'datadisk': read_json(RUN_DIR + '/datadisk.json'), 'upgrade': read_json(RUN_DIR + '/upgrade.json')}))
elif action in ('quiesce', 'wake'):
    units = ['tryton-server.service', 'pgi-console.service', 'pgi-console-worker.service']
    run(['systemctl', 'stop' if action == 'quiesce' else 'start'] + units, check=False)
    print(json.dumps({action: units}))
elif action == 'request':
    m = read_json(req['manifest'])
    if not m:
        raise SystemExit('%s is missing or not JSON' % req['manifest'])
    import hashlib
    with open(req['manifest'], 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    # the new cluster holds what the old one does (a restore is about as big: no bloat, fresh
    # indexes): the free space must hold it, with a margin for the WAL and trytond-admin's work
    old = clusters().get(PG_VERSION, {}).get('bytes', 0)
    need = int(old * 1.2) + (256 << 20)
    free = space()['free']
    if free < need:
        raise SystemExit('the data disk has %d MiB free; the new PostgreSQL cluster needs about %d MiB (old cluster %d MiB + margin): grow the data disk first'
                         % (free >> 20, need >> 20, old >> 20))
    r = {'format': 1, 'id': req['id'], 'manifest': req['manifest'], 'manifest_sha256': sha, 'from_pg': PG_VERSION, 'to_pg': str(req['to_pg']),
         'from_version': req.get('from_version'), 'to_version': req.get('to_version'), 'at': iso(now_utc())}
    write_json(REQUEST, r, 0o600)
    print(json.dumps(r))
elif action == 'reopen':
    reopened = []
    for v, c in clusters().items():
        if c['mode'] == oct(0o500):
            os.chmod(c['path'], 0o700)
            reopened.append(v)
    prev = (state.get('major') or {}).get('previous')
    if prev and (state.get('image') or {}).get('version') != req['version']:
        state.setdefault('history', []).append({'at': iso(now_utc()), 'major_rolled_back': True, 'from': (state.get('image') or {}).get('version'), 'to': req['version']})
        state['image'] = prev.get('image') or {'name': (state.get('image') or {}).get('name'), 'version': req['version']}
        state['tryton'] = prev.get('tryton')
        if prev.get('postgresql'):
            state['postgresql'] = prev['postgresql']
        state.pop('major', None)
        write_json(STATE_FILE, state, 0o600)
    if os.path.exists(REQUEST):
        os.remove(REQUEST)
    s = read_json(STATUS)
    if s and s.get('state') != 'rolled-back':
        s['state_before_rollback'] = s.get('state')
        s['state'] = 'rolled-back'
        write_json(STATUS, s, 0o644)
    run(['systemctl', 'reset-failed', 'postgresql@%s-main.service' % PG_VERSION], check=False)
    run(['systemctl', 'start', 'postgresql@%s-main.service' % PG_VERSION])
    run(['systemctl', 'restart', 'pgi-upgrade.service'], check=False)
    run(['systemctl', 'restart', 'tryton-server.service'], check=False)
    print(json.dumps({'reopened': reopened, 'version': (state.get('image') or {}).get('version')}))
elif action == 'commit':
    s = read_json(STATUS) or {}
    if s.get('state') not in ('done', 'committed'):
        raise SystemExit('the migration is not done (status %s): not committing it' % s.get('state'))
    if s.get('state') != 'committed':
        s['state'] = 'committed'
        s['committed_at'] = iso(now_utc())
        s['rollout'] = req.get('id')
        write_json(STATUS, s, 0o644)
    if os.path.exists(REQUEST):
        os.remove(REQUEST)
    print(json.dumps({'committed': True, 'old_cluster': (state.get('major') or {}).get('old_cluster')}))
elif action == 'prune':
    major = state.get('major') or {}
    s = read_json(STATUS) or {}
    old = major.get('old_cluster')
    if not old or s.get('state') != 'committed':
        raise SystemExit('no committed major upgrade recorded on the data disk: nothing to prune')
    if str(major.get('to_pg')) != PG_VERSION or old == PG_DATA:
        raise SystemExit('this OS runs PostgreSQL %s, not the cluster the upgrade made: not pruning' % PG_VERSION)
    top = os.path.dirname(old)
    freed = du(top) if os.path.isdir(top) else 0
    if os.path.isdir(top):
        shutil.rmtree(top)
    major['pruned_at'] = iso(now_utc())
    state['major'] = major
    write_json(STATE_FILE, state, 0o600)
    print(json.dumps({'pruned': top, 'bytes': freed}))
else:
    raise SystemExit('unknown action %r' % action)
`

export interface MajorStatusDb {
  name: string
  step: string
  seconds?: Record<string, number>
  error?: string
  figure_differences?: string[] | null
  tryton?: boolean
}

/** The guest's migration status file (pgimajor.py's STATUS_FILE). */
export interface MajorStatus {
  key?: string
  id?: string
  state: 'running' | 'done' | 'failed' | 'committed' | 'rolled-back'
  error?: string | null
  from_pg?: string
  to_pg?: string
  started_at?: string
  finished_at?: string
  /** When the rollout's gate passed and the way back closed (the old cluster kept from then on). */
  committed_at?: string
  boots?: number
  databases: MajorStatusDb[]
}

export interface MajorInfo {
  pg: string
  disk: {total: number; free: number}
  clusters: Record<string, {path: string; bytes: number; mode: string}>
  backup: {path: string; bytes: number; databases: number} | null
  state: {image?: {name?: string; version?: string}; major?: {old_cluster?: string; from_pg?: string; to_pg?: string; pruned_at?: string}; [k: string]: unknown}
  request: {id?: string; manifest?: string} | null
  status: MajorStatus | null
  /** This boot's pgi-datadisk and pgi-upgrade records (/run/pgi), when written. */
  datadisk?: {ok?: boolean; error?: string} | null
  upgrade?: {ok?: boolean; error?: string; action?: string} | null
}

export type MajorAction =
  | {action: 'info'}
  | {action: 'quiesce'}
  | {action: 'wake'}
  | {action: 'request'; id: string; manifest: string; to_pg: string; from_version?: string; to_version: string}
  | {action: 'reopen'; version: string}
  | {action: 'commit'; id: string}
  | {action: 'prune'}

export async function majorInGuest<T = unknown>(t: GuestTarget, req: MajorAction, timeoutMs = 600_000): Promise<T> {
  const r = await t.api.agentExec(t.node, t.vmid, [PYTHON, '-c', MAJOR_SCRIPT], {inputData: asciiJson(req), timeoutMs, idempotent: req.action === 'info'})
  const out = lastJson<T>(r.stdout)
  if (r.exitcode !== 0 || out === undefined) {
    throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `major upgrade, ${req.action}: failed in VM ${t.vmid} (exit ${r.exitcode}): ${(r.stderr || r.stdout).trim().slice(-400) || '(no output)'}`, {
      where: guestWhere(t),
    })
  }
  return out
}

/** One line per database of a migration status, for progress and reasons. */
export function describeMajorStatus(s: MajorStatus): string {
  const dbs = s.databases ?? []
  const done = dbs.filter((d) => d.step === 'done').length
  const cur = dbs.find((d) => d.step !== 'done' && d.step !== 'pending')
  return `migration ${s.state}: ${done}/${dbs.length} database(s) done${cur ? `, ${cur.name}: ${cur.step}` : ''}${s.error ? ` — ${s.error}` : ''}`
}

export interface ProbeDatabase {
  name: string
  opens: boolean
  error?: string
  row_counts?: Record<string, number>
  /** What differs from the business figures the backup recorded (pgifigures.py); absent when it recorded none. */
  figure_differences?: string[]
  login?: boolean
  login_error?: string
}

export interface ProbeResult {
  databases: ProbeDatabase[]
  /** The data disk's record (/srv/pgi/.pgi/state.json): image.version = what the databases are upgraded for. */
  state: {image?: {name?: string; version?: string}; [k: string]: unknown}
  upgrade: {ok?: boolean; action?: string; error?: string; [k: string]: unknown}
}

function lastJson<T>(stdout: string): T | undefined {
  try {
    return JSON.parse(stdout.trim().split('\n').filter(Boolean).slice(-1)[0] ?? '') as T
  } catch {
    return undefined
  }
}

export async function probeGuest(t: GuestTarget, manifestPath: string, login?: {login: string; password: string}): Promise<ProbeResult> {
  const r = await t.api.agentExec(t.node, t.vmid, [PYTHON, '-c', PROBE_SCRIPT], {inputData: asciiJson({manifest: manifestPath, login}), timeoutMs: 600_000, idempotent: true})
  const out = lastJson<ProbeResult>(r.stdout)
  if (r.exitcode !== 0 || !out || !Array.isArray(out.databases)) {
    throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `the database checks failed to run in VM ${t.vmid} (exit ${r.exitcode}): ${(r.stderr || r.stdout).trim().slice(-300) || '(no output)'}`, {
      where: guestWhere(t),
    })
  }
  return out
}

export async function restoreInGuest(t: GuestTarget, manifestPath: string, version: string): Promise<string[]> {
  const r = await t.api.agentExec(t.node, t.vmid, [PYTHON, '-c', RESTORE_SCRIPT], {inputData: asciiJson({manifest: manifestPath, version}), timeoutMs: 3600_000})
  const out = lastJson<{restored: string[]}>(r.stdout)
  if (r.exitcode !== 0 || !out) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `restoring the databases from ${manifestPath} failed in VM ${t.vmid} (exit ${r.exitcode}): ${(r.stderr || r.stdout).trim().slice(-300) || '(no output)'}`, {
      where: guestWhere(t),
      suggestions: ['The backup is still on the data disk (/srv/pgi/backups) and a copy is in the local rollout journal: restore by hand with pg_restore.'],
    })
  }
  return out.restored
}

/**
 * Waits, bounded, until the guest's boot has finished (systemd "running" or "degraded": no start
 * job left), so that data checks right after a start see PostgreSQL up and the boot-time upgrade
 * done (or failed), not a boot half-way. Returns systemd's word for the state; a boot that has not
 * settled within `timeoutMs` is not an error here: the checks that follow say what they see.
 */
/**
 * Waits until the guest has its data disk mounted at /srv/pgi (pgi-datadisk, early in the boot):
 * what a rollback of a major upgrade needs before it reopens the old cluster.
 */
export async function waitForDataDisk(t: GuestTarget, timeoutMs: number, intervalMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const r = await t.api.agentExec(t.node, t.vmid, ['mountpoint', '-q', '/srv/pgi'], {timeoutMs: 30_000, idempotent: true}).catch(() => undefined)
    if (r?.exitcode === 0) return
    if (Date.now() >= deadline) {
      throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `VM ${t.vmid}: the data disk is not mounted at /srv/pgi ${Math.round(timeoutMs / 1000)} s after the guest agent answered`, {
        where: guestWhere(t),
        suggestions: ['Look at the VM console for pgi-datadisk (journalctl -u pgi-datadisk), then run `pgi rollout resume`.'],
      })
    }
    await sleep(intervalMs)
  }
}

export async function waitForBoot(t: GuestTarget, timeoutMs: number): Promise<string> {
  try {
    const r = await t.api.agentExec(t.node, t.vmid, ['systemctl', 'is-system-running', '--wait'], {timeoutMs, idempotent: true})
    return r.stdout.trim() || `exit ${r.exitcode}`
  } catch (err) {
    return `not settled: ${err instanceof Error ? err.message : String(err)}`
  }
}
