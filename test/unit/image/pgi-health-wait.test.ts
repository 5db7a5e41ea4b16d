/**
 * pgi-health --wait (images/pgi-tryton/files/usr/local/sbin/pgi-health), run natively with this
 * machine's python3: the option's parsing, the cheap readiness probe (data disk mounted,
 * PostgreSQL's socket, trytond's and nginx's ports), and the wait loop, which answers as soon as
 * the checks pass instead of at the end of the wait. The checks themselves need a PGI (PostgreSQL,
 * trytond, nginx): the image's boot test covers them; here `collect` is replaced in the loaded
 * module, so the loop is what is tested.
 */
import {spawnSync} from 'node:child_process'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describe, expect, it} from 'vitest'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
const files = join(root, 'images/pgi-tryton/files/usr/local')
const health = join(files, 'sbin/pgi-health')

/** Runs a Python script with pgi-health loaded as the module `h`; returns its JSON line. */
function py(script: string, env: Record<string, string> = {}): {status: number | null; out: Record<string, unknown>; stderr: string} {
  const prelude = `
import importlib.machinery, importlib.util, json, os, socket, sys, tempfile, threading, time
sys.path.insert(0, ${JSON.stringify(join(files, 'lib/pgi'))})
loader = importlib.machinery.SourceFileLoader('pgi_health', ${JSON.stringify(health)})
h = importlib.util.module_from_spec(importlib.util.spec_from_loader('pgi_health', loader))
loader.exec_module(h)

calls = []


def failing_collect():
    """A stand-in for the checks: they fail, each call counted."""
    calls.append(1)
    return False, {'healthy': False, 'calls': len(calls)}


def run_main(argv):
    """Runs pgi-health's main() with argv; exits with its status, its duration on stderr."""
    sys.argv = ['pgi-health'] + argv
    t0 = time.monotonic()
    try:
        h.main()
    except SystemExit as e:
        sys.stderr.write('exit %s after %.1f s\\n' % (e.code, time.monotonic() - t0))
        sys.stderr.flush()
        os._exit(e.code)
`
  const r = spawnSync('/usr/bin/python3', ['-c', prelude + script], {encoding: 'utf8', env: {...process.env, ...env}, timeout: 60_000})
  const line = r.stdout.trim().split('\n').pop() ?? ''
  let out: Record<string, unknown> = {}
  try {
    out = JSON.parse(line) as Record<string, unknown>
  } catch {
    // reported by the assertions
  }
  return {status: r.status, out, stderr: r.stderr}
}

/** How long main() ran, from run_main's line on stderr. */
function seconds(stderr: string): number {
  return Number(/after ([\d.]+) s/.exec(stderr)?.[1])
}

describe('pgi-health --wait', () => {
  it('rejects a wait that is not a number (exit 2, usage on stderr)', () => {
    for (const args of [['--wait'], ['--wait', 'soon']]) {
      const r = py(`
h.collect = lambda: (_ for _ in ()).throw(AssertionError('no check may run'))
run_main(json.loads(${JSON.stringify(JSON.stringify(args))}))
`)
      expect(r.status, r.stderr).toBe(2)
      expect(r.stderr).toContain('usage: pgi-health [--wait SECONDS]')
      expect(r.out).toEqual({})
    }
  })

  it('answers as soon as the checks pass, not at the end of the wait', () => {
    // the services "listen" (probe replaced), the checks fail twice then pass
    const r = py(`
h.services_listening = lambda: True
def collect():
    calls.append(time.monotonic())
    ok = len(calls) >= 3
    return ok, {'healthy': ok, 'calls': len(calls)}
h.collect = collect
run_main(['--wait', '40'])
`)
    expect(r.status, r.stderr).toBe(0)
    expect(r.out).toEqual({healthy: true, calls: 3})
    const took = seconds(r.stderr)
    // two pauses of 3 s between the three runs; far from the 40 s allowed
    expect(took).toBeGreaterThanOrEqual(5.5)
    expect(took).toBeLessThan(15)
  })

  it('runs no check while the services do not listen, then reports the last result when the time is up', () => {
    const r = py(`
h.collect = failing_collect
run_main(['--wait', '3'])
`, {PGI_DATA: '/nonexistent-pgi-data'})
    expect(r.status, r.stderr).toBe(1)
    // the data disk is not mounted: no full check until the time is up, then exactly one
    expect(r.out).toEqual({healthy: false, calls: 1})
    const took = seconds(r.stderr)
    expect(took).toBeGreaterThanOrEqual(2.5)
    expect(took).toBeLessThan(10)
  })

  it('without --wait, checks once and answers at once', () => {
    const r = py(`
h.collect = failing_collect
run_main([])
`)
    expect(r.status, r.stderr).toBe(1)
    expect(r.out).toEqual({healthy: false, calls: 1})
  })

  it('probes the data disk mount, PostgreSQL\'s socket and the trytond and HTTPS ports', () => {
    const r = py(`
d = tempfile.mkdtemp()
results = {}
results['no_socket'] = h.services_listening()
s = socket.socket(socket.AF_UNIX); s.bind(os.path.join(d, '.s.PGSQL.5432'))
t1 = socket.socket(); t1.bind(('127.0.0.1', 0)); t1.listen()
t2 = socket.socket(); t2.bind(('127.0.0.1', 0)); t2.listen()
h.TRYTON_URL = 'http://127.0.0.1:%d' % t1.getsockname()[1]
h.HTTPS_URL = 'https://127.0.0.1:%d' % t2.getsockname()[1]
results['wrong_socket_dir'] = h.services_listening()
h.PG_HOST = d
results['all'] = h.services_listening()
t2.close()
results['https_down'] = h.services_listening()
print(json.dumps(results))
`, {PGI_DATA: '/', PGI_PGHOST: '/nonexistent-pg-socket-dir'})
    expect(r.status, r.stderr).toBe(0)
    expect(r.out).toEqual({no_socket: false, wrong_socket_dir: false, all: true, https_down: false})
  })
})
