/**
 * trytond-start (images/pgi-tryton/files/usr/local/lib/pgi/trytond-start), run natively with this
 * machine's Debian trytond: it loads Tryton's modules at once, does not listen while this boot's
 * pgi-upgrade has not finished (or failed), and then runs Debian's /usr/bin/trytond unchanged,
 * which answers JSON-RPC. Skipped, with the reason, on a machine without tryton-server
 * (`bash scripts/install-deps.sh --test` installs it).
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {existsSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {connect, createServer} from 'node:net'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterEach, describe, expect, it} from 'vitest'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
const script = join(root, 'images/pgi-tryton/files/usr/local/lib/pgi/trytond-start')
const why = existsSync('/usr/bin/trytond') ? null : 'no /usr/bin/trytond (Debian tryton-server)'

function listening(port: number): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({host: '127.0.0.1', port})
    s.once('connect', () => (s.destroy(), res(true)))
    s.once('error', () => res(false))
  })
}

async function until(what: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await what()) return true
    await new Promise((r) => setTimeout(r, 200))
  }
  return what()
}

describe.skipIf(why !== null)(`trytond-start${why ? ` (skipped: ${why})` : ''}`, () => {
  let child: ChildProcess | undefined
  let dir = ''
  afterEach(() => {
    if (child?.pid && child.exitCode === null) child.kill('SIGKILL')
    if (dir) rmSync(dir, {recursive: true, force: true})
  })

  it('loads the modules, waits for a successful pgi-upgrade without listening, then serves trytond', async () => {
    dir = mkdtempSync(join(tmpdir(), 'pgi-trytond-start-'))
    // a free port: listen on 0, read it, close
    const port = await new Promise<number>((res) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as {port: number}).port
        srv.close(() => res(p))
      })
    })
    writeFileSync(join(dir, 'trytond.conf'), `[web]\nlisten = 127.0.0.1:${port}\n[database]\nuri = postgresql://127.0.0.1:1/\n`)
    const upgrade = join(dir, 'upgrade.json')
    let stderr = ''
    child = spawn('/usr/bin/python3', [script, '--config', join(dir, 'trytond.conf')], {env: {...process.env, PGI_UPGRADE_JSON: upgrade}})
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()))
    child.stdout!.on('data', (d: Buffer) => (stderr += d.toString()))
    expect(await until(() => stderr.includes('waiting for pgi-upgrade (modules loaded; not listening yet)'), 60_000), stderr).toBe(true)
    expect(await listening(port)).toBe(false)
    // a failed upgrade: said, still not listening
    writeFileSync(upgrade, JSON.stringify({ok: false, error: 'this OS image (1.0.0) is older than the data disk (1.1.0)'}))
    expect(await until(() => stderr.includes('pgi-upgrade failed: this OS image (1.0.0) is older'), 10_000), stderr).toBe(true)
    expect(await listening(port)).toBe(false)
    expect(child.exitCode).toBe(null)
    // pgi-upgrade done: trytond listens and answers
    writeFileSync(upgrade, JSON.stringify({ok: true, action: 'none', version: '2.0.0'}))
    expect(await until(() => listening(port), 60_000), stderr).toBe(true)
    const res = await fetch(`http://127.0.0.1:${port}/`, {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({id: 1, method: 'common.server.version', params: []}),
    })
    const body = (await res.json()) as {result?: string}
    expect(body.result).toMatch(/^\d+\.\d+\.\d+$/)
  }, 150_000)
})
