import {readFileSync} from 'node:fs'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {startTestLab, type TestLab} from './lab-harness.js'

describe('lab API (simulated backend)', () => {
  let lab: TestLab
  beforeAll(async () => {
    lab = await startTestLab()
  })
  afterAll(async () => lab?.close())

  it('answers /version in the PVE envelope with PVE content type', async () => {
    const r = await lab.call('GET', '/version')
    expect(r.status).toBe(200)
    expect(r.headers['content-type']).toBe('application/json;charset=UTF-8')
    expect(r.body.data.release).toBe('9.1')
  })

  it('creates a VM with an imported disk, a data disk and cloud-init, then starts it and the agent answers', async () => {
    const create = await lab.call('POST', '/nodes/lab1/qemu', {
      vmid: 1001, name: 'pgi-0130040y', cores: 2, memory: 2048, agent: 1, tags: 'PGI;image-2026 prod',
      virtio0: 'local-vm:8', virtio1: 'local-vm:4,serial=pgi-data', ide2: 'local-vm:cloudinit',
      net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.1.0.10/16,gw=10.1.0.1', ciuser: 'ami', cipassword: 'S3cret!',
      sshkeys: encodeURIComponent('ssh-ed25519 AAAAC3Nza lab@test\n').replace(/'/g, '%27'), boot: 'order=virtio0',
    })
    expect(create.status, JSON.stringify(create.body)).toBe(200)
    expect(create.body.data).toMatch(/^UPID:lab1:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:qmcreate:1001:pgi@pve!deploy:$/)
    const t = await lab.wait(create.body.data)
    expect(t.exitstatus).toBe('OK')
    const cfg = await lab.call('GET', '/nodes/lab1/qemu/1001/config')
    expect(cfg.body.data.tags).toBe('image-2026;pgi;prod')
    expect(cfg.body.data.cipassword).toBe('**********')
    expect(cfg.body.data.virtio1).toMatch(/^local-vm:1001\/vm-1001-disk-1\.qcow2,serial=pgi-data,size=4G$/)
    expect(cfg.body.data.ide2).toBe('local-vm:1001/vm-1001-cloudinit.qcow2,media=cdrom')
    expect(cfg.body.data.sshkeys).toContain('ssh-ed25519%20')
    expect(cfg.body.data.digest).toMatch(/^[0-9a-f]{40}$/)
    const start = await lab.call('POST', '/nodes/lab1/qemu/1001/status/start')
    expect((await lab.wait(start.body.data)).exitstatus).toBe('OK')
    const st = await lab.call('GET', '/nodes/lab1/qemu/1001/status/current')
    expect(st.body.data.status).toBe('running')
    expect((await lab.call('POST', '/nodes/lab1/qemu/1001/agent/ping')).body).toEqual({data: {result: {}}})
    const net = await lab.call('GET', '/nodes/lab1/qemu/1001/agent/network-get-interfaces')
    const eth0 = net.body.data.result.find((i: {name: string}) => i.name === 'eth0')
    expect(eth0['ip-addresses'][0]).toEqual({'ip-address': '10.1.0.10', 'ip-address-type': 'ipv4', prefix: 16})
    const ex = await lab.call('POST', '/nodes/lab1/qemu/1001/agent/exec', {command: ['/usr/local/sbin/pgi-health']})
    const es = await lab.call('GET', '/nodes/lab1/qemu/1001/agent/exec-status', {pid: ex.body.data.pid})
    expect(es.body.data.exited).toBe(1) // PVE passes the agent's booleans on as 1/0
    expect(JSON.parse(es.body.data['out-data']).healthy).toBe(true)
  })

  it('rejects unknown and malformed parameters with the PVE 400 shape', async () => {
    const r = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 99, name: 'bad_name', bogus: 1, description: 'x'.repeat(8193)})
    expect(r.status).toBe(400)
    expect(r.reason).toBe('Parameter verification failed.')
    expect(r.body.data).toBeNull()
    expect(r.body.message).toBe('Parameter verification failed.\n')
    expect(r.body.errors).toEqual({
      vmid: 'invalid format - value does not look like a valid VM ID\n',
      name: 'invalid format - value does not look like a valid DNS name\n',
      bogus: 'property is not defined in schema and the schema does not allow additional properties',
      description: 'value may only be 8192 characters long',
    })
    const pk = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {sshkeys: 'ssh-ed25519+AAAA'})
    expect(pk.status).toBe(400)
    expect(pk.body.errors.sshkeys).toMatch(/invalid urlencoded string/)
  })

  it('refuses a config change with a stale digest, and accepts the current one', async () => {
    const cfg = await lab.call('GET', '/nodes/lab1/qemu/1001/config')
    const digest = cfg.body.data.digest as string
    const ok = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'first', digest})
    expect(ok.status).toBe(200)
    expect(ok.body).toEqual({data: null})
    const stale = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'second', digest})
    expect(stale.status).toBe(500)
    // what qemu-server's update_vm_api says (resize and move_disk say "detected modified configuration")
    expect(stale.reason).toBe('checksum mismatch (file change by other user?)')
    expect(stale.body).toEqual({data: null, message: 'checksum mismatch (file change by other user?)\n'})
  })

  it('compare-and-swap under concurrency: of many writes carrying the same digest exactly one applies (checked under the config lock, as qemu-server does)', async () => {
    const digest = (await lab.call('GET', '/nodes/lab1/qemu/1001/config')).body.data.digest as string
    const writes = await Promise.all(Array.from({length: 8}, (_, i) => lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: `writer ${i}`, digest})))
    const won = writes.filter((w) => w.status === 200)
    expect(won).toHaveLength(1)
    expect(writes.filter((w) => w.status === 500 && w.reason === 'checksum mismatch (file change by other user?)')).toHaveLength(7)
    const after = (await lab.call('GET', '/nodes/lab1/qemu/1001/config')).body.data
    expect(after.description).toBe(`writer ${writes.indexOf(won[0]!)}`)
    expect(after.digest).not.toBe(digest)
    // `digest` is a declared parameter of PUT …/config in the trimmed PVE schema (both versions)
    for (const v of ['8.4', '9.1']) {
      const schema = JSON.parse(readFileSync(new URL(`../../../src/lab/pve-schema/pve-${v}.json`, import.meta.url), 'utf8')) as {path: string; info: Record<string, {parameters: {properties: Record<string, {type: string; maxLength?: number}>}}>}[]
      const put = schema.find((e) => e.path === '/nodes/{node}/qemu/{vmid}/config')!.info.PUT!
      expect(put.parameters.properties.digest).toMatchObject({type: 'string', maxLength: 40})
    }
  })

  it('keeps a detached disk as unusedN, drops that entry when the volume is attached again, and frees the volume when unusedN is deleted', async () => {
    const cfgOf = async () => (await lab.call('GET', '/nodes/lab1/qemu/1001/config')).body.data as Record<string, string>
    const os = (await cfgOf()).virtio0!.split(',')[0]!
    expect((await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {delete: 'virtio0'})).status).toBe(200)
    expect((await cfgOf()).unused0).toBe(os)
    // PVE's write_vm_config: "remove 'unusedX' settings if we re-add a volume"
    expect((await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {virtio0: os})).status).toBe(200)
    let cfg = await cfgOf()
    expect(cfg.virtio0!.split(',')[0]).toBe(os)
    expect(Object.keys(cfg).filter((k) => k.startsWith('unused'))).toEqual([])
    // a second disk, detached, then its unusedN deleted: the volume is gone (PVE removes it)
    expect((await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {virtio2: 'local-vm:1'})).status).toBe(200)
    const extra = (await cfgOf()).virtio2!.split(',')[0]!
    expect((await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {delete: 'virtio2'})).status).toBe(200)
    cfg = await cfgOf()
    const key = Object.keys(cfg).find((k) => k.startsWith('unused') && cfg[k] === extra)!
    expect(await lab.rt.backend.volumeInfo('lab1', extra)).toBeDefined()
    expect((await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {delete: key})).status).toBe(200)
    expect(await lab.rt.backend.volumeInfo('lab1', extra)).toBeUndefined()
    expect(Object.keys(await cfgOf()).filter((k) => k.startsWith('unused'))).toEqual([])
  })

  it('locks a VM during a snapshot: other writes fail with "VM is locked (snapshot)"', async () => {
    lab.rt.api.faults.config // keep the default no-fault config
    const backend = lab.rt.backend as unknown as {snapshotCreate: (...a: unknown[]) => Promise<void>}
    const orig = backend.snapshotCreate.bind(backend)
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    backend.snapshotCreate = async (...a: unknown[]) => {
      await gate
      return orig(...a)
    }
    const snap = await lab.call('POST', '/nodes/lab1/qemu/1001/snapshot', {snapname: 'before_update'})
    expect(snap.status).toBe(200)
    const put = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'during'})
    expect(put.status).toBe(500)
    expect(put.reason).toBe('VM is locked (snapshot)')
    release()
    expect((await lab.wait(snap.body.data)).exitstatus).toBe('OK')
    backend.snapshotCreate = orig
    const list = await lab.call('GET', '/nodes/lab1/qemu/1001/snapshot')
    expect(list.body.data.map((s: {name: string}) => s.name)).toEqual(['before_update', 'current'])
  })

  it('times out on a busy config lock with PVE\'s text', async () => {
    let release!: () => void
    const held = lab.rt.api.locks.with('lab1', 1001, () => new Promise<void>((r) => (release = r)))
    const put = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'busy'})
    expect(put.status).toBe(500)
    expect(put.reason).toBe("can't lock file '/var/lock/qemu-server/lock-1001.conf' - got timeout")
    release()
    await held
  })

  it('answers 403 with the real permission text for a token without the privilege', async () => {
    const r = await lab.call('POST', '/nodes/lab1/qemu/1001/status/stop', {}, {auth: {token: 'audit@pve!ro=11111111-2222-4333-8444-555566667777'}})
    expect(r.status).toBe(403)
    expect(r.reason).toBe('Permission check failed (/vms/1001, VM.PowerMgmt)')
    const c = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {cores: 4}, {auth: {token: 'audit@pve!ro=11111111-2222-4333-8444-555566667777'}})
    expect(c.reason).toBe('Permission check failed (/vms/1001, VM.Config.Disk|VM.Config.CDROM|VM.Config.CPU|VM.Config.Memory|VM.Config.Network|VM.Config.HWType|VM.Config.Options|VM.Config.Cloudinit)')
  })

  it('authenticates tickets, requires the CSRF token on writes, and rejects bad credentials with 401', async () => {
    const bad = await lab.call('POST', '/access/ticket', {username: 'root@pam', password: 'wrong'}, {auth: 'none'})
    expect(bad.status).toBe(401)
    const t = await lab.call('POST', '/access/ticket', {username: 'root@pam', password: 'lab-root-password'}, {auth: 'none'})
    expect(t.status).toBe(200)
    const {ticket, CSRFPreventionToken} = t.body.data
    expect(ticket).toMatch(/^PVE:root@pam:[0-9A-F]{8}::/)
    expect((await lab.call('GET', '/nodes/lab1/qemu', {}, {auth: {cookie: ticket}})).status).toBe(200)
    const noCsrf = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'x'}, {auth: {cookie: ticket}})
    expect(noCsrf.status).toBe(401)
    const withCsrf = await lab.call('PUT', '/nodes/lab1/qemu/1001/config', {description: 'x'}, {auth: {cookie: ticket, csrf: CSRFPreventionToken}})
    expect(withCsrf.status).toBe(200)
    expect((await lab.call('GET', '/version', {}, {auth: 'none'})).status).toBe(401)
    expect((await lab.call('GET', '/version', {}, {auth: {token: 'pgi@pve!deploy=wrong'}})).status).toBe(401)
  })

  it('refuses filesystem paths from tokens, as PVE does for anyone but root@pam', async () => {
    const r = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 1500, virtio0: 'local-vm:0,import-from=/var/lib/x.qcow2'})
    expect(r.status).toBe(500)
    expect(r.reason).toBe('Only root can pass arbitrary filesystem paths.')
    // a bare size is not a volume: the drive's `file` fails its format before any access check
    const bare = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 1500, virtio0: '32'})
    expect(bare.status).toBe(400)
    expect(bare.body.errors).toEqual({virtio0: "invalid format - format error\nvirtio0.file: invalid format - unable to parse volume ID '32'\n\n"})
  })

  it('refuses skiplock for tokens', async () => {
    const r = await lab.call('POST', '/nodes/lab1/qemu/1001/status/stop', {skiplock: 1})
    expect(r.status).toBe(400)
    expect(r.body.errors).toEqual({skiplock: 'Only root may use this option.'})
  })

  it('fails to create an existing VM with PVE\'s message', async () => {
    const r = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 1001, virtio0: 'local-vm:1'})
    expect(r.status).toBe(500)
    expect(r.reason).toBe("unable to create VM 1001 - VM 1001 already exists on node 'lab1'")
  })

  it('returns nextid as a string and rejects a taken vmid', async () => {
    expect((await lab.call('GET', '/cluster/nextid')).body).toEqual({data: '100'})
    const r = await lab.call('GET', '/cluster/nextid', {vmid: 1001})
    expect(r.status).toBe(400)
  })

  it('logs requests with parameter names but never secret values', async () => {
    const log = await lab.rt.readRequestLog()
    const create = log.find((e) => e.method === 'POST' && e.path === '/nodes/lab1/qemu' && e.status === 200)
    expect(create?.params).toContain('cipassword')
    const text = JSON.stringify(log)
    expect(text).not.toContain('S3cret!')
    expect(text).not.toContain('lab-root-password')
  })
})
