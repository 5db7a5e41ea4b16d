import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {rejection} from '../../helpers/rejection.js'

import {ErrorCode, PgiError, TimeoutError, UnreachableError} from '../../../src/errors.js'
import {ExitCode} from '../../../src/exit-codes.js'
import {MemoryIo} from '../../../src/io.js'
import {encodeParams} from '../../../src/proxmox/client.js'
import {PveApiError, PveTaskError} from '../../../src/proxmox/errors.js'
import {NetworkError, TlsMismatchError} from '../../../src/proxmox/tls.js'
import {parseUpid, tryParseUpid} from '../../../src/proxmox/upid.js'
import {client, FakeClock, FakePve, fail, ok, TOKEN_ID, upid, type Recorded, type Reply} from './fake-pve.js'

const UPID_CREATE = 'UPID:pve1:0000ABCD:0001E240:6761A3F0:qmcreate:100:root@pam:'

const running = {status: 'running', type: 'qmcreate', id: '100', node: 'pve1', pid: 43981, starttime: 0x6761a3f0, upid: UPID_CREATE, user: 'root@pam'}
const stopped = (exitstatus: string) => ({...running, status: 'stopped', exitstatus})
const statusRoute = (u: string, node = 'pve1') => `GET /nodes/${node}/tasks/${u}/status`
const logRoute = (u: string, node = 'pve1') => `GET /nodes/${node}/tasks/${u}/log`

describe('UPID parsing', () => {
  it('parses the real format', () => {
    expect(parseUpid(UPID_CREATE)).toEqual({
      upid: UPID_CREATE,
      node: 'pve1',
      pid: 0xabcd,
      pstart: 0x1e240,
      starttime: 0x6761a3f0,
      type: 'qmcreate',
      id: '100',
      user: 'root@pam',
    })
    const tok = parseUpid('UPID:pve-mrs1:00001234:00A1B2C3:6761A3F0:download:local:pgi@pve!deploy:')
    expect(tok).toMatchObject({node: 'pve-mrs1', type: 'download', id: 'local', user: 'pgi@pve!deploy'})
    expect(parseUpid('UPID:pve1:00001234:00A1B2C3:6761A3F0:vzdump::root@pam:').id).toBe('')
  })
  it('rejects what is not a UPID', () => {
    expect(tryParseUpid('OK')).toBeUndefined()
    expect(tryParseUpid(null)).toBeUndefined()
    expect(tryParseUpid('UPID:pve1:XYZ:0001E240:6761A3F0:qmcreate:100:root@pam:')).toBeUndefined()
    expect(() => parseUpid('nope')).toThrow(/not a Proxmox task id/)
  })
})

describe('task waiting', () => {
  it('creates a VM and polls the URL-encoded UPID until OK, with back-off', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', ok(UPID_CREATE))
      .on(statusRoute(UPID_CREATE), [ok(running), ok(running), ok(running), ok(stopped('OK'))])
    const clock = new FakeClock()
    await client(fake, clock).createVm('pve1', 100, {name: 'pgi-0130040y', memory: 4096, agent: true, virtio0: 'local-lvm:0,import-from=local:import/pgi.qcow2'})
    const post = fake.calls('POST /nodes/pve1/qemu')
    expect(post).toHaveLength(1)
    expect(post[0].form?.get('vmid')).toBe('100')
    expect(post[0].form?.get('agent')).toBe('1')
    expect(post[0].form?.get('virtio0')).toBe('local-lvm:0,import-from=local:import/pgi.qcow2')
    expect(post[0].headers.authorization).toBe(`PVEAPIToken=${TOKEN_ID}=5f0c6c1e-9a43-4b8e-8d7a-2b1f3c4d5e6f`)
    const polls = fake.calls(statusRoute(UPID_CREATE))
    expect(polls).toHaveLength(4)
    expect(polls[0].rawUrl).toContain('/tasks/UPID%3Apve1%3A0000ABCD%3A0001E240%3A6761A3F0%3Aqmcreate%3A100%3Aroot%40pam%3A/status')
    expect(clock.sleeps).toEqual([500, 750, 1125])
  })

  it('accepts WARNINGS: N as success and reports them as a warning', async () => {
    const io = new MemoryIo()
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', ok(UPID_CREATE))
      .on(statusRoute(UPID_CREATE), ok(stopped('WARNINGS: 2')))
      .on(logRoute(UPID_CREATE), {data: [{n: 1, t: 'WARN: no efidisk configured! Using temporary efivars disk.'}, {n: 2, t: 'TASK WARNINGS: 2'}], total: 2})
    await client(fake, new FakeClock(), {io}).createVm('pve1', 100, {name: 'x'})
    expect(io.warnings.join('\n')).toMatch(/qmcreate ended with WARNINGS: 2.*efidisk/)
  })

  it('fails with PveTaskError holding the exit status and the tail of the log', async () => {
    const exit = "unable to create VM 100 - no such logical volume pve/data"
    const log = Array.from({length: 30}, (_, i) => ({n: i + 1, t: `line ${i + 1}`}))
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', ok(UPID_CREATE))
      .on(statusRoute(UPID_CREATE), ok(stopped(exit)))
      .on(logRoute(UPID_CREATE), (r) => {
        const start = Number(r.query.get('start'))
        const limit = Number(r.query.get('limit'))
        return {data: log.slice(start, start + limit), total: log.length}
      })
    const e = await rejection(client(fake).createVm('pve1', 100, {name: 'x'}))
    expect(e).toBeInstanceOf(PveTaskError)
    expect(e.code).toBe(ErrorCode.PVE_TASK_FAILED)
    const te = e as PveTaskError
    expect(te.exitstatus).toBe(exit)
    expect(te.logTail).toHaveLength(20)
    expect(te.logTail[0]).toBe('line 11')
    expect(te.logTail.at(-1)).toBe('line 30')
    expect(e.message).toContain(exit)
    expect(e.message).toContain('line 30')
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 100})
    expect(fake.calls(logRoute(UPID_CREATE)).map((r) => r.query.get('start'))).toEqual(['0', '10'])
  })

  it('times out with TimeoutError (exit 6) after the per-type timeout, which can be overridden', async () => {
    const fake = new FakePve().on('POST /nodes/pve1/qemu', ok(UPID_CREATE)).on(statusRoute(UPID_CREATE), ok(running))
    const clock = new FakeClock()
    const t0 = clock.t
    const e = await rejection(client(fake, clock, {taskTimeoutsMs: {qmcreate: 60_000}}).createVm('pve1', 100, {name: 'x'}))
    expect(e).toBeInstanceOf(TimeoutError)
    expect(e.exitCode).toBe(ExitCode.TIMEOUT)
    expect(e.message).toMatch(/qmcreate still running after 60 s/)
    expect(clock.t - t0).toBe(60_000)
    // per-call override wins
    const clock2 = new FakeClock()
    const e2 = await rejection(client(fake, clock2).waitTask('pve1', UPID_CREATE, {timeoutMs: 5000}))
    expect(e2.code).toBe(ErrorCode.TIMEOUT)
  })

  it('has long defaults for clones and image copies, short ones for start/shutdown', async () => {
    const {DEFAULT_TASK_TIMEOUTS_MS} = await import('../../../src/proxmox/client.js')
    expect(DEFAULT_TASK_TIMEOUTS_MS.qmclone).toBeGreaterThanOrEqual(60 * 60_000)
    expect(DEFAULT_TASK_TIMEOUTS_MS.imgcopy).toBeGreaterThanOrEqual(30 * 60_000)
    expect(DEFAULT_TASK_TIMEOUTS_MS.download).toBeGreaterThanOrEqual(60 * 60_000)
    expect(DEFAULT_TASK_TIMEOUTS_MS.qmstart).toBeLessThanOrEqual(10 * 60_000)
    expect(DEFAULT_TASK_TIMEOUTS_MS.qmshutdown).toBeLessThanOrEqual(10 * 60_000)
  })
})

describe('locks', () => {
  it('waits and retries "VM is locked (clone)" then succeeds', async () => {
    const fake = new FakePve().on('PUT /nodes/pve1/qemu/100/config', [fail(500, 'VM is locked (clone)'), fail(500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"), ok(null)])
    const io = new MemoryIo()
    const clock = new FakeClock()
    await client(fake, clock, {io}).updateVmConfig('pve1', 100, {memory: 8192})
    expect(fake.calls('PUT /nodes/pve1/qemu/100/config')).toHaveLength(3)
    expect(clock.sleeps).toEqual([750, 1500]) // 1 s, 2 s with jitter factor 0.75
    expect(io.text()).toMatch(/VM is locked \(clone\): waiting/)
  })

  it('gives up after the lock budget with PGI_PVE_LOCKED', async () => {
    const fake = new FakePve().on('PUT /nodes/pve1/qemu/100/config', fail(500, 'VM is locked (snapshot)'))
    const clock = new FakeClock()
    const e = await rejection(client(fake, clock, {retry: {lockTimeoutMs: 30_000}}).updateVmConfig('pve1', 100, {memory: 8192}))
    expect(e.code).toBe(ErrorCode.PVE_LOCKED)
    expect(e.message).toMatch(/still locked after \d+ s of retries: VM is locked \(snapshot\)/)
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 100})
    const n = fake.calls('PUT /nodes/pve1/qemu/100/config').length
    expect(n).toBeGreaterThan(2)
    expect(n).toBeLessThan(10)
  })

  it('retries a task that failed on a lock (nothing was applied), then succeeds', async () => {
    const u1 = upid('qmstart', 100, {start: 0x6761a3f0})
    const u2 = upid('qmstart', 100, {start: 0x6761a3f9})
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/status/start', [ok(u1), ok(u2)])
      .on(statusRoute(u1), ok({...stopped("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"), upid: u1, type: 'qmstart'}))
      .on(logRoute(u1), {data: [{n: 1, t: "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"}], total: 1})
      .on(statusRoute(u2), ok({...stopped('OK'), upid: u2, type: 'qmstart'}))
    await client(fake).startVm('pve1', 100)
    expect(fake.calls('POST /nodes/pve1/qemu/100/status/start')).toHaveLength(2)
  })
})

describe('typed API errors', () => {
  it('digest compare-and-swap: sends the digest, a mismatch is PGI_PVE_DIGEST_MISMATCH and is not retried', async () => {
    const fake = new FakePve().on('PUT /nodes/pve1/qemu/100/config', fail(500, 'detected modified configuration - file changed by other user? Try again.'))
    const e = await rejection(client(fake).updateVmConfig('pve1', 100, {memory: 8192, digest: 'a5f3c1e0d7b24c18f5a0e9d6c3b2a1f0e9d8c7b6'}))
    expect(fake.calls('PUT /nodes/pve1/qemu/100/config')).toHaveLength(1)
    expect(fake.requests[0].form?.get('digest')).toBe('a5f3c1e0d7b24c18f5a0e9d6c3b2a1f0e9d8c7b6')
    expect(e).toBeInstanceOf(PveApiError)
    expect(e.code).toBe(ErrorCode.PVE_DIGEST_MISMATCH)
    const f2 = new FakePve().on('PUT /nodes/pve1/qemu/100/config', fail(500, 'update VM 100: checksum mismatch'))
    expect((await rejection(client(f2).updateVmConfig('pve1', 100, {digest: 'x'}))).code).toBe(ErrorCode.PVE_DIGEST_MISMATCH)
  })

  it('400 Parameter verification failed: per-parameter errors', async () => {
    const fake = new FakePve().on(
      'POST /nodes/pve1/qemu',
      fail(400, 'Parameter verification failed.', {vmid: 'invalid format - value must be >= 100\n', name: 'invalid format - value does not look like a valid DNS name\n'}),
    )
    const e = (await rejection(client(fake).createVm('pve1', 42, {name: 'bad_name'}))) as PveApiError
    expect(e.code).toBe(ErrorCode.PVE_PARAMETERS)
    expect(e.status).toBe(400)
    expect(e.pveMessage).toBe('Parameter verification failed.')
    expect(e.parameterErrors).toEqual({vmid: 'invalid format - value must be >= 100\n', name: 'invalid format - value does not look like a valid DNS name\n'})
    expect(e.message).toContain('name: invalid format - value does not look like a valid DNS name')
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 42})
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
  })

  it('403: names the ACL path and the privilege', async () => {
    const fake = new FakePve().on('POST /nodes/pve1/qemu', fail(403, 'Permission check failed (/vms/100, VM.Allocate)'))
    const e = (await rejection(client(fake).createVm('pve1', 100, {name: 'x'}))) as PveApiError
    expect(e.code).toBe(ErrorCode.PVE_PERMISSION)
    expect(e.permission).toEqual({path: '/vms/100', privilege: 'VM.Allocate'})
    expect(e.suggestions.join(' ')).toContain('VM.Allocate on /vms/100')
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 100})
  })

  it('401 (no body, no content type) is PGI_PVE_AUTH', async () => {
    const fake = new FakePve().on('GET /version', {status: 401, reason: 'invalid token value!', body: '', contentType: null})
    const e = (await rejection(client(fake).version())) as PveApiError
    expect(e.code).toBe(ErrorCode.PVE_AUTH)
    expect(e.pveMessage).toBe('invalid token value!')
  })

  it('500 keeps the reason phrase as the PVE message', async () => {
    const fake = new FakePve().on('POST /nodes/pve1/qemu', fail(500, "unable to create VM 100 - VM 100 already exists on node 'pve2'"))
    const e = (await rejection(client(fake).createVm('pve1', 100, {name: 'x'}))) as PveApiError
    expect(e.code).toBe(ErrorCode.PVE_HTTP)
    expect(e.status).toBe(500)
    expect(e.pveMessage).toBe("unable to create VM 100 - VM 100 already exists on node 'pve2'")
  })

  it('a missing VM reads as undefined', async () => {
    const fake = new FakePve().on('GET /nodes/pve1/qemu/100/config', fail(500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"))
    expect(await client(fake).vmConfig('pve1', 100)).toBeUndefined()
  })

  it('refuses a token secret that is not a PVE token secret, without printing it', () => {
    expect(() => client(new FakePve(), new FakeClock(), {tokenSecret: {reveal: () => 'hunter2'} as never})).toThrow(/not a PVE token secret/)
  })
})

describe('network errors: no blind re-send', () => {
  const reset = () => new NetworkError('127.0.0.1:8006', 'ECONNRESET', 'ECONNRESET (socket hang up)', false)
  const refused = () => new NetworkError('127.0.0.1:8006', 'ECONNREFUSED', 'ECONNREFUSED', true)

  it('start: POST sent once, then the task list is re-read and the task it started is followed', async () => {
    const u = upid('qmstart', 100, {start: Math.floor(1_760_000_000_000 / 1000)})
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/status/start', {throw: reset()})
      .on('GET /nodes/pve1/tasks', ok([{upid: u, node: 'pve1', type: 'qmstart', id: '100', user: TOKEN_ID, starttime: Math.floor(1_760_000_000_000 / 1000), status: 'running', pid: 1, pstart: 1}]))
      .on(statusRoute(u), [ok({...running, type: 'qmstart', upid: u}), ok({...stopped('OK'), type: 'qmstart', upid: u})])
    await client(fake).startVm('pve1', 100)
    expect(fake.calls('POST /nodes/pve1/qemu/100/status/start')).toHaveLength(1)
    const list = fake.calls('GET /nodes/pve1/tasks')
    expect(list).toHaveLength(1)
    expect(list[0].query.get('typefilter')).toBe('qmstart')
    expect(list[0].query.get('vmid')).toBe('100')
    expect(fake.calls(statusRoute(u))).toHaveLength(2)
  })

  it('create: POST sent once; no task found, but the VM exists and is unlocked → done', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', {throw: reset()})
      .on('GET /nodes/pve1/tasks', ok([]))
      .on('GET /nodes/pve1/qemu/100/config', ok({name: 'x', digest: 'abc'}))
      .on('GET /nodes/pve1/qemu/100/status/current', [ok({vmid: 100, status: 'stopped', lock: 'create'}), ok({vmid: 100, status: 'stopped'})])
    await client(fake).createVm('pve1', 100, {name: 'x'})
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
    expect(fake.calls('GET /nodes/pve1/qemu/100/config')).toHaveLength(1)
    expect(fake.calls('GET /nodes/pve1/qemu/100/status/current')).toHaveLength(2)
  })

  it('create: POST sent once; state shows it was not applied → UnreachableError, nothing re-sent', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu', {throw: reset()})
      .on('GET /nodes/pve1/tasks', ok([]))
      .on('GET /nodes/pve1/qemu/100/config', fail(500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"))
    const e = await rejection(client(fake).createVm('pve1', 100, {name: 'x'}))
    expect(e).toBeInstanceOf(UnreachableError)
    expect(e.exitCode).toBe(ExitCode.UNREACHABLE)
    expect(e.message).toMatch(/re-reading the state shows the request was not applied/)
    expect(fake.calls('POST /nodes/pve1/qemu')).toHaveLength(1)
  })

  it('agent exec (no state to re-read) is not re-sent: outcome unknown', async () => {
    const fake = new FakePve().on('POST /nodes/pve1/qemu/100/agent/exec', {throw: reset()})
    const e = await rejection(client(fake).agentExec('pve1', 100, ['/usr/local/sbin/pgi-health']))
    expect(e.code).toBe(ErrorCode.UNREACHABLE)
    expect(e.message).toMatch(/cannot tell whether the hypervisor applied/)
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(1)
  })

  it('a refused connection (request never sent) is retried, also for POST', async () => {
    const u = upid('qmstart', 100)
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/status/start', [{throw: refused()}, ok(u)])
      .on(statusRoute(u), ok({...stopped('OK'), type: 'qmstart', upid: u}))
    await client(fake).startVm('pve1', 100)
    expect(fake.calls('POST /nodes/pve1/qemu/100/status/start')).toHaveLength(2)
  })

  it('a GET is retried after a reset, then fails with host:port', async () => {
    const fake = new FakePve().on('GET /version', [{throw: reset()}, ok({version: '9.1.2', release: '9.1', repoid: 'abc'})])
    expect((await client(fake).version()).version).toBe('9.1.2')
    const f2 = new FakePve().on('GET /version', {throw: reset()})
    const e = await rejection(client(f2, new FakeClock(), {retry: {networkRetries: 2}}).version())
    expect(e.code).toBe(ErrorCode.UNREACHABLE)
    expect(e.message).toContain('127.0.0.1:8006')
    expect(f2.calls('GET /version')).toHaveLength(3)
  })

  it('a TLS mismatch is never retried', async () => {
    const fake = new FakePve().on('GET /version', {throw: new TlsMismatchError('127.0.0.1:8006', 'AA', 'BB')})
    const e = await rejection(client(fake).version())
    expect(e.code).toBe(ErrorCode.TLS_MISMATCH)
    expect(fake.calls('GET /version')).toHaveLength(1)
  })
})

describe('encoding', () => {
  it('sshkeys: whole text percent-encoded with %20 for spaces (never +), as PVE\'s urlencoded format wants', async () => {
    const keys = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv+Lw/abc= ami@0130040Y\nssh-rsa AAAAB3Nza+C1yc2E= tech@region'
    const fake = new FakePve().on('PUT /nodes/pve1/qemu/100/config', ok(null))
    await client(fake).updateVmConfig('pve1', 100, {sshkeys: keys, description: 'pgi;image=2026.11.0&ring=canary+x', onboot: true, protection: false})
    const req = fake.requests[0]
    const sent = req.form!.get('sshkeys')!
    expect(sent).toBe(encodeURIComponent(keys))
    expect(sent).toMatch(/^[-%a-zA-Z0-9_.!~*'()]*$/) // PVE's urlencoded format
    expect(sent).toContain('ssh-ed25519%20AAAA')
    expect(sent).not.toContain('+')
    expect(decodeURIComponent(sent)).toBe(keys)
    // on the wire: the % of the encoded value is itself form-encoded
    expect(req.rawBody).toContain('sshkeys=ssh-ed25519%2520AAAAC3NzaC1lZDI1NTE5AAAAIOv%252BLw%252Fabc%253D%2520ami%25400130040Y%250Assh-rsa')
    // ; = & + in ordinary values are percent-encoded so the server does not split on them
    expect(req.rawBody).toContain('description=pgi%3Bimage%3D2026.11.0%26ring%3Dcanary%2Bx')
    expect(req.form!.get('description')).toBe('pgi;image=2026.11.0&ring=canary+x')
    expect(req.form!.get('onboot')).toBe('1')
    expect(req.form!.get('protection')).toBe('0')
  })

  it('does not double-encode sshkeys that are already encoded', () => {
    const enc = encodeURIComponent('ssh-ed25519 AAAA x@y')
    expect(encodeParams({sshkeys: enc}).sshkeys).toBe(enc)
  })

  it('sends an argv array as repeated parameters and unwraps guest agent results', async () => {
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/ping', ok({result: {}}))
      .on('GET /nodes/pve1/qemu/100/agent/network-get-interfaces', ok({result: [{name: 'eth0', 'ip-addresses': [{'ip-address': '192.0.2.101', 'ip-address-type': 'ipv4', prefix: 24}]}]}))
      .on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 4242}))
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', [ok({exited: 0}), ok({exited: 1, exitcode: 1, 'out-data': '{"healthy":false}\n', 'err-data': 'backup too old\n'})])
    const c = client(fake)
    expect(await c.agentPing('pve1', 100)).toBe(true)
    expect((await c.agentNetworkInterfaces('pve1', 100))[0].name).toBe('eth0')
    const r = await c.agentExec('pve1', 100, ['/usr/local/sbin/pgi-configure'], {inputData: '{"ami":{"login":"ami"}}'})
    expect(r).toEqual({exitcode: 1, stdout: '{"healthy":false}\n', stderr: 'backup too old\n', truncated: false})
    const exec = fake.calls('POST /nodes/pve1/qemu/100/agent/exec')[0]
    expect(exec.form!.getAll('command')).toEqual(['/usr/local/sbin/pgi-configure'])
    expect(exec.form!.get('input-data')).toBe('{"ami":{"login":"ami"}}')
    expect(fake.calls('GET /nodes/pve1/qemu/100/agent/exec-status')[0].query.get('pid')).toBe('4242')
  })

  it('agent ping: a guest without agent is false, a permission error throws', async () => {
    const f1 = new FakePve().on('POST /nodes/pve1/qemu/100/agent/ping', fail(500, 'QEMU guest agent is not running'))
    expect(await client(f1).agentPing('pve1', 100)).toBe(false)
    const f2 = new FakePve().on('POST /nodes/pve1/qemu/100/agent/ping', fail(403, 'Permission check failed (/vms/100, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)'))
    expect((await rejection(client(f2).agentPing('pve1', 100))).code).toBe(ErrorCode.PVE_PERMISSION)
  })
})

describe('upload', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgi-upload-'))
  })
  afterAll(async () => {
    await rm(dir, {recursive: true, force: true})
  })

  /** A file to upload and a fake PVE that accepts it (its imgcopy task ends OK). */
  async function uploadCase(name: string, data: Buffer) {
    const file = join(dir, name)
    await writeFile(file, data)
    const u = upid('imgcopy', '', {})
    const fake = new FakePve()
      .on('POST /nodes/pve1/storage/local/upload', ok(u))
      .on(statusRoute(u), ok({...stopped('OK'), type: 'imgcopy', upid: u}))
    return {file, data, u, fake}
  }

  it('streams a multipart body with checksum, exact length, progress, then waits for the imgcopy task', async () => {
    const {file, data, u, fake} = await uploadCase('pgi-2026.11.0.qcow2', Buffer.alloc(3 * 1024 * 1024 + 17, 7))
    const progress: number[] = []
    await client(fake).uploadFile('pve1', 'local', file, {filename: 'pgi-2026.11.0.qcow2', content: 'import', sha256: 'AB'.repeat(32), onProgress: (s) => progress.push(s)})
    const req = fake.calls('POST /nodes/pve1/storage/local/upload')[0]
    const body = req.bodyBytes!
    expect(Number(req.headers['content-length'])).toBe(body.length)
    const boundary = /boundary=(.+)$/.exec(req.headers['content-type'])![1]
    const text = body.toString('latin1')
    expect(text).toContain(`--${boundary}\r\nContent-Disposition: form-data; name="content"\r\n\r\nimport\r\n`)
    expect(text).toContain('name="checksum-algorithm"\r\n\r\nsha256\r\n')
    expect(text).toContain(`name="checksum"\r\n\r\n${'ab'.repeat(32)}\r\n`)
    expect(text).toContain('name="filename"; filename="pgi-2026.11.0.qcow2"')
    // the file is the last part and arrives intact
    const start = text.indexOf('\r\n\r\n', text.indexOf('filename="pgi-2026.11.0.qcow2"')) + 4
    expect(body.subarray(start, start + data.length).equals(data)).toBe(true)
    expect(text.endsWith(`\r\n--${boundary}--\r\n`)).toBe(true)
    expect(progress.at(-1)).toBe(data.length)
    expect(progress.length).toBeGreaterThan(2)
    expect(fake.calls(statusRoute(u))).toHaveLength(1)
  })

  it('--bwlimit paces the upload: 768 KiB at 1024 KiB/s take about 0.75 s, arrive intact, in small chunks', async () => {
    const {file, data, fake} = await uploadCase('paced.qcow2', Buffer.alloc(768 * 1024, 3))
    const progress: number[] = []
    const t = performance.now()
    await client(fake).uploadFile('pve1', 'local', file, {filename: 'paced.qcow2', content: 'import', bwlimitKiB: 1024, onProgress: (s) => progress.push(s)})
    const ms = performance.now() - t
    // the last chunk may leave at 0.625 s (6 of 128 KiB chunks before it); never faster than the limit
    expect(ms).toBeGreaterThanOrEqual(600)
    expect(progress.at(-1)).toBe(data.length)
    // chunks of 1/8 s of the rate (128 KiB), not 1 MiB
    expect(progress.length).toBeGreaterThanOrEqual(6)
    const body = fake.calls('POST /nodes/pve1/storage/local/upload')[0]!.bodyBytes!
    expect(body.includes(data)).toBe(true)
  })
})

describe('missing VMs', () => {
  it('only "Configuration file … qemu-server/N.conf does not exist" means no such VM; other "does not exist" errors throw', async () => {
    const f1 = new FakePve().on('GET /nodes/pve1/qemu/100/status/current', fail(500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"))
    expect(await client(f1).vmStatus('pve1', 100)).toBeUndefined()
    const f2 = new FakePve().on('GET /nodes/pve1/qemu/100/config', fail(500, "storage 'tank' does not exist"))
    expect((await rejection(client(f2).vmConfig('pve1', 100))).code).toBe(ErrorCode.PVE_HTTP)
    const f3 = new FakePve().on('DELETE /nodes/pve1/qemu/100', fail(500, "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"))
    await client(f3).deleteVm('pve1', 100, {purge: true, destroyUnreferencedDisks: true})
    expect(f3.calls('DELETE /nodes/pve1/qemu/100')[0].query.get('destroy-unreferenced-disks')).toBe('1')
  })
})

describe('PVE message sources', () => {
  it('prefers the body "message" over the reason phrase, and reads a plain-text body', async () => {
    const f1 = new FakePve().on('POST /nodes/pve1/qemu', {status: 500, reason: 'unable to create VM 100 - unable to parse drive options', body: JSON.stringify({data: null, message: "unable to create VM 100 - unable to parse drive options 'virtio0'\n"})})
    expect(((await rejection(client(f1).createVm('pve1', 100, {name: 'x'}))) as PveApiError).pveMessage).toBe("unable to create VM 100 - unable to parse drive options 'virtio0'")
    const f2 = new FakePve().on('GET /version', {status: 403, reason: '', body: 'Permission check failed (/, Sys.Audit)', contentType: 'text/plain'})
    const e = (await rejection(client(f2).version())) as PveApiError
    expect(e.code).toBe(ErrorCode.PVE_PERMISSION)
    expect(e.permission).toEqual({path: '/', privilege: 'Sys.Audit'})
  })
})

describe('concurrency and timeouts', () => {
  it('parallel requests on one client keep their own answers and errors (with where)', async () => {
    const fake = new FakePve()
      .on('GET /nodes/pve1/qemu/101/config', async () => (await new Promise((r) => setTimeout(r, 20)), fail(403, 'Permission check failed (/vms/101, VM.Audit)')))
      .on('GET /nodes/pve1/qemu/102/config', ok({name: 'b', digest: 'd2'}))
      .on('GET /nodes/pve2/qemu/103/config', async () => (await new Promise((r) => setTimeout(r, 5)), fail(500, 'unexpected server failure')))
    const c = client(fake)
    const [a, b, d] = await Promise.allSettled([c.vmConfig('pve1', 101), c.vmConfig('pve1', 102), c.vmConfig('pve2', 103)])
    expect(a.status === 'rejected' && (a.reason as PveApiError).permission).toEqual({path: '/vms/101', privilege: 'VM.Audit'})
    expect(a.status === 'rejected' && (a.reason as PgiError).where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 101})
    expect(b.status === 'fulfilled' && b.value?.digest).toBe('d2')
    expect(d.status === 'rejected' && (d.reason as PveApiError).pveMessage).toBe('unexpected server failure')
    expect(d.status === 'rejected' && (d.reason as PgiError).where).toEqual({hypervisor: 'hv-test', node: 'pve2', vmid: 103})
  })

  it('a request that gets no answer times out (request deadline), is PGI_UNREACHABLE, and the hypervisor is not asked again', async () => {
    const hang = (r: Recorded) =>
      new Promise<Reply>((_res, rej) => r.signal?.addEventListener('abort', () => rej(Object.assign(new Error('This operation was aborted'), {name: 'AbortError'}))))
    const fake = new FakePve().on('GET /nodes/pve1/qemu/100/status/current', hang).on('GET /version', ok({version: '9.1.2'}))
    const c = client(fake, new FakeClock(), {requestTimeoutMs: 30, retry: {networkRetries: 1}})
    const e = await rejection(c.vmStatus('pve1', 100))
    expect(e.code).toBe(ErrorCode.UNREACHABLE)
    expect(e.message).toContain('no answer to GET /nodes/pve1/qemu/100/status/current within 30 ms')
    expect(e.where).toEqual({hypervisor: 'hv-test', node: 'pve1', vmid: 100})
    // silent for a whole deadline: not retried, and later requests fail at once with the same cause
    expect(fake.calls('GET /nodes/pve1/qemu/100/status/current')).toHaveLength(1)
    const again = await rejection(c.version())
    expect(again.code).toBe(ErrorCode.UNREACHABLE)
    expect(again.message).toBe(e.message)
    expect(fake.calls('GET /version')).toHaveLength(0)
  })

  it('agent exec gives up with TimeoutError when the guest command does not exit', async () => {
    const fake = new FakePve().on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 9})).on('GET /nodes/pve1/qemu/100/agent/exec-status', ok({exited: 0}))
    const e = await rejection(client(fake).agentExec('pve1', 100, ['/usr/local/sbin/pgi-backup'], {timeoutMs: 10_000}))
    expect(e).toBeInstanceOf(TimeoutError)
    expect(e.message).toMatch(/pgi-backup \(pid 9\) still running/)
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(1)
  })

  it('agent exec: a busy guest whose agent misses answers is asked again, the command not re-sent', async () => {
    const silent = fail(500, 'QEMU guest agent is not running')
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 12}))
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', [ok({exited: 0}), silent, fail(500, "VM 100 qmp command 'guest-exec-status' failed - got timeout"), silent, ok({exited: 0}), ok({exited: 1, exitcode: 0, 'out-data': '/var/lib/pgi/backups/x\n'})])
    const r = await client(fake).agentExec('pve1', 100, ['/usr/local/sbin/pgi-backup'], {timeoutMs: 60 * 60_000})
    expect(r.exitcode).toBe(0)
    expect(r.stdout).toBe('/var/lib/pgi/backups/x\n')
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(1)
    expect(fake.calls('GET /nodes/pve1/qemu/100/agent/exec-status')).toHaveLength(6)
  })

  it('agent exec: an agent silent for five minutes in a row is an error naming the command; a refusal is not waited on', async () => {
    const {AGENT_SILENCE_MS} = await import('../../../src/proxmox/agent.js')
    const clock = new FakeClock()
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 13}))
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', [ok({exited: 0}), fail(500, 'QEMU guest agent is not running')])
    const e = (await rejection(client(fake, clock).agentExec('pve1', 100, ['/usr/local/sbin/pgi-backup'], {timeoutMs: 60 * 60_000}))) as PveApiError
    expect(e).toBeInstanceOf(PveApiError)
    expect(e.message).toMatch(/has not answered for 30\d s while guest command \/usr\/local\/sbin\/pgi-backup, pid 13, ran/)
    expect(clock.sleeps.reduce((a, b) => a + b, 0)).toBeLessThan(AGENT_SILENCE_MS + 10_000)
    expect(fake.calls('POST /nodes/pve1/qemu/100/agent/exec')).toHaveLength(1)
    const refused = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 14}))
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', fail(500, "Agent error: Invalid parameter 'pid'"))
    expect((await rejection(client(refused).agentExec('pve1', 100, ['/usr/local/sbin/pgi-backup']))).message).toMatch(/Invalid parameter 'pid'/)
    expect(refused.calls('GET /nodes/pve1/qemu/100/agent/exec-status')).toHaveLength(1)
  })
})

describe('reason phrases', () => {
  it('decodes a UTF-8 reason phrase received as latin1', async () => {
    const {decodeReason} = await import('../../../src/proxmox/client.js')
    const wire = Buffer.from("storage 'données' does not exist", 'utf8').toString('latin1')
    expect(decodeReason(wire)).toBe("storage 'données' does not exist")
    expect(decodeReason('plain')).toBe('plain')
    const fake = new FakePve().on('GET /nodes/pve1/storage/donn/status', {status: 500, reason: wire})
    expect(((await rejection(client(fake).storageStatus('pve1', 'donn'))) as PveApiError).pveMessage).toBe("storage 'données' does not exist")
  })
})

describe('guest agent text', () => {
  it('file-write sends UTF-8 base64 itself (encode=0); file-read and exec output are decoded from PVE\'s byte strings', async () => {
    const wire = (t: string) => Buffer.from(t, 'utf8').toString('latin1') // what PVE's JSON holds
    const fake = new FakePve()
      .on('POST /nodes/pve1/qemu/100/agent/file-write', ok(null))
      .on('GET /nodes/pve1/qemu/100/agent/file-read', ok({content: wire('{"name":"Lycée Frédéric Mistral"}\n')}))
      .on('POST /nodes/pve1/qemu/100/agent/exec', ok({pid: 3}))
      .on('GET /nodes/pve1/qemu/100/agent/exec-status', ok({exited: 1, exitcode: 0, 'out-data': wire('sauvegarde terminée ✓\n')}))
    const c = client(fake)
    await c.agentFileWrite('pve1', 100, '/etc/pgi/site.json', '{"name":"Lycée"}')
    const w = fake.calls('POST /nodes/pve1/qemu/100/agent/file-write')[0].form!
    expect(w.get('encode')).toBe('0')
    expect(Buffer.from(w.get('content')!, 'base64').toString('utf8')).toBe('{"name":"Lycée"}')
    expect(await c.agentFileRead('pve1', 100, '/etc/pgi/image.json')).toBe('{"name":"Lycée Frédéric Mistral"}\n')
    expect((await c.agentExec('pve1', 100, ['/usr/local/sbin/pgi-backup'])).stdout).toBe('sauvegarde terminée ✓\n')
  })

  it('exec input must be ASCII; asciiJson escapes the rest so the guest reads the same JSON', async () => {
    const {asciiJson} = await import('../../../src/proxmox/client.js')
    const v = {ami: {login: 'ami', password: 'pâté-ß-€'}}
    const j = asciiJson(v)
    expect(j).toMatch(/^[\x20-\x7e]*$/)
    expect(JSON.parse(j)).toEqual(v)
    const fake = new FakePve()
    expect((await rejection(client(fake).agentExec('pve1', 100, ['/usr/local/sbin/pgi-configure'], {inputData: JSON.stringify(v)}))).code).toBe(ErrorCode.INTERNAL)
    expect(fake.requests).toHaveLength(0)
  })
})
