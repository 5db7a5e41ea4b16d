import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {SimulatedBackend} from '../../../src/lab/simulated-backend.js'
import {loadPveSchema, validateResponse} from '../../helpers/pve-schema.js'
import {startTestLab, type TestLab} from './lab-harness.js'

/**
 * The parts of the PVE API surface clients other than pgi rely on (issue 15): PVE's error
 * bodies and texts, endpoints that answered 501, a start of a running VM, pending changes and
 * hot-plugged disks on a running VM, agent info/get-osinfo and file-read ranges.
 */
describe('the lab as PVE clients see it (simulated backend, PVE 9.1)', () => {
  let lab: TestLab
  const schema = loadPveSchema('9.1')
  const V = '/nodes/lab1/qemu/300'
  const ok = async (method: string, path: string, params: Record<string, string | number | string[]> = {}) => {
    const r = await lab.call(method, path, params)
    expect(r.status, `${method} ${path}: ${r.status} ${r.reason}`).toBe(200)
    if (typeof r.body.data === 'string' && r.body.data.startsWith('UPID:')) expect((await lab.wait(r.body.data)).exitstatus, `${method} ${path}`).toBe('OK')
    return r.body.data
  }
  const config = async () => (await lab.call('GET', `${V}/config`)).body.data as Record<string, unknown>

  beforeAll(async () => {
    lab = await startTestLab()
    await ok('POST', '/nodes/lab1/qemu', {vmid: 300, name: 'surface', memory: 1024, cores: 1, agent: 1, virtio0: 'local-vm:1', ide2: 'local-vm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.9.0.5/24,gw=10.9.0.1'})
  })
  afterAll(async () => lab?.close())

  it('answers errors as PVE: JSON with message; 401 without a body; PVE\'s text for an unknown path', async () => {
    const missing = await lab.call('GET', '/nodes/lab1/qemu/999/config')
    expect(missing.status).toBe(500)
    expect(missing.body).toEqual({data: null, message: "Configuration file 'nodes/lab1/qemu-server/999.conf' does not exist\n"})
    const bad = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 301, cores: 'two'})
    expect(bad.status).toBe(400)
    expect(bad.body).toEqual({data: null, errors: {cores: "type check ('integer') failed - got 'two'"}, message: 'Parameter verification failed.\n'})
    const denied = await lab.call('POST', `${V}/status/stop`, {}, {auth: {token: 'audit@pve!ro=11111111-2222-4333-8444-555566667777'}})
    expect(denied.status).toBe(403)
    expect(denied.body).toEqual({data: null, message: 'Permission check failed (/vms/300, VM.PowerMgmt)\n'})
    const anon = await lab.call('GET', '/version', {}, {auth: 'none'})
    expect(anon.status).toBe(401)
    expect(anon.body).toBeUndefined()
    expect(anon.headers['content-length']).toBe('0')
    const unknown = await lab.call('GET', '/foo')
    expect(unknown.status).toBe(501)
    expect(unknown.reason).toBe("Method 'GET /foo' not implemented")
    expect(unknown.body).toEqual({data: null, message: "Method 'GET /foo' not implemented"})
    expect((await lab.call('DELETE', '/version')).reason).toBe("Method 'DELETE /version' not implemented")
    // credentials come first, unknown paths included
    expect((await lab.call('GET', '/foo', {}, {auth: 'none'})).status).toBe(401)
  })

  it('answers /version and node status as the schema requires', async () => {
    const v = await ok('GET', '/version')
    expect(validateResponse(schema, 'GET', '/version', v)).toEqual([])
    expect(v.repoid).toMatch(/^[0-9a-f]{8,64}$/)
    const st = await ok('GET', '/nodes/lab1/status')
    expect(validateResponse(schema, 'GET', '/nodes/lab1/status', st)).toEqual([])
    expect(Object.keys(st)).toEqual(expect.arrayContaining(['boot-info', 'cpu', 'cpuinfo', 'current-kernel', 'loadavg', 'memory', 'pveversion', 'rootfs']))
  })

  it('serves the endpoints that answered 501: storage, cluster status, pools, permissions', async () => {
    expect((await ok('GET', '/storage')).map((s: {storage: string}) => s.storage)).toEqual(['local', 'local-vm'])
    expect(await ok('GET', '/cluster/status')).toEqual([expect.objectContaining({type: 'node', name: 'lab1', online: 1})])
    expect(await ok('GET', '/pools')).toEqual([])
    const perms = await ok('GET', '/access/permissions')
    expect(perms['/']).toMatchObject({'VM.Allocate': 1, 'VM.Audit': 1})
    expect(perms['/']['Sys.PowerMgmt']).toBeUndefined()
  })

  it('applies changes to a running VM as PVE: hot-pluggable ones at once, the rest pending until the next start', async () => {
    await ok('POST', `${V}/status/start`)
    await ok('PUT', `${V}/config`, {cores: 2, description: 'now', onboot: 1})
    const pending = (await ok('GET', `${V}/pending`)) as {key: string; value?: string; pending?: string}[]
    expect(pending.find((p) => p.key === 'cores')).toEqual({key: 'cores', value: '1', pending: '2'})
    expect(pending.find((p) => p.key === 'description')).toEqual({key: 'description', value: 'now'})
    expect((await config()).cores).toBe(2) // the config with pending changes applied
    expect((await lab.call('GET', `${V}/config`, {current: 1})).body.data.cores).toBe(1)
    await ok('POST', `${V}/status/shutdown`)
    expect(((await ok('GET', `${V}/pending`)) as {key: string; pending?: string}[]).filter((p) => p.pending !== undefined)).toEqual([])
    expect((await lab.call('GET', `${V}/config`, {current: 1})).body.data.cores).toBe(2)
  })

  it('hot-plugs a new disk into a running VM (hotplug includes disk by default), and unplugs it to unusedN', async () => {
    await ok('POST', `${V}/status/start`)
    await ok('PUT', `${V}/config`, {virtio5: 'local-vm:2,serial=blank'})
    const cfg = await config()
    expect(cfg.virtio5).toMatch(/^local-vm:300\/vm-300-disk-\d\.qcow2,serial=blank,size=2G$/)
    expect(((await ok('GET', `${V}/pending`)) as {key: string; pending?: string}[]).find((p) => p.key === 'virtio5')?.pending).toBeUndefined()
    // the running guest has it
    const volid = String(cfg.virtio5).split(',')[0]!
    const guest = () => (lab.rt.backend as SimulatedBackend).guestDisks('lab1', 300).map((d) => `${d.key}:${d.volid}:${d.serial ?? ''}`)
    expect(guest()).toContain(`virtio5:${volid}:blank`)
    expect(await lab.rt.backend.volumeInfo('lab1', volid)).toMatchObject({size: 2 * 2 ** 30})
    // detach while running: unplugged at once, the volume kept as unusedN
    await ok('PUT', `${V}/config`, {delete: 'virtio5'})
    const after = await config()
    expect(after.virtio5).toBeUndefined()
    expect(guest().some((d) => d.startsWith('virtio5:'))).toBe(false)
    expect(Object.entries(after).find(([k]) => /^unused\d+$/.test(k))?.[1]).toBe(volid)
  })

  it('keeps a new disk pending on a running VM whose hotplug excludes disk, and attaches it at the next start', async () => {
    await ok('PUT', `${V}/config`, {hotplug: 'network,usb'})
    await ok('PUT', `${V}/config`, {scsi3: 'local-vm:1'})
    const pending = ((await ok('GET', `${V}/pending`)) as {key: string; value?: string; pending?: string}[]).find((p) => p.key === 'scsi3')
    expect(pending?.value).toBeUndefined()
    expect(pending?.pending).toMatch(/^local-vm:300\/vm-300-disk-\d\.qcow2,size=1G$/)
    expect((lab.rt.backend as SimulatedBackend).guestDisks('lab1', 300).map((d) => d.key)).not.toContain('scsi3')
    await ok('POST', `${V}/status/stop`)
    await ok('POST', `${V}/status/start`)
    expect((await lab.call('GET', `${V}/config`, {current: 1})).body.data.scsi3).toBe(pending!.pending)
    expect((lab.rt.backend as SimulatedBackend).guestDisks('lab1', 300).map((d) => d.key)).toContain('scsi3')
  })

  it('starting a running VM gives a task that fails, as PVE does', async () => {
    const r = await lab.call('POST', `${V}/status/start`)
    expect(r.status).toBe(200)
    expect(r.body.data).toMatch(/^UPID:lab1:.*:qmstart:300:/)
    expect(await lab.wait(r.body.data)).toMatchObject({status: 'stopped', exitstatus: 'VM 300 already running'})
  })

  it('answers agent info and get-osinfo, and reads a file range (offset/count)', async () => {
    const info = await ok('GET', `${V}/agent/info`)
    expect(info.result.supported_commands).toContainEqual({name: 'guest-get-osinfo', enabled: true, 'success-response': true})
    expect((await ok('GET', `${V}/agent/get-osinfo`)).result).toMatchObject({id: 'debian', 'version-id': '12'})
    await ok('POST', `${V}/agent/file-write`, {file: '/tmp/r.txt', content: '0123456789'})
    expect(await ok('GET', `${V}/agent/file-read`, {file: '/tmp/r.txt'})).toEqual({content: '0123456789', 'bytes-read': 10})
    expect(await ok('GET', `${V}/agent/file-read`, {file: '/tmp/r.txt', offset: 3, count: 4})).toEqual({content: '3456', 'bytes-read': 4, truncated: 1})
    expect(await ok('GET', `${V}/agent/file-read`, {file: '/tmp/r.txt', offset: 8, decode: 0})).toEqual({content: Buffer.from('89').toString('base64'), 'bytes-read': 2})
  })
})
