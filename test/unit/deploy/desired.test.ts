import {describe, expect, it} from 'vitest'

import {createParams, diffVm, encodeSshKeys, parseDisk, touchesCloudInit, updateParams, vmName} from '../../../src/deploy/desired.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {tryParseSize as parseSize} from '../../../src/size.js'
import {configAfterCreate, est, hv, image} from './fixtures.js'

describe('desired VM config', () => {
  it('names the VM from the UAI as a DNS label', () => {
    expect(vmName('0130040Y')).toBe('pgi-0130040y')
  })

  it('creates the VM the guest contract expects', () => {
    const p = createParams(est, hv, image, new Date('2026-11-22T06:00:00Z'))
    expect(p.virtio0).toBe('local-vm:0,import-from=local:import/pgi-tryton-2026.11.0.qcow2')
    expect(p.virtio1).toBe('data-vm:32,serial=pgi-data')
    expect(p.ide2).toBe('local-vm:cloudinit')
    expect(p).toMatchObject({name: 'pgi-0130040y', agent: 1, boot: 'order=virtio0', serial0: 'socket', net0: 'virtio,bridge=vmbr0', ciuser: 'ami', ciupgrade: 0, ipconfig0: 'ip=192.0.2.101/24,gw=192.0.2.1', nameserver: '192.0.2.53 192.0.2.54', searchdomain: 'lycees.example', cores: 2, memory: 4096, cpu: 'x86-64-v2-AES'})
    expect(p.sshkeys).toBe('ssh-ed25519%20AAAAC3Nz%20jeanne%40poste%0A')
    expect(p.tags).toBe('img-2026.11.0;pgi;ring-canary;uai-0130040y')
    expect(parseDescription(String(p.description))).toMatchObject({uai: '0130040Y', image: '2026.11.0', imageSha256: image.sha256})
    // nothing secret in a VM config: no cipassword ever
    expect(Object.keys(p)).not.toContain('cipassword')
  })

  it('parses PVE sizes and disk strings', () => {
    expect(parseSize('32G')).toBe(32 * 2 ** 30)
    expect(parseSize('512M')).toBe(512 * 2 ** 20)
    expect(parseSize('100')).toBe(100)
    expect(parseDisk('local:vm-1-disk-0.qcow2,serial=pgi-data,size=8G')).toEqual({volid: 'local:vm-1-disk-0.qcow2', size: 8 * 2 ** 30, opts: {serial: 'pgi-data', size: '8G'}})
  })

  it('finds no drift on the VM it created', () => {
    expect(diffVm(est, hv, configAfterCreate(), '2026.11.0', true)).toEqual([])
  })

  it('reports each drifted setting and how it is fixed', () => {
    const cfg = configAfterCreate()
    cfg.cores = 4
    cfg.ipconfig0 = 'ip=192.0.2.99/24,gw=192.0.2.1'
    cfg.virtio1 = 'data-vm:vm-1001-disk-1.qcow2,serial=pgi-data,size=16G'
    cfg.net0 = 'virtio=BC:24:11:00:00:01,bridge=vmbr9'
    const d = diffVm(est, hv, cfg, '2026.12.0', false)
    const by = Object.fromEntries(d.map((x) => [x.setting, x]))
    expect(by.cores).toMatchObject({want: '2', have: '4', fix: 'config'})
    expect(by.ipconfig0).toMatchObject({fix: 'config'})
    expect(by.data_disk_gb).toMatchObject({want: '32', have: '16', fix: 'resize'})
    expect(by.image).toMatchObject({want: '2026.12.0', have: '2026.11.0', fix: 'manual'})
    expect(by.status).toMatchObject({fix: 'start'})
    expect(by.net0).toMatchObject({want: 'virtio,bridge=vmbr0', have: 'virtio,bridge=vmbr9'})
    const p = updateParams(d, est, hv, cfg)!
    expect(p).toMatchObject({cores: '2', ipconfig0: 'ip=192.0.2.101/24,gw=192.0.2.1', net0: 'virtio=BC:24:11:00:00:01,bridge=vmbr0'})
    expect(p).not.toHaveProperty('image')
    expect(touchesCloudInit(p)).toBe(true)
  })

  it('never shrinks a disk and deletes settings the inventory dropped', () => {
    const cfg = configAfterCreate()
    cfg.virtio0 = 'local-vm:vm-1001-disk-0.qcow2,size=20G'
    const noKey = {...est, ami: {...est.ami, sshKey: undefined}}
    const d = diffVm(noKey, hv, cfg, '2026.11.0', true)
    expect(d.find((x) => x.setting === 'os_disk_gb')).toMatchObject({fix: 'manual'})
    expect(updateParams(d, noKey, hv, cfg)).toEqual({delete: 'sshkeys'})
  })

  it('compares ssh keys decoded', () => {
    const cfg = configAfterCreate()
    cfg.sshkeys = encodeSshKeys('ssh-ed25519 AAAAC3Nz jeanne@poste')
    expect(diffVm(est, hv, cfg, '2026.11.0', true)).toEqual([])
  })
})
