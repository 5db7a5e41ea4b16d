import {BackendError, type AgentExecStatus, type AgentFsInfo, type AgentNetworkInterface, type GuestAgent, type VmSpec} from './backend.js'
import type {BootState, GuestEnv} from './simulated-guest-state.js'
import {runGuestCommand, writeGuestFile} from './simulated-guest.js'
import {simulatedOffsite} from './simulated-offsite.js'

/** What the simulated guest agent needs of a VM of the simulated backend. */
export interface SimAgentVm {
  spec: VmSpec
  boot: BootState
  nextPid: number
  procs: Map<number, {status: AgentExecStatus}>
}

/** What the simulated guest agent asks of the simulated backend (src/lab/simulated-backend.ts). */
export interface SimAgentHost<V extends SimAgentVm> {
  /** The VM, when its agent answers (else PVE's BackendError: not running, no agent, still booting). */
  vm(node: string, vmid: number, command: string): V
  /** Everything the guest of `vm` sees now. */
  env(vm: V): GuestEnv
  /** A file of the guest (undefined: no such file). */
  readFile(vm: V, file: string): Buffer | undefined
  /** A volume of the node: its size. */
  volume(node: string, volid: string): {size: number} | undefined
}

/**
 * The simulated backend's guest agent: qemu-guest-agent's answers, made from the simulated guest
 * (src/lab/simulated-guest.ts runs the commands, holds the files).
 */
export function simulatedAgent<V extends SimAgentVm>(host: SimAgentHost<V>): GuestAgent {
  return {
    ping: async (node, vmid) => {
      host.vm(node, vmid, 'ping')
    },
    networkGetInterfaces: async (node, vmid) => {
      const vm = host.vm(node, vmid, 'network-get-interfaces')
      const out: AgentNetworkInterface[] = [{name: 'lo', 'hardware-address': '00:00:00:00:00:00', 'ip-addresses': [{'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4', prefix: 8}, {'ip-address': '::1', 'ip-address-type': 'ipv6', prefix: 128}]}]
      vm.spec.nics.forEach((nic, i) => {
        const ips: NonNullable<AgentNetworkInterface['ip-addresses']> = []
        if (nic.ipv4 && nic.ipv4 !== 'dhcp') ips.push({'ip-address': nic.ipv4.address, 'ip-address-type': 'ipv4', prefix: nic.ipv4.prefix})
        const mac = nic.macaddr.toLowerCase().split(':')
        const eui = [(Number.parseInt(mac[0] ?? '0', 16) ^ 2).toString(16).padStart(2, '0') + (mac[1] ?? ''), `${mac[2]}ff`, `fe${mac[3]}`, `${mac[4]}${mac[5]}`]
        ips.push({'ip-address': `fe80::${eui.map((x) => x.replace(/^0+(?=.)/, '')).join(':')}`, 'ip-address-type': 'ipv6', prefix: 64})
        out.push({name: `eth${i}`, 'hardware-address': nic.macaddr.toLowerCase(), 'ip-addresses': ips})
      })
      return out
    },
    getFsinfo: async (node, vmid) => {
      const vm = host.vm(node, vmid, 'get-fsinfo')
      const out: AgentFsInfo[] = []
            const os = vm.spec.disks.find((d) => d.key === 'virtio0')
      const osVol = os && host.volume(node, os.volid)
      if (osVol) out.push({name: 'vda1', mountpoint: '/', type: 'ext4', 'total-bytes': osVol.size - 2 ** 20, 'used-bytes': Math.min(osVol.size, 1.6 * 2 ** 30), disk: [{'bus-type': 'virtio', bus: 0, target: 0, unit: 0, dev: '/dev/vda1'}]})
      const data = vm.spec.disks.find((d) => d.serial === 'pgi-data')
      const dataVol = data && host.volume(node, data.volid)
      if (data && dataVol && vm.boot.datadisk.ok) {
        const used = 180 * 2 ** 20 + (host.env(vm).disk?.databases.size ?? 0) * 40 * 2 ** 20
        out.push({name: 'vdb', mountpoint: '/srv/pgi', type: 'ext4', 'total-bytes': dataVol.size, 'used-bytes': used, disk: [{serial: 'pgi-data', 'bus-type': 'virtio', bus: 0, target: 0, unit: 0, dev: '/dev/vdb'}]})
      }
      return out
    },
    exec: async (node, vmid, command, inputData) => {
      const vm = host.vm(node, vmid, 'exec')
      const pid = vm.nextPid++
      // a push or restore of pgi-offsite runs restic on this machine (src/lab/simulated-offsite.ts): it takes time, like a real exec
      const slow = (command[0] ?? '').endsWith('/pgi-offsite') || command[0] === 'pgi-offsite' ? simulatedOffsite(host.env(vm), command.slice(1), inputData) : undefined
      if (slow) {
        const proc: {status: AgentExecStatus} = {status: {exited: false}}
        vm.procs.set(pid, proc)
        slow.then(
          (r) => (proc.status = {exited: true, exitcode: r.code, 'out-data': r.out, ...(r.err ? {'err-data': r.err} : {})}),
          (err: unknown) => (proc.status = {exited: true, exitcode: 1, 'err-data': `pgi-offsite: ${err instanceof Error ? err.message : String(err)}\n`}),
        )
        return {pid}
      }
      const r = runGuestCommand(host.env(vm), command, inputData)
      vm.procs.set(pid, {status: {exited: true, exitcode: r.code, 'out-data': r.out, ...(r.err ? {'err-data': r.err} : {})}})
      return {pid}
    },
    execStatus: async (node, vmid, pid) => {
      const vm = host.vm(node, vmid, 'exec-status')
      const p = vm.procs.get(pid)
      if (!p) throw new BackendError(`Agent error: Invalid parameter 'pid'`)
      if (p.status.exited) vm.procs.delete(pid)
      return p.status
    },
    fileWrite: async (node, vmid, file, content) => {
      const vm = host.vm(node, vmid, 'file-write')
      if (!writeGuestFile(host.env(vm), file, Buffer.from(content))) throw new BackendError(`Agent error: Failed to open file '${file}': No such file or directory`)
    },
    fileRead: async (node, vmid, file, _timeoutMs, range = {}) => {
      const vm = host.vm(node, vmid, 'file-read')
      const c = host.readFile(vm, file)
      if (c === undefined) throw new BackendError(`Agent error: Failed to open file '${file}': No such file or directory`)
      const offset = range.offset ?? 0
      const count = Math.min(range.count ?? 16 * 2 ** 20, 16 * 2 ** 20)
      // as qemu-guest-agent: the end of the file is seen only by a read that comes back short
      return {content: c.subarray(offset, offset + count), truncated: c.length - offset >= count}
    },
    info: async (node, vmid) => {
      host.vm(node, vmid, 'info')
      const commands = ['guest-info', 'guest-ping', 'guest-sync', 'guest-sync-delimited', 'guest-exec', 'guest-exec-status', 'guest-file-open', 'guest-file-read', 'guest-file-write', 'guest-file-seek', 'guest-file-flush', 'guest-file-close', 'guest-get-fsinfo', 'guest-get-osinfo', 'guest-get-host-name', 'guest-network-get-interfaces', 'guest-shutdown']
      return {version: '7.2.19', supported_commands: commands.map((name) => ({name, enabled: true, 'success-response': name !== 'guest-shutdown'}))}
    },
    getOsinfo: async (node, vmid) => {
      host.vm(node, vmid, 'get-osinfo')
      // the PGI image: Debian 12 with its cloud kernel
      return {id: 'debian', name: 'Debian GNU/Linux', 'pretty-name': 'Debian GNU/Linux 12 (bookworm)', version: '12 (bookworm)', 'version-id': '12', 'kernel-release': '6.1.0-37-cloud-amd64', 'kernel-version': '#1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 (2025-05-22)', machine: 'x86_64'}
    },
    getHostName: async (node, vmid) => {
      const vm = host.vm(node, vmid, 'get-host-name')
      return {'host-name': vm.spec.name}
    },
  }
}
