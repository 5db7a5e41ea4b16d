/**
 * What rollout runs in the guest through the agent, beyond the guest contract's own tools
 * (pgi-health, pgi-backup [--verify]). Two small Python programs over the image's own library
 * (/usr/local/lib/pgi/pgilib.py) and pgi-backup's own list of key tables, so "row counts" mean the
 * same thing as in the backup manifest. They are passed as `python3 -c SCRIPT` (no file is left
 * in the guest) and read their request as JSON on stdin — the Tryton password travels there,
 * never on a command line. Each prints one JSON object on stdout.
 */
import {ErrorCode, UserError} from '../errors.js'
import type {GuestTarget} from '../fleet/guest.js'
import {asciiJson} from '../proxmox/client.js'

export const PYTHON = '/usr/bin/python3'
/** First line of each script: also how the simulated guest of the tests recognises them. */
export const PROBE_MARK = '# pgi-rollout-probe'
export const RESTORE_MARK = '# pgi-rollout-restore'

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
      where: {uai: t.uai, hypervisor: t.api.hypervisor, node: t.node, vmid: t.vmid},
    })
  }
  return out
}

export async function restoreInGuest(t: GuestTarget, manifestPath: string, version: string): Promise<string[]> {
  const r = await t.api.agentExec(t.node, t.vmid, [PYTHON, '-c', RESTORE_SCRIPT], {inputData: asciiJson({manifest: manifestPath, version}), timeoutMs: 3600_000})
  const out = lastJson<{restored: string[]}>(r.stdout)
  if (r.exitcode !== 0 || !out) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `restoring the databases from ${manifestPath} failed in VM ${t.vmid} (exit ${r.exitcode}): ${(r.stderr || r.stdout).trim().slice(-300) || '(no output)'}`, {
      where: {uai: t.uai, hypervisor: t.api.hypervisor, node: t.node, vmid: t.vmid},
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
export async function waitForBoot(t: GuestTarget, timeoutMs: number): Promise<string> {
  try {
    const r = await t.api.agentExec(t.node, t.vmid, ['systemctl', 'is-system-running', '--wait'], {timeoutMs, idempotent: true})
    return r.stdout.trim() || `exit ${r.exitcode}`
  } catch (err) {
    return `not settled: ${err instanceof Error ? err.message : String(err)}`
  }
}
