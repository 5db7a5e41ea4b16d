import {mkdtempSync, rmSync} from 'node:fs'
import {createServer, type Server} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, afterEach, describe, expect, it} from 'vitest'

import {QmpClient} from '../../../src/qemu/qmp.js'

const dir = mkdtempSync(join(tmpdir(), 'pgi-qmp-'))
const servers: Server[] = []
let n = 0
afterEach(() => {
  for (const s of servers.splice(0)) s.close()
})
afterAll(() => rmSync(dir, {recursive: true, force: true}))

/** A fake QEMU monitor: greeting, qmp_capabilities, then `reply` per command (undefined = silent). */
function fakeQmp(reply: (cmd: string, args: unknown) => unknown, opts: {greeting?: boolean} = {}) {
  const path = join(dir, `qmp${n++}.sock`)
  const seen: string[] = []
  const srv = createServer((sock) => {
    if (opts.greeting ?? true) sock.write(JSON.stringify({QMP: {version: {qemu: {major: 7, minor: 2, micro: 0}}, capabilities: ['oob']}}) + '\r\n')
    let buf = ''
    sock.on('data', (c: Buffer) => {
      buf += c.toString()
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl)) as {execute: string; arguments?: unknown; id?: string}
        buf = buf.slice(nl + 1)
        seen.push(req.execute)
        if (req.execute === 'qmp_capabilities') {
          // an event arrives before the reply, as QEMU may do
          sock.write(JSON.stringify({event: 'RESUME', timestamp: {seconds: 1, microseconds: 0}}) + '\r\n')
          sock.write(JSON.stringify({return: {}, id: req.id}) + '\r\n')
          continue
        }
        const r = reply(req.execute, req.arguments)
        if (r !== undefined) sock.write(JSON.stringify({...(r as object), id: req.id}) + '\r\n')
      }
    })
    sock.on('error', () => undefined)
  })
  srv.listen(path)
  servers.push(srv)
  return {path, seen}
}

describe('QmpClient', () => {
  it('negotiates capabilities and returns query-status', async () => {
    const {path, seen} = fakeQmp((cmd) => (cmd === 'query-status' ? {return: {running: true, status: 'running', singlestep: false}} : {return: {}}))
    const q = await QmpClient.connect(path, 2000)
    expect(await q.status()).toEqual({running: true, status: 'running', singlestep: false})
    q.close()
    expect(seen).toEqual(['qmp_capabilities', 'query-status'])
  })

  it('returns human-monitor-command text', async () => {
    const {path} = fakeQmp((cmd, args) => {
      expect(cmd).toBe('human-monitor-command')
      expect(args).toEqual({'command-line': 'info usernet'})
      return {return: 'Hub -1 (net0):\r\n  TCP[HOST_FORWARD]  13  127.0.0.1 40999  10.0.2.15  22  0  0\r\n'}
    })
    const q = await QmpClient.connect(path, 2000)
    expect(await q.hmp('info usernet')).toContain('HOST_FORWARD')
    q.close()
  })

  it('turns a QMP error into a QMP_ERROR with its description', async () => {
    const {path} = fakeQmp(() => ({error: {class: 'GenericError', desc: 'Device not found'}}))
    const q = await QmpClient.connect(path, 2000)
    await expect(q.execute('block_resize', {device: 'x', size: 1})).rejects.toMatchObject({code: 'PGI_QMP_ERROR', message: expect.stringMatching(/Device not found/)})
    q.close()
  })

  it('times out a command that gets no answer', async () => {
    const {path} = fakeQmp(() => undefined)
    const q = await QmpClient.connect(path, 2000)
    await expect(q.execute('query-status', undefined, 200)).rejects.toMatchObject({code: 'PGI_TIMEOUT'})
    q.close()
  })

  it('times out when the monitor never greets', async () => {
    const {path} = fakeQmp(() => undefined, {greeting: false})
    await expect(QmpClient.connect(path, 300)).rejects.toMatchObject({code: 'PGI_TIMEOUT'})
  })

  it('fails pending commands when QEMU goes away, but quit tolerates it', async () => {
    const {path} = fakeQmp(() => undefined)
    const q = await QmpClient.connect(path, 2000)
    const pending = q.execute('query-status', undefined, 5000)
    for (const s of servers) s.close()
    // closing the server does not close accepted sockets: close ours from the client side
    q.close()
    await expect(pending).rejects.toMatchObject({code: 'PGI_QMP_ERROR'})
    await expect(q.quit()).resolves.toBeUndefined()
  })

  it('rejects with QMP_ERROR when nothing listens', async () => {
    await expect(QmpClient.connect(join(dir, 'none.sock'), 300)).rejects.toMatchObject({code: 'PGI_QMP_ERROR'})
  })
})
