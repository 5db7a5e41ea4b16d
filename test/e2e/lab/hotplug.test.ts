import {readFileSync} from 'node:fs'
import {copyFile, mkdtemp, open, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {BackendError, type StorageDef, type TaskContext, type VmSpec} from '../../../src/lab/backend.js'
import {QemuBackend} from '../../../src/lab/qemu-backend.js'
import {probeBlockHost} from '../../../src/lab/pve-drive.js'
import {StderrIo} from '../../../src/io.js'
import {QmpClient} from '../../../src/qemu/qmp.js'
import {accelArgs} from '../../../src/qemu/accel.js'
import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {startTestLab, type TestLab} from '../../unit/lab/lab-harness.js'

/**
 * Hot-plugging a disk into a running VM on the qemu backend, as PVE does when `hotplug` includes
 * `disk` (its default): QMP blockdev-add + device_add (a virtio-blk device with the disk's serial),
 * and device_del + blockdev-del to detach it.
 *
 * 1. On a bare QEMU (no guest OS, seconds): the device and its block node appear; detaching
 *    waits for a guest that never answers and fails with PVE's text.
 * 2. Through the lab's API on the PGI image (a real guest; TCG boot takes minutes): the guest sees
 *    the blank disk by its serial, writes it, and releases it when the disk is detached (unused0).
 */

const BOOT_TIMEOUT_MS = Number(process.env.PGI_E2E_BOOT_TIMEOUT_S ?? 20 * 60) * 1000
const ctx: TaskContext = {upid: 'UPID:lab1:00000001:00000001:00000001:test:100:root@pam:', log: () => undefined, signal: new AbortController().signal}

describe('disk hot-plug on the qemu backend', () => {
  const cleanups: (() => Promise<unknown>)[] = []
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined)
  })

  it('attaches through QMP on a running QEMU, and refuses to detach when no guest releases the device', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pgi-hotplug-qmp-'))
    cleanups.push(() => rm(dir, {recursive: true, force: true}))
    const storages: StorageDef[] = [{id: 'local-vm', type: 'dir', content: ['images'], path: (n) => join(dir, n, 'local-vm'), totalBytes: 1e12}]
    const be = new QemuBackend({accel: {accel: 'tcg', args: accelArgs('tcg'), reason: 'test', source: 'env'}, unplugTimeoutMs: 3000, closeGraceMs: 0})
    await be.init({dir: join(dir, 'backend'), nodes: [{name: 'lab1', index: 0}], storages, pveVersion: '9.1', log: () => undefined})
    cleanups.push(() => be.close())
    const os = await be.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'qcow2', sizeBytes: 16 * 2 ** 20}, ctx)
    const blank = await be.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'raw', sizeBytes: 8 * 2 ** 20}, ctx)
    const spec: VmSpec = {node: 'lab1', vmid: 100, name: 'bare', cores: 1, sockets: 1, memoryMb: 64, agent: false, disks: [{key: 'virtio0', volid: os.volid, media: 'disk'}], nics: [], bootOrder: ['virtio0'], rawConfig: {}}
    await be.start(spec, ctx)

    await be.hotplugDisk(spec, {key: 'virtio3', volid: blank.volid, media: 'disk', serial: 'blank'}, ctx)
    const q = await QmpClient.connect(join(dir, 'backend', 'lab1', '100', 'qmp.sock'))
    try {
      const nodes = await q.execute<{'node-name': string; file: string; cache: unknown}[]>('query-named-block-nodes')
      expect(nodes.find((n) => n['node-name'] === 'drive-virtio3')?.file).toBe(join(dir, 'lab1', 'local-vm', 'images', '100', 'vm-100-disk-1.raw'))
      // PVE's block settings (src/lab/pve-drive.ts), at start and when hot-plugged: direct I/O
      // (cache=none) with the guest's flushes kept, on a host whose directory takes O_DIRECT
      const host = await probeBlockHost(join(dir, 'lab1', 'local-vm'))
      const cacheOf = (name: string) => nodes.find((n) => n['node-name'] === name)?.cache
      expect(cacheOf('drive-virtio3')).toMatchObject({direct: host.direct, 'no-flush': false})
      // (whether the device caches writes is the guest driver's choice: SeaBIOS alone says no)
      const blocks = await q.execute<{device: string; inserted?: {cache: unknown}}[]>('query-block')
      expect(blocks.find((b) => b.device === 'drive-virtio0')?.inserted?.cache).toMatchObject({direct: host.direct, 'no-flush': false})
      const cmdline = readFileSync(`/proc/${readFileSync(join(dir, 'backend', 'lab1', '100', 'qemu.pid'), 'utf8').trim()}/cmdline`, 'utf8').split('\0')
      expect(cmdline.find((a) => a.includes('id=drive-virtio0'))).toContain(`cache=${host.direct ? 'none' : 'writeback'},aio=${host.ioUring ? 'io_uring' : host.direct ? 'native' : 'threads'},`)
      const peripherals = await q.execute<{name: string; type: string}[]>('qom-list', {path: '/machine/peripheral'})
      expect(peripherals).toContainEqual({name: 'virtio3', type: 'child<virtio-blk-pci>'})
      expect(await q.execute('qom-get', {path: '/machine/peripheral/virtio3/virtio-backend', property: 'serial'})).toBe('blank')
    } finally {
      q.close()
    }
    // the same key twice is QEMU's duplicate-id error, as PVE reports it
    await expect(be.hotplugDisk(spec, {key: 'virtio3', volid: blank.volid, media: 'disk'}, ctx)).rejects.toThrow(/error on hotplug device 'virtio3'/)
    // SeaBIOS alone never ejects the device: the unplug fails with PVE's text
    await expect(be.unplugDisk(spec, 'virtio3', ctx)).rejects.toThrow(new BackendError("error on hot-unplugging device 'virtio3' (the guest did not release it)"))
    // a disk the VM does not have is not an error
    await expect(be.unplugDisk(spec, 'virtio9', ctx)).resolves.toBeUndefined()
  }, 120_000)

  it('a guest sees a blank disk hot-plugged through the API, writes it, and releases it when it is detached', async () => {
    const images = await cachedPgiImage(new StderrIo('info', false))
    const be = new QemuBackend({closeGraceMs: 5000})
    const lab: TestLab = await startTestLab({backend: be, lockTimeoutMs: 60_000})
    cleanups.push(() => lab.close())
    const V = '/nodes/lab1/qemu/110'
    const ok = async (method: string, path: string, params: Record<string, string | number> = {}) => {
      const r = await lab.call(method, path, params)
      expect(r.status, `${method} ${path}: ${r.status} ${r.reason}`).toBe(200)
      if (typeof r.body.data === 'string' && r.body.data.startsWith('UPID:')) expect((await lab.wait(r.body.data)).exitstatus, `${method} ${path}`).toBe('OK')
      return r.body.data
    }
    // stage the image (as an upload would leave it) and create the VM from it
    const staged = join(lab.dir, 'tmp', 'staged.qcow2')
    await copyFile(join(images.root, 'pgi-tryton', images.version, `pgi-tryton-${images.version}.qcow2`), staged)
    await lab.rt.backend.importFile('lab1', 'local', 'import', 'pgi.qcow2', staged, ctx)
    await ok('POST', '/nodes/lab1/qemu', {vmid: 110, name: 'hotplug', memory: 1024, cores: 1, agent: 1, virtio0: 'local-vm:0,import-from=local:import/pgi.qcow2', virtio1: 'local-vm:1,serial=pgi-data', ide2: 'local-vm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.61.0.10/24,gw=10.61.0.1', ciupgrade: 0})
    await ok('POST', `${V}/status/start`)
    const deadline = Date.now() + BOOT_TIMEOUT_MS
    while ((await lab.call('POST', `${V}/agent/ping`)).status !== 200) {
      if (Date.now() > deadline) throw new Error(`guest agent did not answer within ${BOOT_TIMEOUT_MS} ms`)
      await new Promise((r) => setTimeout(r, 3000))
    }

    // -- hot-plug a blank raw disk: applied at once (not pending) --------------------------------
    await ok('PUT', `${V}/config`, {virtio5: 'local-vm:1,format=raw,serial=blank'})
    const cfg = await ok('GET', `${V}/config`, {current: 1})
    expect(cfg.virtio5).toMatch(/^local-vm:110\/vm-110-disk-\d\.raw,serial=blank,size=1G$/)
    const file = join(lab.dir, 'nodes', 'lab1', 'storage', 'local-vm', 'images', '110', cfg.virtio5.split(',')[0].split('/').at(-1))

    // -- the guest finds it by its serial and writes it ---------------------------------------------
    const script = 'for i in $(seq 120); do [ -e /dev/disk/by-id/virtio-blank ] && break; sleep 1; done; printf hotplug-ok | dd of=/dev/disk/by-id/virtio-blank conv=fsync,notrunc status=none && blockdev --getsize64 /dev/disk/by-id/virtio-blank'
    const {pid} = await ok('POST', `${V}/agent/exec`, {command: ['/bin/sh', '-c', script]} as never)
    let st: {exited: number; exitcode?: number; 'out-data'?: string; 'err-data'?: string}
    for (;;) {
      st = await ok('GET', `${V}/agent/exec-status`, {pid})
      if (st.exited) break
      await new Promise((r) => setTimeout(r, 1000))
    }
    expect(st, JSON.stringify(st)).toMatchObject({exitcode: 0})
    expect(st['out-data']?.trim()).toBe(String(2 ** 30))

    // -- detach while running: the guest releases it, the volume stays as unused0 -----------------
    await ok('PUT', `${V}/config`, {delete: 'virtio5'})
    const after = await ok('GET', `${V}/config`, {current: 1})
    expect(after.virtio5).toBeUndefined()
    expect(after.unused0).toBe(cfg.virtio5.split(',')[0])
    const exists = await ok('POST', `${V}/agent/exec`, {command: ['/bin/sh', '-c', 'sleep 2; test -e /dev/disk/by-id/virtio-blank && echo still || echo gone']} as never)
    for (;;) {
      st = await ok('GET', `${V}/agent/exec-status`, {pid: exists.pid})
      if (st.exited) break
      await new Promise((r) => setTimeout(r, 1000))
    }
    expect(st['out-data']?.trim()).toBe('gone')
    // what the guest wrote is on the volume
    const fh = await open(file, 'r')
    try {
      const buf = Buffer.alloc(10)
      await fh.read(buf, 0, 10, 0)
      expect(buf.toString()).toBe('hotplug-ok')
    } finally {
      await fh.close()
    }
    await ok('POST', `${V}/status/stop`)
  }, BOOT_TIMEOUT_MS + 10 * 60_000)
})
