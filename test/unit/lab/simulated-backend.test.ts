import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {TaskContext, VmSpec} from '../../../src/lab/backend.js'
import {LAB_STORAGES} from '../../../src/lab/runtime.js'
import {SimulatedBackend} from '../../../src/lab/simulated-backend.js'

const ctx: TaskContext = {upid: 'UPID:test', log: () => undefined, signal: new AbortController().signal}

describe('simulated backend model', () => {
  let dir: string
  const b = new SimulatedBackend({timeScale: 0})
  let spec: VmSpec

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pgi-sim-'))
    await b.init({dir, nodes: [{name: 'lab1', index: 0}], storages: LAB_STORAGES(dir), pveVersion: '9.1', log: () => undefined})
    const src = join(dir, 'upload')
    await writeFile(src, Buffer.alloc(1024))
    await b.importFile('lab1', 'local', 'import', 'pgi-tryton-2026.11.0.qcow2', src, ctx)
    const os = await b.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'qcow2', importFrom: 'local:import/pgi-tryton-2026.11.0.qcow2'}, ctx)
    const data = await b.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'qcow2', sizeBytes: 8 * 2 ** 30}, ctx)
    expect(os.volid).toBe('local-vm:100/vm-100-disk-0.qcow2')
    expect(data.volid).toBe('local-vm:100/vm-100-disk-1.qcow2')
    spec = {node: 'lab1', vmid: 100, name: 'site', cores: 1, sockets: 1, memoryMb: 1024, agent: true, bootOrder: ['virtio0'], rawConfig: {},
      disks: [{key: 'virtio0', volid: os.volid, media: 'disk'}, {key: 'virtio1', volid: data.volid, media: 'disk', serial: 'pgi-data'}],
      nics: [{key: 'net0', model: 'virtio', macaddr: 'BC:24:11:00:00:01', ipv4: {address: '10.1.0.10', prefix: 16, gateway: '10.1.0.1'}}]}
    await b.start(spec, ctx)
  })
  afterAll(async () => {
    await b.close()
    await rm(dir, {recursive: true, force: true})
  })

  const health = async () => {
    const {pid} = await b.agent.exec('lab1', 100, ['/usr/local/sbin/pgi-health'], undefined, 1000)
    const st = await b.agent.execStatus('lab1', 100, pid, 1000)
    return {code: st.exitcode, body: JSON.parse(st['out-data']!)}
  }

  it('reports the image version of the imported disk, then the one written to /etc/pgi/image.json; rollback restores it', async () => {
    expect((await health()).body.image.version).toBe('2026.11.0')
    await b.snapshotCreate(spec, 'before', ctx)
    await b.agent.fileWrite('lab1', 100, '/etc/pgi/image.json', Buffer.from(JSON.stringify({name: 'pgi-tryton', version: '2026.12.0'})), 1000)
    expect((await health()).body.image.version).toBe('2026.12.0')
    await b.snapshotRollback(spec, 'before', ctx)
    expect((await health()).body.image.version).toBe('2026.11.0')
  })

  it('follows the guest contract: health checks, idempotent pgi-configure, pgi-backup manifest', async () => {
    const h = await health()
    expect(h.code).toBe(0)
    expect(h.body).toMatchObject({healthy: true, checks: {postgresql: {ok: true}, trytond: {ok: true}, web: {ok: true}, data_disk: {ok: true, mounted: true, size_bytes: 8 * 2 ** 30}}, problems: []})
    const conf = async () => {
      const {pid} = await b.agent.exec('lab1', 100, ['/usr/local/sbin/pgi-configure'], JSON.stringify({sql_admin: {login: 'pgi_admin', password: 'p'}}), 1000)
      return JSON.parse((await b.agent.execStatus('lab1', 100, pid, 1000))['out-data']!)
    }
    expect(await conf()).toEqual({changed: ['sql_admin']})
    expect(await conf()).toEqual({changed: []})
    const {pid} = await b.agent.exec('lab1', 100, ['/usr/local/sbin/pgi-backup'], undefined, 1000)
    const out = (await b.agent.execStatus('lab1', 100, pid, 1000))['out-data']!
    expect(out).toMatch(/^\/srv\/pgi\/backups\/\d{8}T\d{6}Z\/manifest\.json\n$/)
    expect((await health()).body.checks.backup.last).not.toBeNull()
  })

  it('answers network and filesystem info from the model', async () => {
    const ifs = await b.agent.networkGetInterfaces('lab1', 100, 1000)
    expect(ifs.map((i) => i.name)).toEqual(['lo', 'eth0'])
    expect(ifs[1]!['hardware-address']).toBe('bc:24:11:00:00:01')
    const fs = await b.agent.getFsinfo('lab1', 100, 1000)
    expect(fs.find((f) => f.mountpoint === '/srv/pgi')?.disk[0]?.serial).toBe('pgi-data')
  })

  it('refuses agent calls when the VM is stopped', async () => {
    await b.stop('lab1', 100, ctx)
    await expect(b.agent.ping('lab1', 100, 1000)).rejects.toThrow('VM 100 is not running')
  })
})
