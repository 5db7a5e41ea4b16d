/**
 * The client under transient faults: server faults retried with back-off (reads, idempotent
 * requests), non-idempotent writes never re-sent before the state is re-read, tasks whose status
 * cannot be read named as such, the breaker that makes a dead hypervisor cost one deadline, and
 * no timer left armed after a failed request (it would keep the process alive after its output).
 */
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {rejection} from '../../helpers/rejection.js'

import {ErrorCode, type PgiError} from '../../../src/errors.js'
import {ExitCode} from '../../../src/exit-codes.js'
import {MemoryIo} from '../../../src/io.js'
import {PveApiError, isServerFault} from '../../../src/proxmox/errors.js'
import {NetworkError, TlsMismatchError} from '../../../src/proxmox/tls.js'
import {client, FakeClock, FakePve, fail, ok, TOKEN_ID, upid, type Recorded, type Reply} from './fake-pve.js'

const NOW_S = Math.floor(1_760_000_000_000 / 1000)
const FAULT = 'lab fault injection: internal server error'
const NO_VM = "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"
const statusRoute = (u: string) => `GET /nodes/pve1/tasks/${u}/status`
const task = (u: string, type: string, exitstatus?: string) => ({upid: u, node: 'pve1', type, id: '100', user: TOKEN_ID, starttime: NOW_S, pid: 1, pstart: 1, status: exitstatus ? 'stopped' : 'running', ...(exitstatus ? {exitstatus} : {})})
/** The order in which routes were asked ("METHOD /path"), task polls shortened to "poll". */
const order = (fake: FakePve) => fake.requests.map((r) => (r.path.includes('/tasks/UPID') ? 'poll' : `${r.method} ${r.path}`))

describe('server faults', () => {
  it('tells a server fault from PVE refusing the request', () => {
    expect(isServerFault(500, FAULT)).toBe(true)
    expect(isServerFault(500, 'ipcc_send_rec[1] failed: Connection refused')).toBe(true)
    expect(isServerFault(502, 'Bad Gateway')).toBe(true)
    expect(isServerFault(596, 'Broken pipe')).toBe(true)
    expect(isServerFault(500, NO_VM)).toBe(false)
    expect(isServerFault(500, "unable to create VM 100 - VM 100 already exists on node 'pve2'")).toBe(false)
    expect(isServerFault(500, 'QEMU guest agent is not running')).toBe(false)
    expect(isServerFault(500, 'VM is locked (clone)')).toBe(false)
    expect(isServerFault(501, "Method 'GET /x' not implemented")).toBe(false)
    expect(isServerFault(403, 'Permission check failed (/vms/100, VM.Audit)')).toBe(false)
  })

  it('a read is sent again after a server fault, with doubling back-off, and then succeeds', async () => {
    const fake = new FakePve().on('GET /cluster/resources', [fail(500, FAULT), fail(502, 'Bad Gateway'), fail(500, FAULT), ok([{type: 'qemu', vmid: 100, node: 'pve1', status: 'running'}])])
    const clock = new FakeClock()
    const r = await client(fake, clock).clusterResources('vm')
    expect(r).toHaveLength(1)
    expect(fake.calls('GET /cluster/resources')).toHaveLength(4)
    expect(clock.sleeps).toEqual([750, 1500, 3000]) // 1, 2, 4 s with the jitter factor 0.75
  })

  it('the back-off is capped, and after the retries the failure is named PGI_PVE_SERVER_ERROR with the attempts', async () => {
    const fake = new FakePve().on('GET /nodes/pve1/storage/local/status', fail(500, FAULT))
    const clock = new FakeClock()
    const e = (await rejection(client(fake, clock, {retry: {serverRetries: 5, maxDelayMs: 4000}}).storageStatus('pve1', 'local'))) as PveApiError
    expect(e).toBeInstanceOf(PveApiError)
    expect(e.code).toBe(ErrorCode.PVE_SERVER_ERROR)
    expect(e.code).not.toBe(ErrorCode.REFUSED)
    expect(e.exitCode).toBe(ExitCode.FAILURE)
    expect(e.message).toBe(`GET /nodes/pve1/storage/local/status failed: 500 ${FAULT} (6 attempts)`)
    expect(e.details).toMatchObject({attempts: 6, status: 500})
    expect(fake.calls('GET /nodes/pve1/storage/local/status')).toHaveLength(6)
    expect(clock.sleeps).toEqual([750, 1500, 3000, 3000, 3000])
  })

  it('PVE refusing a read (no such VM, a storage that does not exist) is answered at once, never retried', async () => {
    const fake = new FakePve().on('GET /nodes/pve1/qemu/100/config', fail(500, NO_VM)).on('GET /nodes/pve1/storage/tank/status', fail(500, "storage 'tank' does not exist"))
    const clock = new FakeClock()
    const c = client(fake, clock)
    expect(await c.vmConfig('pve1', 100)).toBeUndefined()
    expect((await rejection(c.storageStatus('pve1', 'tank'))).code).toBe(ErrorCode.PVE_HTTP)
    expect(fake.requests).toHaveLength(2)
    expect(clock.sleeps).toEqual([])
  })

  it('task polling survives server faults: the task is followed to its end', async () => {
    const u = upid('qmcreate', 100)
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', ok(u))
      .on(statusRoute(u), [ok(task(u, 'qmcreate')), fail(500, FAULT), fail(500, FAULT), ok(task(u, 'qmcreate', 'OK'))])
    await client(fake).createVm('pve1', 100, {name: 'x'})
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
    expect(fake.calls(statusRoute(u))).toHaveLength(4)
  })

  it('a task whose status cannot be read is PGI_PVE_TASK_UNKNOWN (it may have succeeded), not a failed GET', async () => {
    const u = upid('qmcreate', 100)
    const fake = new FakePve().on('POST /nodes/pve1/qemu', ok(u)).on(statusRoute(u), fail(500, FAULT))
    const e = await rejection(client(fake, new FakeClock(), {retry: {serverRetries: 2}}).createVm('pve1', 100, {name: 'x'}))
    expect(e.code).toBe(ErrorCode.PVE_TASK_UNKNOWN)
    expect(e.message).toMatch(/^task qmcreate was started, but its status could not be read: GET .*\/status failed: 500 lab fault injection: internal server error \(3 attempts\)$/)
    expect(e.details).toMatchObject({upid: u, taskType: 'qmcreate'})
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 100})
    expect(e.suggestions.join(' ')).toMatch(/run the command again/)
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
  })
})

describe('a non-idempotent write is never sent again blindly', () => {
  it('create answered by a server fault: the state is re-read (no task, no VM) before the one new send', async () => {
    const u = upid('qmcreate', 100)
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', [fail(500, FAULT), ok(u)])
      .on('GET /nodes/pve1/tasks', ok([]))
      .on('GET /nodes/pve1/qemu/100/config', fail(500, NO_VM))
      .on(statusRoute(u), ok(task(u, 'qmcreate', 'OK')))
    await client(fake).createVm('pve1', 100, {name: 'x'})
    expect(order(fake)).toEqual(['POST /nodes/pve1/qemu', 'GET /nodes/pve1/tasks', 'GET /nodes/pve1/qemu/100/config', 'POST /nodes/pve1/qemu', 'poll'])
  })

  it('create answered by a server fault although PVE started it: its task is found and followed, nothing re-sent', async () => {
    const u = upid('qmcreate', 100, {start: NOW_S})
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', fail(502, 'Bad Gateway'))
      .on('GET /nodes/pve1/tasks', ok([task(u, 'qmcreate')]))
      .on(statusRoute(u), [ok(task(u, 'qmcreate')), ok(task(u, 'qmcreate', 'OK'))])
    await client(fake).createVm('pve1', 100, {name: 'x'})
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
    expect(fake.calls(statusRoute(u))).toHaveLength(2)
  })

  it('create whose answer is lost (connection reset after sending): the VM it made is found, waited for, and deploy goes on', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', {throw: new NetworkError('127.0.0.1:8006', 'ECONNRESET', 'ECONNRESET (socket hang up)', false)})
      .on('GET /nodes/pve1/tasks', ok([]))
      .on('GET /nodes/pve1/qemu/100/config', ok({name: 'x', digest: 'd1'}))
      .on('GET /nodes/pve1/qemu/100/status/current', [ok({vmid: 100, status: 'stopped', lock: 'create'}), ok({vmid: 100, status: 'stopped'})])
    const c = client(fake)
    await c.createVm('pve1', 100, {name: 'x'})
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
    // and the next step works on that VM
    const su = upid('qmstart', 100)
    fake.on('POST /nodes/pve1/qemu/100/status/start', ok(su)).on(statusRoute(su), ok(task(su, 'qmstart', 'OK')))
    await c.startVm('pve1', 100)
    expect(fake.calls('POST /nodes/pve1/qemu/100/status/start')).toHaveLength(1)
  })

  it('an earlier task of the same VM is not taken for the one a failed start would have made', async () => {
    const first = upid('qmstart', 100, {start: NOW_S})
    const second = upid('qmstart', 100, {start: NOW_S + 1})
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/status/start', [ok(first), fail(500, FAULT), ok(second)])
      .on(statusRoute(first), ok(task(first, 'qmstart', 'OK')))
      .on(statusRoute(second), ok(task(second, 'qmstart', 'OK')))
      .on('GET /nodes/pve1/tasks', ok([task(first, 'qmstart', 'OK')]))
      .on('GET /nodes/pve1/qemu/100/status/current', ok({vmid: 100, status: 'stopped'}))
    const c = client(fake)
    await c.startVm('pve1', 100)
    // stopped meanwhile (a rollback), started again: the first start's task is not this one's
    await c.startVm('pve1', 100)
    expect(fake.calls('POST /nodes/pve1/qemu/100/status/start')).toHaveLength(3)
    expect(fake.calls(statusRoute(second))).toHaveLength(1)
  })

  it('a guest command is started again after a server fault only when the caller says it may run twice', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/exec', [fail(500, FAULT), ok({pid: 7}), fail(500, FAULT)])
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', ok({exited: 1, exitcode: 0, 'out-data': '{"healthy":true}'}))
    const c = client(fake)
    expect((await c.agentExec('pve1', 100, ['/usr/local/sbin/pgi-health'], {idempotent: true})).stdout).toBe('{"healthy":true}')
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(2)
    const e = await rejection(c.agentExec('pve1', 100, ['/usr/bin/python3', '-c', '# pgi-rollout-restore']))
    expect(e.code).toBe(ErrorCode.PVE_SERVER_ERROR)
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(3)
  })

  it("a guest command's end is polled at growing intervals up to poll.maxMs, or up to the caller's pollMaxMs", async () => {
    const running = ok({exited: 0})
    const done = ok({exited: 1, exitcode: 0, 'out-data': 'done'})
    const polls = [...Array.from({length: 12}, () => running), done]
    const run = async (opts: {pollMaxMs?: number}) => {
      const fake = new FakePve().on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 7})).on('GET /nodes/pve1/qemu/100/agent/exec-status', polls)
      const clock = new FakeClock()
      expect((await client(fake, clock).agentExec('pve1', 100, ['/usr/local/sbin/pgi-db', 'class'], opts)).stdout).toBe('done')
      expect(fake.calls('GET /nodes/pve1/qemu/100/agent/exec-status')).toHaveLength(13)
      return clock.sleeps
    }
    // the fleet's default: ×1.5 from 250 ms up to 5 s
    expect(await run({})).toEqual([250, 375, 563, 845, 1268, 1902, 2853, 4280, 5000, 5000, 5000, 5000])
    // a command someone waits on: never more than a second between two polls
    expect(await run({pollMaxMs: 1000})).toEqual([250, 375, 563, 845, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000])
  })

  it('an idempotent config write (PUT) is sent again after a server fault', async () => {
    const fake = new FakePve().on('PUT /nodes/pve1/qemu/100/config', [fail(500, FAULT), ok(null)])
    await client(fake).updateVmConfig('pve1', 100, {memory: 2048, digest: 'd1'})
    expect(fake.calls('PUT /nodes/pve1/qemu/100/config').map((r) => r.form?.get('digest'))).toEqual(['d1', 'd1'])
  })

  describe('uploads', () => {
    let dir: string
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'pgi-faults-'))
    })
    afterAll(async () => {
      await rm(dir, {recursive: true, force: true})
    })

    it('an upload answered by a server fault is sent again once the node shows it does not have the file', async () => {
      const file = join(dir, 'a.qcow2')
      await writeFile(file, Buffer.alloc(4096, 1))
      const u = upid('imgcopy', '')
      const fake = new FakePve()
        .on('POST /nodes/pve1/storage/local/upload', [fail(500, FAULT), ok(u)])
        .on('GET /nodes/pve1/tasks', ok([]))
        .on('GET /nodes/pve1/storage/local/content', ok([]))
        .on(statusRoute(u), ok({...task(u, 'imgcopy', 'OK'), id: ''}))
      await client(fake).uploadFile('pve1', 'local', file, {filename: 'a.qcow2', content: 'import'})
      expect(order(fake)).toEqual(['POST /nodes/pve1/storage/local/upload', 'GET /nodes/pve1/tasks', 'GET /nodes/pve1/storage/local/content', 'POST /nodes/pve1/storage/local/upload', 'poll'])
    })

    it('an upload answered by a server fault whose file did arrive is not sent again', async () => {
      const file = join(dir, 'b.qcow2')
      await writeFile(file, Buffer.alloc(4096, 2))
      const fake = new FakePve()
        .on('POST /nodes/pve1/storage/local/upload', fail(503, 'Service Unavailable'))
        .on('GET /nodes/pve1/tasks', ok([]))
        .on('GET /nodes/pve1/storage/local/content', ok([{volid: 'local:import/b.qcow2', size: 4096, format: 'qcow2', content: 'import'}]))
      await client(fake).uploadFile('pve1', 'local', file, {filename: 'b.qcow2', content: 'import'})
      expect(fake.calls('POST /nodes/pve1/storage/local/upload')).toHaveLength(1)
    })
  })
})

describe('a hypervisor out of reach costs one deadline (the breaker)', () => {
  const hang = (r: Recorded) => new Promise<Reply>((_res, rej) => r.signal?.addEventListener('abort', () => rej(r.signal!.reason)))

  it('no answer at all for a deadline: later requests, concurrent or not, fail at once with the same cause', async () => {
    const fake = new FakePve()
    fake.fallback = hang
    const c = client(fake, new FakeClock(), {requestTimeoutMs: 50})
    const t0 = performance.now()
    const all = await Promise.allSettled([c.vmConfig('pve1', 100), c.vmConfig('pve1', 101), c.clusterResources('vm')])
    const later = await rejection(c.vmStatus('pve1', 102))
    const ms = performance.now() - t0
    const errors = [...all.map((r) => (r as PromiseRejectedResult).reason as PgiError), later]
    expect(errors.map((e) => e.code)).toEqual([ErrorCode.UNREACHABLE, ErrorCode.UNREACHABLE, ErrorCode.UNREACHABLE, ErrorCode.UNREACHABLE])
    expect(errors.map((e) => e.exitCode)).toEqual([8, 8, 8, 8])
    expect(later.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 102})
    expect(later.details).toMatchObject({notSent: true, timeoutMs: 50})
    expect(fake.requests.length).toBeLessThanOrEqual(3)
    expect(ms).toBeLessThan(1000)
  })

  it('a slow request while the hypervisor answers others is retried, and the breaker stays closed', async () => {
    const fake = new FakePve()
      .on('GET /nodes/pve1/qemu/100/config', async (r, n) => (n === 0 ? hang(r) : ok({name: 'a', digest: 'x'})))
      .on('GET /version', async () => (await new Promise((res) => setTimeout(res, 10)), ok({version: '9.1.2'})))
    const c = client(fake, new FakeClock(), {requestTimeoutMs: 80})
    const [cfg] = await Promise.all([c.vmConfig('pve1', 100), c.version(), c.version()])
    expect(cfg?.name).toBe('a')
    expect(fake.calls('GET /nodes/pve1/qemu/100/config')).toHaveLength(2)
    expect((await c.version()).version).toBe('9.1.2')
  })

  it('a write that takes longer than its deadline (a synchronous import) says nothing of the hypervisor: the breaker stays closed', async () => {
    const fake = new FakePve()
      .on('PUT /nodes/pve1/qemu/100/config', async (r, n) => (n === 0 ? hang(r) : ok(null)))
      .on('GET /version', ok({version: '9.1.2'}))
    const c = client(fake, new FakeClock(), {requestTimeoutMs: 50, writeTimeoutMs: 80})
    await c.updateVmConfig('pve1', 100, {virtio0: 'local-lvm:0,import-from=local:import/pgi.qcow2'})
    expect(fake.calls('PUT /nodes/pve1/qemu/100/config')).toHaveLength(2)
    expect((await c.version()).version).toBe('9.1.2')
  })

  it('refused connections are retried while they last less than a read deadline, then the hypervisor is out of reach', async () => {
    const refused = () => ({throw: new NetworkError('127.0.0.1:8006', 'ECONNREFUSED', 'ECONNREFUSED', true)})
    const f1 = new FakePve().on('GET /version', [refused(), refused(), ok({version: '9.1.2'})])
    expect((await client(f1, new FakeClock(), {requestTimeoutMs: 5000}).version()).version).toBe('9.1.2')
    const f2 = new FakePve().on('GET /version', refused()).on('GET /nodes', ok([]))
    const clock = new FakeClock()
    const c = client(f2, clock, {requestTimeoutMs: 5000})
    const e = await rejection(c.version())
    expect(e.code).toBe(ErrorCode.UNREACHABLE)
    expect(clock.sleeps.reduce((a, b) => a + b, 0)).toBeLessThan(5000)
    expect((await rejection(c.nodes())).message).toBe(e.message)
    expect(f2.calls('GET /nodes')).toHaveLength(0)
  })

  it('a certificate that does not match the pin, or a refused token, opens the breaker at once', async () => {
    const f1 = new FakePve().on('GET /version', {throw: new TlsMismatchError('127.0.0.1:8006', 'AA', 'BB')}).on('GET /nodes', ok([]))
    const c1 = client(f1)
    expect((await rejection(c1.version())).code).toBe(ErrorCode.TLS_MISMATCH)
    expect((await rejection(c1.nodes())).code).toBe(ErrorCode.TLS_MISMATCH)
    expect(f1.requests).toHaveLength(1)
    const f2 = new FakePve().on('GET /version', {status: 401, reason: 'invalid token value!', body: '', contentType: null}).on('GET /nodes', ok([]))
    const c2 = client(f2)
    expect((await rejection(c2.version())).code).toBe(ErrorCode.PVE_AUTH)
    expect((await rejection(c2.nodes())).code).toBe(ErrorCode.PVE_AUTH)
    expect(f2.requests).toHaveLength(1)
  })

  it('is tried again after the cool-down', async () => {
    const fake = new FakePve().on('GET /version', [{throw: new TlsMismatchError('127.0.0.1:8006', 'AA', 'BB')}, ok({version: '9.1.2'})])
    const clock = new FakeClock()
    const c = client(fake, clock, {breakerCooldownMs: 60_000})
    await rejection(c.version())
    await rejection(c.version())
    clock.t += 60_000
    expect((await c.version()).version).toBe('9.1.2')
    expect(fake.requests).toHaveLength(2)
  })
})

describe('nothing is left armed after a failed request', () => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  const realTime = {now: Date.now, sleep: (ms: number, signal?: AbortSignal) => new Promise<void>((res, rej) => {
    const t = setTimeout(res, ms)
    signal?.addEventListener('abort', () => (clearTimeout(t), rej(signal.reason)), {once: true})
  })}

  it('a retry waiting its turn ends as soon as another request finds the hypervisor out of reach', async () => {
    const base = timers()
    const fake = new FakePve()
      .on('GET /version', {throw: new NetworkError('127.0.0.1:8006', 'ECONNREFUSED', 'ECONNREFUSED', true)})
      .on('GET /nodes', (r) => new Promise<Reply>((_res, rej) => r.signal?.addEventListener('abort', () => rej(r.signal!.reason))))
    const c = client(fake, undefined, {...realTime, io: new MemoryIo(), requestTimeoutMs: 60_000, retry: {networkRetries: 10, baseDelayMs: 4000, maxDelayMs: 4000}})
    const t0 = performance.now()
    // /version is refused and waits ~3 s before trying again; /nodes gets no answer within its 100 ms
    const c2 = client(fake, undefined, {...realTime, io: new MemoryIo(), requestTimeoutMs: 100, retry: {networkRetries: 10, baseDelayMs: 4000, maxDelayMs: 4000}})
    const [a, b] = await Promise.allSettled([c2.version(), c2.nodes()])
    expect([a.status, b.status]).toEqual(['rejected', 'rejected'])
    expect(performance.now() - t0).toBeLessThan(1500)
    expect(fake.calls('GET /version')).toHaveLength(1)
    await c2.close()
    // closing the client ends a wait too
    const p = c.version()
    await new Promise((r) => setTimeout(r, 50))
    const t1 = performance.now()
    await c.close()
    expect((await rejection(p)).code).toBe(ErrorCode.UNREACHABLE)
    expect(performance.now() - t1).toBeLessThan(500)
    expect(timers()).toBeLessThanOrEqual(base)
  })

  it('no timer survives a TLS mismatch, a refused connection, a server fault, an unanswered request', async () => {
    const base = timers()
    const cases: [string, Reply | ((r: Recorded) => Promise<Reply>)][] = [
      ['tls', {throw: new TlsMismatchError('127.0.0.1:8006', 'AA', 'BB')}],
      ['refused', {throw: new NetworkError('127.0.0.1:8006', 'ECONNREFUSED', 'ECONNREFUSED', true)}],
      ['500', fail(500, FAULT)],
      ['silent', (r: Recorded) => new Promise<Reply>((_res, rej) => r.signal?.addEventListener('abort', () => rej(r.signal!.reason)))],
    ]
    for (const [name, reply] of cases) {
      const fake = new FakePve().on('GET /version', reply as Reply)
      // real clock and sleeps: the client's own timers are the ones counted
      const c = client(fake, undefined, {io: new MemoryIo(), requestTimeoutMs: 40, retry: {networkRetries: 0, serverRetries: 1, baseDelayMs: 5, maxDelayMs: 5}, now: Date.now, sleep: (ms) => new Promise((r) => setTimeout(r, ms))})
      await rejection(c.version())
      await c.close()
      expect([name, timers()]).toEqual([name, base])
    }
  })
})
