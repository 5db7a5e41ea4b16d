import {describe, expect, it} from 'vitest'

import {accelArgs, TCG_CPU} from '../../../src/qemu/accel.js'
import {parseUsernet, processAlive, qemuArgs, userNetFor, type VmLaunchSpec} from '../../../src/qemu/vm.js'

const tcg = {accel: 'tcg' as const, args: accelArgs('tcg'), reason: 'test', source: 'env' as const}

function opt(args: string[], flag: string): string[] {
  const out: string[] = []
  args.forEach((a, i) => a === flag && out.push(args[i + 1]))
  return out
}

describe('userNetFor', () => {
  it('puts the guest static address and its gateway into the user-mode network', () => {
    expect(userNetFor('10.1.2.3', 24, '10.1.2.1', [{name: 'ssh', guestPort: 22}], '52:54:00:aa:bb:cc')).toEqual({
      net: '10.1.2.0/24',
      host: '10.1.2.1',
      guestAddress: '10.1.2.3',
      dns: '10.1.2.2', // .3 is the guest
      forwards: [{name: 'ssh', guestPort: 22}],
      mac: '52:54:00:aa:bb:cc',
      restrict: true,
    })
  })
  it('defaults the gateway to the first address and keeps DNS off the guest', () => {
    const n = userNetFor('172.16.40.10', 22, undefined)
    expect(n).toMatchObject({net: '172.16.40.0/22', host: '172.16.40.1', dns: '172.16.40.3'})
  })
  it('refuses a gateway outside the subnet and unusable prefixes', () => {
    expect(() => userNetFor('10.1.2.3', 24, '10.1.3.1')).toThrow(/not in 10.1.2.0\/24/)
    expect(() => userNetFor('10.1.2.3', 30, '10.1.2.1')).toThrow(/prefix/)
    expect(() => userNetFor('10.1.2.3', 24, '10.1.2.3')).toThrow(/equals/)
  })
})

describe('qemuArgs', () => {
  const spec: VmLaunchSpec = {
    name: 'vm-100',
    dir: '/var/lab/node1/vm-100',
    memoryMiB: 768,
    cpus: 1,
    disks: [
      {file: '/var/lab/images/vm-100-disk-0.qcow2', id: 'virtio0'},
      {file: '/var/lab/images/vm-100-disk-1.qcow2', id: 'virtio1', serial: 'pgi-data'},
    ],
    seedImage: '/var/lab/images/vm-100-cloudinit.iso',
    network: userNetFor('10.1.2.3', 24, '10.1.2.1', [
      {name: 'ssh', guestPort: 22},
      {name: 'web', guestPort: 80},
      {name: 'jsonrpc', guestPort: 8000},
      {name: 'postgresql', guestPort: 5432},
    ], '52:54:00:12:34:56'),
  }
  const args = qemuArgs(spec, tcg)

  it('uses the accelerator, memory and cpus given', () => {
    expect(args.join(' ')).toContain(`-accel tcg -cpu ${TCG_CPU}`)
    expect(opt(args, '-m')).toEqual(['768'])
    expect(opt(args, '-smp')).toEqual(['1'])
  })

  it('forwards each named port to 127.0.0.1 only, on an ephemeral port, to the guest address', () => {
    const [netdev] = opt(args, '-netdev')
    expect(netdev).toMatch(/^user,id=net0,net=10\.1\.2\.0\/24,host=10\.1\.2\.1,dhcpstart=10\.1\.2\.3,dns=10\.1\.2\.2,restrict=on,/)
    const fwds = [...netdev.matchAll(/hostfwd=([^,]+)/g)].map((m) => m[1])
    expect(fwds).toEqual(['tcp:127.0.0.1:0-10.1.2.3:22', 'tcp:127.0.0.1:0-10.1.2.3:80', 'tcp:127.0.0.1:0-10.1.2.3:8000', 'tcp:127.0.0.1:0-10.1.2.3:5432'])
    expect(opt(args, '-device')).toContain('virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56')
    // no other listening address anywhere on the command line
    expect(args.join(' ')).not.toMatch(/0\.0\.0\.0|::|-vnc|-spice/)
  })

  it('attaches qcow2 virtio disks with serial= and boots the first; the seed as IDE cdrom ide2', () => {
    const drives = opt(args, '-drive')
    expect(drives[0]).toBe('file=/var/lab/images/vm-100-disk-0.qcow2,format=qcow2,if=none,id=drive-virtio0,cache=writeback,discard=unmap')
    expect(drives[2]).toBe('file=/var/lab/images/vm-100-cloudinit.iso,format=raw,if=none,id=drive-ide2,media=cdrom,readonly=on')
    const devices = opt(args, '-device')
    expect(devices).toContain('virtio-blk-pci,drive=drive-virtio0,id=virtio0,bootindex=100')
    expect(devices).toContain('virtio-blk-pci,drive=drive-virtio1,id=virtio1,serial=pgi-data')
    expect(devices).toContain('ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2')
  })

  it('has a QMP socket, the guest-agent port, a serial log and a pid file, relative to the VM dir', () => {
    expect(opt(args, '-chardev')).toEqual(['socket,id=qmp,path=qmp.sock,server=on,wait=off', 'file,id=serial0,path=serial.log', 'socket,id=qga0,path=qga.sock,server=on,wait=off'])
    expect(opt(args, '-device')).toContain('virtserialport,chardev=qga0,name=org.qemu.guest_agent.0')
    expect(opt(args, '-pidfile')).toEqual(['/var/lab/node1/vm-100/qemu.pid'])
  })

  it('adds a guestfwd per guest-to-host path, restrict=on kept, and refuses bad ones', () => {
    const net = userNetFor('10.1.2.3', 24, '10.1.2.1', [], undefined)
    net.guestForwards = [{guestAddress: '10.1.2.253', guestPort: 80, command: 'socat -lf uplink-relay.log STDIO ABSTRACT-CONNECT:pgi-lab-x-80'}]
    const [netdev] = opt(qemuArgs({...spec, network: net}, tcg), '-netdev')
    expect(netdev).toContain('restrict=on')
    expect(netdev).toContain(',guestfwd=tcp:10.1.2.253:80-cmd:socat -lf uplink-relay.log STDIO ABSTRACT-CONNECT:pgi-lab-x-80')
    net.guestForwards = [{guestAddress: '10.1.2.253', guestPort: 0, command: 'x'}]
    expect(() => qemuArgs({...spec, network: net}, tcg)).toThrow(/bad guest port/)
    net.guestForwards = [{guestAddress: 'host', guestPort: 80, command: 'x'}]
    expect(() => qemuArgs({...spec, network: net}, tcg)).toThrow(/bad guest address/)
  })

  it('escapes commas in paths and refuses bad serials', () => {
    const a = qemuArgs({...spec, network: undefined, seedImage: undefined, disks: [{file: '/x/a,b.qcow2'}]}, tcg)
    expect(opt(a, '-drive')[0]).toMatch(/^file=\/x\/a,,b\.qcow2,/)
    expect(() => qemuArgs({...spec, disks: [{file: '/x/a.qcow2', serial: 'bad serial'}]}, tcg)).toThrow(/serial/)
  })

  it("gives a disk the cache and aio it is asked for (the lab: PVE's), the host cache otherwise", () => {
    const a = qemuArgs({...spec, network: undefined, seedImage: undefined, disks: [{file: '/x/a.qcow2', cache: 'none', aio: 'io_uring'}, {file: '/x/b.qcow2'}]}, tcg)
    expect(opt(a, '-drive')).toEqual([
      'file=/x/a.qcow2,format=qcow2,if=none,id=drive-virtio0,cache=none,aio=io_uring,discard=unmap',
      'file=/x/b.qcow2,format=qcow2,if=none,id=drive-virtio1,cache=writeback,discard=unmap',
    ])
  })
})

describe('parseUsernet', () => {
  it('reads the host-forward table of `info usernet`', () => {
    const text = [
      'Hub -1 (net0):',
      '  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ',
      '  TCP[HOST_FORWARD]  14       127.0.0.1 40231        10.1.2.3    22     0     0',
      '  TCP[HOST_FORWARD]  13       127.0.0.1 38309        10.1.2.3    80     0     0',
      '  UDP[236 sec]       15        10.1.2.3   68       10.1.2.1    67     0     0',
    ].join('\r\n')
    expect(parseUsernet(text)).toEqual([
      {hostAddr: '127.0.0.1', hostPort: 40231, guestAddr: '10.1.2.3', guestPort: 22},
      {hostAddr: '127.0.0.1', hostPort: 38309, guestAddr: '10.1.2.3', guestPort: 80},
    ])
  })
})

describe('processAlive', () => {
  it('is true for this process and false for a pid that does not exist', () => {
    expect(processAlive(process.pid)).toBe(true)
    expect(processAlive(2 ** 22 + 12345)).toBe(false)
  })
})
