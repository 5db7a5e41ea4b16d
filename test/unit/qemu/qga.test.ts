import {mkdtempSync, rmSync} from 'node:fs'
import {createServer, type Server, type Socket} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, afterEach, describe, expect, it} from 'vitest'

import {QgaClient, QgaError} from '../../../src/qemu/qga.js'

/**
 * A fake guest agent on a unix socket, speaking the real QGA framing: newline-delimited JSON
 * requests, a 0xFF byte resets the parser, `guest-sync-delimited` answers with a 0xFF sentinel.
 * `handler` decides each reply (undefined = stay silent).
 */
type Handler = (cmd: string, args: Record<string, unknown>, sock: Socket) => unknown
const dir = mkdtempSync(join(tmpdir(), 'pgi-qga-'))
const servers: Server[] = []
let n = 0

function fakeAgent(
  handler: Handler,
  opts: {staleBeforeSync?: string; syncSilent?: boolean} = {},
): {path: string; log: {cmd: string; args: Record<string, unknown>}[]; conns: {open: number; max: number}} {
  const path = join(dir, `qga${n++}.sock`)
  const log: {cmd: string; args: Record<string, unknown>}[] = []
  const conns = {open: 0, max: 0}
  const srv = createServer((sock) => {
    conns.open++
    conns.max = Math.max(conns.max, conns.open)
    sock.on('close', () => conns.open--)
    let buf = ''
    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('latin1').replaceAll('\xff', '')
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        const req = JSON.parse(line) as {execute: string; arguments?: Record<string, unknown>}
        const args = req.arguments ?? {}
        log.push({cmd: req.execute, args})
        if (req.execute === 'guest-sync-delimited') {
          if (opts.syncSilent) continue
          if (opts.staleBeforeSync) sock.write(opts.staleBeforeSync)
          sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({return: args.id}) + '\n')]))
          continue
        }
        const reply = handler(req.execute, args, sock)
        if (reply !== undefined) sock.write(JSON.stringify(reply) + '\n')
      }
    })
    sock.on('error', () => undefined)
  })
  srv.listen(path)
  servers.push(srv)
  return {path, log, conns}
}

afterEach(() => {
  for (const s of servers.splice(0)) s.close()
})
afterAll(() => rmSync(dir, {recursive: true, force: true}))

describe('QgaClient', () => {
  it('syncs, skips stale replies from an earlier client, and returns the command result', async () => {
    const {path, log} = fakeAgent(
      (cmd) => (cmd === 'guest-ping' ? {return: {}} : {error: {class: 'CommandNotFound', desc: 'nope'}}),
      {staleBeforeSync: '{"return": {"stale": true}}\n{"return": 12345}\n'},
    )
    const c = new QgaClient(path)
    await expect(c.ping(2000)).resolves.toBeUndefined()
    expect(log.map((l) => l.cmd)).toEqual(['guest-sync-delimited', 'guest-ping'])
    expect(typeof log[0].args.id).toBe('number')
  })

  it('returns guest-network-get-interfaces as the agent sent it', async () => {
    const ifaces = [
      {name: 'lo', 'hardware-address': '00:00:00:00:00:00', 'ip-addresses': [{'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4', prefix: 8}]},
      {name: 'eth0', 'hardware-address': '52:54:00:12:34:56', 'ip-addresses': [{'ip-address': '10.1.2.3', 'ip-address-type': 'ipv4', prefix: 24}]},
    ]
    const {path} = fakeAgent((cmd) => (cmd === 'guest-network-get-interfaces' ? {return: ifaces} : undefined))
    expect(await new QgaClient(path).networkGetInterfaces(2000)).toEqual(ifaces)
  })

  it('reports an agent error as QgaError "failed" with its class', async () => {
    const {path} = fakeAgent(() => ({error: {class: 'GenericError', desc: 'Command guest-get-fsinfo has been disabled'}}))
    const err = await new QgaClient(path).getFsinfo(2000).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(QgaError)
    expect(err).toMatchObject({reason: 'failed', errorClass: 'GenericError', code: 'PGI_GUEST_AGENT'})
    expect((err as Error).message).toMatch(/has been disabled/)
  })

  it('fails as "unavailable" within the timeout when nothing answers the sync (agent not running)', async () => {
    const {path} = fakeAgent(() => ({return: {}}), {syncSilent: true})
    const t0 = Date.now()
    const err = await new QgaClient(path).ping(400).catch((e: unknown) => e)
    expect(Date.now() - t0).toBeLessThan(2000)
    expect(err).toMatchObject({reason: 'unavailable'})
    expect((err as Error).message).toMatch(/not running/)
  })

  it('fails as "timeout" when the agent syncs but never answers the command', async () => {
    const {path} = fakeAgent(() => undefined)
    const err = await new QgaClient(path).ping(400).catch((e: unknown) => e)
    expect(err).toMatchObject({reason: 'timeout', exitCode: 6})
  })

  it('fails as "unavailable" when the socket does not exist', async () => {
    const err = await new QgaClient(join(dir, 'absent.sock')).ping(300).catch((e: unknown) => e)
    expect(err).toMatchObject({reason: 'unavailable'})
  })

  it('sends exec input as base64 and decodes exec-status output (run)', async () => {
    let polls = 0
    const {path, log} = fakeAgent((cmd, args) => {
      if (cmd === 'guest-exec') return {return: {pid: 4242}}
      if (cmd === 'guest-exec-status') {
        expect(args.pid).toBe(4242)
        polls++
        if (polls < 2) return {return: {exited: false}}
        return {return: {exited: true, exitcode: 3, 'out-data': Buffer.from('héllo\n').toString('base64'), 'err-data': Buffer.from('warn').toString('base64')}}
      }
      return undefined
    })
    const r = await new QgaClient(path).run(['/usr/local/sbin/pgi-configure', '--x'], {input: '{"a":"secret"}', pollMs: 10, timeoutMs: 5000})
    expect(r).toEqual({exitcode: 3, signal: undefined, stdout: 'héllo\n', stderr: 'warn'})
    const exec = log.find((l) => l.cmd === 'guest-exec')
    expect(exec?.args).toEqual({path: '/usr/local/sbin/pgi-configure', arg: ['--x'], 'capture-output': true, 'input-data': Buffer.from('{"a":"secret"}').toString('base64')})
  })

  it('writes and reads files through open/write/read/close, in chunks', async () => {
    const files = new Map<number, {path: string; data: Buffer; pos: number}>()
    const store = new Map<string, Buffer>([['/etc/pgi/image.json', Buffer.alloc(2.5 * 1024 * 1024, 'a')]])
    let next = 1000
    const {path, log} = fakeAgent((cmd, args) => {
      switch (cmd) {
        case 'guest-file-open': {
          const h = next++
          const p = String(args.path)
          files.set(h, {path: p, data: args.mode === 'w' ? Buffer.alloc(0) : store.get(p) ?? Buffer.alloc(0), pos: 0})
          return {return: h}
        }
        case 'guest-file-write': {
          const f = files.get(Number(args.handle))!
          f.data = Buffer.concat([f.data, Buffer.from(String(args['buf-b64']), 'base64')])
          return {return: {count: f.data.length, eof: false}}
        }
        case 'guest-file-read': {
          const f = files.get(Number(args.handle))!
          const part = f.data.subarray(f.pos, f.pos + Number(args.count))
          f.pos += part.length
          return {return: {count: part.length, 'buf-b64': part.toString('base64'), eof: f.pos >= f.data.length}}
        }
        case 'guest-file-flush':
          return {return: {}}
        case 'guest-file-close': {
          const f = files.get(Number(args.handle))!
          store.set(f.path, f.data)
          files.delete(Number(args.handle))
          return {return: {}}
        }
      }
      return undefined
    })
    const c = new QgaClient(path)
    await c.fileWrite('/tmp/hello', Buffer.from('bonjour'))
    expect(store.get('/tmp/hello')?.toString()).toBe('bonjour')
    const r = await c.fileRead('/etc/pgi/image.json')
    expect(r).toMatchObject({truncated: false})
    expect(r.content.length).toBe(2.5 * 1024 * 1024)
    const small = await c.fileRead('/etc/pgi/image.json', {maxBytes: 1000})
    expect(small.truncated).toBe(true)
    expect(small.content.length).toBe(1000)
    expect(files.size).toBe(0) // every handle closed
    expect(log.filter((l) => l.cmd === 'guest-file-read').length).toBeGreaterThanOrEqual(3)
  })

  it('treats silence after guest-shutdown as accepted', async () => {
    const {path, log} = fakeAgent(() => undefined)
    await expect(new QgaClient(path).shutdown('powerdown', 300)).resolves.toBeUndefined()
    expect(log.at(-1)).toEqual({cmd: 'guest-shutdown', args: {mode: 'powerdown'}})
  })

  it('serialises concurrent calls (the socket takes one client at a time)', async () => {
    // Without serialisation the three clients would connect and sync while a ping is unanswered.
    let unanswered = 0
    let overlap = 0
    const {path, log} = fakeAgent((cmd, _a, sock) => {
      if (cmd === 'guest-ping') {
        unanswered++
        setTimeout(() => {
          unanswered--
          sock.write(JSON.stringify({return: {}}) + '\n')
        }, 30)
      }
      return undefined
    })
    const c = new QgaClient(path)
    const pings = [c.ping(2000), c.ping(2000), c.ping(2000)]
    const timer = setInterval(() => {
      overlap = Math.max(overlap, unanswered)
    }, 1)
    await Promise.all(pings)
    clearInterval(timer)
    expect(log.filter((l) => l.cmd === 'guest-ping')).toHaveLength(3)
    expect(overlap).toBe(1)
  })
})
