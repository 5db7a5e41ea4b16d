import {execFileSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {parse} from 'yaml'

import type {StorageDef, TaskContext, VmSpec} from '../../../src/lab/backend.js'
import {QemuBackend} from '../../../src/lab/qemu-backend.js'
import {accelArgs} from '../../../src/qemu/accel.js'

/** The qemu backend's storage side, on real files with qemu-img (no VM is started here). */

const dir = mkdtempSync(join(tmpdir(), 'pgi-qemu-backend-'))
const storages: StorageDef[] = [
  {id: 'local', type: 'dir', content: ['iso', 'import', 'snippets', 'backup'], path: (n) => join(dir, 'nodes', n, 'local'), totalBytes: 1e12},
  {id: 'local-vm', type: 'dir', content: ['images', 'rootdir'], path: (n) => join(dir, 'nodes', n, 'local-vm'), totalBytes: 1e12},
]
const logs: string[] = []
const ctx: TaskContext = {upid: 'UPID:lab1:00000001:00000001:00000001:test:100:root@pam:', log: (l) => logs.push(l), signal: new AbortController().signal}
const be = new QemuBackend({accel: {accel: 'tcg', args: accelArgs('tcg'), reason: 'test', source: 'env'}})

function spec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    node: 'lab1',
    vmid: 100,
    name: 'pgi-0130040y',
    cores: 1,
    sockets: 1,
    memoryMb: 512,
    agent: true,
    disks: [
      {key: 'virtio0', volid: 'local-vm:100/vm-100-disk-0.qcow2', media: 'disk'},
      {key: 'ide2', volid: 'local-vm:100/vm-100-cloudinit.qcow2', media: 'cdrom', cloudinit: true},
    ],
    nics: [{key: 'net0', model: 'virtio', macaddr: 'BC:24:11:00:00:64', bridge: 'vmbr0'}],
    bootOrder: ['virtio0'],
    cloudInit: {
      hostname: 'pgi-0130040y',
      user: 'ami',
      passwordHash: '$6$abcdefgh$' + 'x'.repeat(86),
      sshKeys: ['ssh-ed25519 AAAAC3Nza ami@poste'],
      nameservers: ['10.13.4.1'],
      searchdomain: 'lycee.test',
      ipconfig: {net0: {ip: '10.13.4.20/24', gw: '10.13.4.1'}},
      type: 'nocloud',
      upgrade: false,
    },
    rawConfig: {},
    ...over,
  }
}

beforeAll(async () => {
  await be.init({dir: join(dir, 'backend'), nodes: [{name: 'lab1', index: 0}], storages, pveVersion: '9.1', log: () => undefined})
})
afterAll(async () => {
  await be.close()
  rmSync(dir, {recursive: true, force: true})
})

describe('QemuBackend storage (qemu-img, PVE directory layout)', () => {
  it('stages an uploaded file as import content and lists it', async () => {
    const src = join(dir, 'upload.tmp')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '64M'])
    const v = await be.importFile('lab1', 'local', 'import', 'img-1.0.qcow2', src, ctx)
    expect(v).toMatchObject({volid: 'local:import/img-1.0.qcow2', content: 'import', format: 'qcow2'})
    expect(existsSync(src)).toBe(false)
    expect(existsSync(join(dir, 'nodes', 'lab1', 'local', 'import', 'img-1.0.qcow2'))).toBe(true)
    expect((await be.listVolumes('lab1', 'local', 'import')).map((x) => x.volid)).toEqual(['local:import/img-1.0.qcow2'])
  })

  it('imports a staged image into vm-<vmid>-disk-<n>.qcow2 with its virtual size (import-from)', async () => {
    const v = await be.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'qcow2', importFrom: 'local:import/img-1.0.qcow2'}, ctx)
    expect(v).toMatchObject({volid: 'local-vm:100/vm-100-disk-0.qcow2', content: 'images', format: 'qcow2', size: 64 * 1024 * 1024, vmid: 100})
    expect(logs.join('\n')).toMatch(/importing disk 'local:import\/img-1\.0\.qcow2' to VM 100/)
  })

  it('allocates empty disks with the lowest free index, and resizes them', async () => {
    const v = await be.allocateDisk('lab1', 100, {storage: 'local-vm', format: 'qcow2', sizeBytes: 32 * 1024 ** 2}, ctx)
    expect(v.volid).toBe('local-vm:100/vm-100-disk-1.qcow2')
    await be.resizeDisk(spec({disks: [{key: 'virtio1', volid: v.volid, media: 'disk'}]}), 'virtio1', 48 * 1024 ** 2, ctx)
    expect((await be.volumeInfo('lab1', v.volid))?.size).toBe(48 * 1024 ** 2)
  })

  it('refuses to import an image that has a backing file', async () => {
    const b = join(dir, 'b.qcow2')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', b, '16M'])
    const o = join(dir, 'overlay.tmp')
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', b, o])
    await be.importFile('lab1', 'local', 'import', 'overlay.qcow2', o, ctx)
    await expect(be.allocateDisk('lab1', 101, {storage: 'local-vm', format: 'qcow2', importFrom: 'local:import/overlay.qcow2'}, ctx)).rejects.toThrow('refusing to import image with backing file')
  })

  it('writes the NoCloud seed (cidata) into the cloud-init volume from the VM spec', async () => {
    const v = await be.allocateCloudInit('lab1', 100, 'local-vm', ctx)
    expect(v.volid).toBe('local-vm:100/vm-100-cloudinit.qcow2')
    await be.regenerateCloudInit(spec())
    const path = join(dir, 'nodes', 'lab1', 'local-vm', 'images', '100', 'vm-100-cloudinit.qcow2')
    const raw = join(dir, 'seed.raw')
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path, raw])
    expect(readFileSync(raw).subarray(16 * 2048 + 40, 16 * 2048 + 46).toString('latin1')).toBe('cidata')
    const net = execFileSync('isoinfo', ['-R', '-x', '/network-config', '-i', raw], {encoding: 'utf8'})
    expect(net).toContain('10.13.4.20/24')
    expect(net).toContain('gateway4: 10.13.4.1')
    // read as cloud-init's PyYAML does (YAML 1.1): the MAC stays a string
    expect(parse(net, {version: '1.1'}).ethernets.eth0.match).toEqual({macaddress: 'bc:24:11:00:00:64'})
    const ud = execFileSync('isoinfo', ['-R', '-x', '/user-data', '-i', raw], {encoding: 'utf8'})
    expect(ud).toContain('user: ami')
    expect(ud).not.toContain('package_upgrade')
    expect(ud).toContain('ssh-ed25519 AAAAC3Nza ami@poste')
    const md = execFileSync('isoinfo', ['-R', '-x', '/meta-data', '-i', raw], {encoding: 'utf8'})
    expect(md).toContain('local-hostname: pgi-0130040y')
    // the seed's scratch files were inside the backend dir and are gone
    expect(existsSync(join(dir, 'backend', 'lab1', '100', 'cloudinit.iso'))).toBe(false)
  })

  it('turns disks into base images and makes linked clones that name their base', async () => {
    const map = await be.convertToTemplate(spec(), ctx)
    expect(map).toEqual({'local-vm:100/vm-100-disk-0.qcow2': 'local-vm:100/base-100-disk-0.qcow2'})
    const linked = await be.linkDisk('lab1', 'local-vm:100/base-100-disk-0.qcow2', 102, ctx)
    expect(linked.volid).toBe('local-vm:base-100-disk-0.qcow2/102/vm-102-disk-0.qcow2')
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', join(dir, 'nodes', 'lab1', 'local-vm', 'images', '102', 'vm-102-disk-0.qcow2')], {encoding: 'utf8'}))
    expect(info['backing-filename']).toBe('../100/base-100-disk-0.qcow2')
    const vols = (await be.listVolumes('lab1', 'local-vm')).map((v) => v.volid)
    expect(vols).toContain('local-vm:base-100-disk-0.qcow2/102/vm-102-disk-0.qcow2')
    expect(vols).toContain('local-vm:100/base-100-disk-0.qcow2')
  })

  it('copies a disk at a snapshot (full clone) and rolls back', async () => {
    const volid = 'local-vm:100/vm-100-disk-1.qcow2'
    const s = spec({disks: [{key: 'virtio1', volid, media: 'disk'}]})
    await be.snapshotCreate(s, 'before', ctx)
    const copy = await be.copyDisk('lab1', volid, 103, 'local-vm', 'raw', ctx, 'before')
    expect(copy).toMatchObject({volid: 'local-vm:103/vm-103-disk-0.raw', format: 'raw'})
    await be.snapshotRollback(s, 'before', ctx)
    await expect(be.snapshotRollback(s, 'nope', ctx)).rejects.toThrow("snapshot 'nope' does not exist")
    await be.snapshotDelete(s, 'before', ctx)
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', join(dir, 'nodes', 'lab1', 'local-vm', 'images', '100', 'vm-100-disk-1.qcow2')], {encoding: 'utf8'}))
    expect(info.snapshots ?? []).toEqual([])
  })

  it('deletes volumes and says so when one is missing', async () => {
    await be.deleteVolume('lab1', 'local-vm:103/vm-103-disk-0.raw', ctx)
    await expect(be.deleteVolume('lab1', 'local-vm:103/vm-103-disk-0.raw', ctx)).rejects.toThrow("volume 'local-vm:103/vm-103-disk-0.raw' does not exist")
    await expect(be.volumeInfo('lab1', 'local:import/absent.qcow2')).resolves.toBeUndefined()
  })

  it('reports a stopped VM and no access for a VM it never started; agent calls say it is not running', async () => {
    expect(be.status('lab1', 100)).toEqual({running: false, uptime: 0, qmpstatus: 'stopped', cpu: 0, mem: 0})
    expect(be.access('lab1', 100)).toBeUndefined()
    await expect(be.agent.ping('lab1', 100, 1000)).rejects.toThrow('VM 100 is not running')
  })
})

describe('QemuBackend network and seed mapping', () => {
  it('gives net0 a user network made of the guest static address and gateway, forwarding the contract ports', () => {
    expect(QemuBackend.networkFor(spec())).toMatchObject({
      net: '10.13.4.0/24',
      host: '10.13.4.1',
      guestAddress: '10.13.4.20',
      mac: 'BC:24:11:00:00:64',
      restrict: true,
      forwards: [
        {name: 'ssh', guestPort: 22},
        {name: 'web', guestPort: 80},
        {name: 'https', guestPort: 443},
        {name: 'jsonrpc', guestPort: 8000},
        {name: 'postgresql', guestPort: 5432},
      ],
    })
  })
  it('falls back to QEMU default addressing for DHCP guests', () => {
    const s = spec()
    s.cloudInit!.ipconfig = {net0: {ip: 'dhcp'}}
    expect(QemuBackend.networkFor(s)).toMatchObject({net: '10.0.2.0/24', host: '10.0.2.2', guestAddress: '10.0.2.15'})
  })
  it('maps cloud-init settings to the seed spec', () => {
    // what cloud-init says of the user and the resolver goes to the seed as it is
    const {hostname, user, passwordHash, sshKeys, nameservers, searchdomain} = spec().cloudInit!
    expect(QemuBackend.seedSpec(spec())).toEqual({
      hostname,
      user,
      passwordHash,
      sshKeys,
      nameservers,
      searchdomain,
      packageUpgrade: false,
      nics: [{name: 'eth0', mac: 'BC:24:11:00:00:64', ipconfig: {ip: '10.13.4.20/24', gw: '10.13.4.1'}}],
    })
  })
})

