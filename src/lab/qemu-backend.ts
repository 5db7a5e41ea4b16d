import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {mkdir, readdir, rename, rm} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {hasTool, run} from '../exec.js'
import {decideAccel, type AccelDecision} from '../qemu/accel.js'
import {labCpuArg} from './pve-cpu.js'
import {seedSpecOf} from './qemu-seed.js'
import {seedFiles, writeSeedImage, type SeedSpec} from '../qemu/cloudinit.js'
import type {QgaClient} from '../qemu/qga.js'
import {sleep} from '../sleep.js'
import {QemuVm, userNetFor, type PortForward, type UserNetSpec, type VmDiskSpec} from '../qemu/vm.js'
import {BlockSettingsCache, qmpCache} from './pve-drive.js'
import {qemuGuestAgent} from './qemu-agent.js'
import {QemuStorages} from './qemu-storage.js'
import {BackendError, type BackendInit, type DiskAllocation, type GuestAgent, type StorageContent, type TaskContext, type VmAccess, type VmBackend, type VmDisk, type VmRuntimeStatus, type VmSpec, type VolumeInfo} from './backend.js'
import {LinkSimulator} from './link-sim.js'
import {attachUplink} from './qemu-uplink.js'

export {uplinkAddress} from './qemu-uplink.js'

/**
 * The qemu backend of the lab: every VM is a real QEMU process (src/qemu/vm.ts).
 *
 * Storages follow Proxmox VE's directory layout (src/lab/qemu-storage.ts); the guest agent is the
 * real qemu-guest-agent (src/lab/qemu-agent.ts).
 *
 * Networking: each VM's net0 is QEMU user-mode networking whose subnet and gateway are the
 * guest's own static address and gateway from `ipconfig0`, so the inventory's address works
 * inside the guest unchanged; ssh/web/https/jsonrpc/postgresql are forwarded to ephemeral ports on
 * 127.0.0.1 only (reported by `access()` for `pgi lab status`). Guest-agent calls go to the real
 * qemu-guest-agent over the VM's virtio-serial socket. Runtime files (sockets, serial log) live
 * in `<backend dir>/<node>/<vmid>/`.
 *
 * The guest's one way to the host: with a `<lab dir>/link-sim.yaml` naming guest ports, a
 * guestfwd per port through the link simulator (src/lab/qemu-uplink.ts); `restrict=on` stays.
 */

/** Guest ports forwarded to the host (guest contract: /etc/pgi/image.json ports). */
export const FORWARDED_PORTS: PortForward[] = [
  {name: 'ssh', guestPort: 22},
  {name: 'web', guestPort: 80},
  // the Tryton web client and the teachers' console over HTTPS (port 80 redirects browsers there)
  {name: 'https', guestPort: 443},
  {name: 'jsonrpc', guestPort: 8000},
  {name: 'postgresql', guestPort: 5432},
]

/** Where a guest without a static ipconfig0 lives (QEMU's default user network). */
const DHCP_DEFAULT = {address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2'}

export interface QemuBackendOptions {
  /** Force an accelerator (tests); default: decideAccel() (PGI_QEMU_ACCEL, probe, cache). */
  accel?: AccelDecision
  /** Grace period for the clean shutdown at close() before QEMU is ended (ms, default 3000). */
  closeGraceMs?: number
  /** Accepted for symmetry with the simulated backend: a real guest decides its own health. */
  guestUnhealthy?: (node: string, vmid: number) => boolean
  /** How long a disk unplug waits for the guest to release the device (ms, default 60 000). */
  unplugTimeoutMs?: number
  /** The link simulator's configuration file (followed while the lab runs) and counters file. */
  linkSim?: {configFile: string; statsFile: string}
}

interface RunningVm {
  vm: QemuVm
  spec?: VmSpec
  /** vCPUs paused through QMP `stop`. */
  paused?: boolean
  /** Disk keys attached after start (QMP blockdev-add: their block node is named `drive-<key>`). */
  hotplugged?: Set<string>
  cpuSample?: {at: number; ticks: number; cpu: number}
  net?: UserNetSpec
  /** Guest ports that reach the host through the link simulator, on `uplink`. */
  uplink?: {address: string; ports: number[]}
}

export class QemuBackend implements VmBackend {
  readonly kind = 'qemu'
  #init!: BackendInit
  #accel: AccelDecision | undefined
  readonly #opts: QemuBackendOptions
  /** "node/vmid" → QEMU process */
  readonly #vms = new Map<string, RunningVm>()
  /** The storages' volumes (qemu-storage.ts), made at init. */
  #vols!: QemuStorages
  readonly #block = new BlockSettingsCache() // PVE's cache and aio for each disk (src/lab/pve-drive.ts)
  #linkSim: LinkSimulator | undefined
  #socat = false

  constructor(opts: QemuBackendOptions = {}) {
    this.#opts = opts
    this.#accel = opts.accel
  }

  async init(init: BackendInit): Promise<void> {
    this.#init = init
    this.#vols = new QemuStorages(init.storages)
    if (this.#opts.linkSim) {
      this.#linkSim = new LinkSimulator({...this.#opts.linkSim, log: init.log})
      await this.#linkSim.start()
      this.#socat = await hasTool('socat')
    }
    // VMs left running by an earlier daemon of this lab: attach, so status and close() see them.
    for (const n of init.nodes) {
      const nodeDir = join(init.dir, n.name)
      if (!existsSync(nodeDir)) continue
      for (const e of await readdir(nodeDir)) {
        if (!/^\d+$/.test(e)) continue
        const vm = await QemuVm.attach(join(nodeDir, e))
        if (vm?.isRunning()) {
          this.#vms.set(`${n.name}/${e}`, {vm})
          init.log(`qemu backend: re-attached VM ${e} on ${n.name} (pid ${vm.pid})`)
        }
      }
    }
  }

  async close(): Promise<void> {
    const grace = this.#opts.closeGraceMs ?? 3000
    await Promise.all(
      [...this.#vms.entries()].map(async ([key, r]) => {
        try {
          await r.vm.stop({graceMs: grace})
        } catch (error) {
          this.#init.log(`qemu backend: stopping ${key}: ${(error as Error).message}`)
        }
      }),
    )
    this.#vms.clear()
    await this.#linkSim?.close()
  }

  async #accelDecision(): Promise<AccelDecision> {
    // The probe's cache and scratch files stay inside the lab dir (a lab leaves nothing outside it).
    this.#accel ??= await decideAccel({cacheFile: join(this.#init.dir, 'accel.json'), workDir: this.#init.dir})
    return this.#accel
  }

  // ---- volumes --------------------------------------------------------------------------------

  // what lives on storages: qemu-storage.ts

  listVolumes(node: string, storage: string, content?: StorageContent): Promise<VolumeInfo[]> {
    return this.#vols.listVolumes(node, storage, content)
  }

  storageUsage(node: string, storage: string): Promise<{used: number}> {
    return this.#vols.storageUsage(node, storage)
  }

  importFile(node: string, storage: string, content: StorageContent, filename: string, srcPath: string, ctx: TaskContext): Promise<VolumeInfo> {
    return this.#vols.importFile(node, storage, content, filename, srcPath, ctx)
  }

  deleteVolume(node: string, volid: string, ctx?: TaskContext): Promise<void> {
    return this.#vols.deleteVolume(node, volid, ctx)
  }

  volumeInfo(node: string, volid: string): Promise<VolumeInfo | undefined> {
    return this.#vols.volumeInfo(node, volid)
  }

  allocateDisk(node: string, vmid: number, alloc: DiskAllocation, ctx: TaskContext): Promise<VolumeInfo> {
    return this.#vols.allocateDisk(node, vmid, alloc, ctx)
  }

  allocateCloudInit(node: string, vmid: number, storage: string, ctx?: TaskContext): Promise<VolumeInfo> {
    return this.#vols.allocateCloudInit(node, vmid, storage, ctx)
  }

  copyDisk(node: string, srcVolid: string, newVmid: number, targetStorage: string, format: 'qcow2' | 'raw', ctx: TaskContext, snapname?: string): Promise<VolumeInfo> {
    return this.#vols.copyDisk(node, srcVolid, newVmid, targetStorage, format, ctx, snapname)
  }

  linkDisk(node: string, baseVolid: string, newVmid: number, ctx: TaskContext): Promise<VolumeInfo> {
    return this.#vols.linkDisk(node, baseVolid, newVmid, ctx)
  }

  convertToTemplate(spec: VmSpec, ctx: TaskContext): Promise<Record<string, string>> {
    return this.#vols.convertToTemplate(spec, ctx)
  }

  // ---- disks of a VM --------------------------------------------------------------------------

  /** The NoCloud seed content of a VM spec (src/lab/qemu-seed.ts; here for tests). */
  static seedSpec(spec: VmSpec): SeedSpec {
    return seedSpecOf(spec)
  }

  async regenerateCloudInit(spec: VmSpec): Promise<void> {
    const drive = spec.disks.find((d) => d.cloudinit)
    if (!drive || !spec.cloudInit) return
    if (spec.cloudInit.type !== 'nocloud') throw new BackendError(`lab qemu backend: citype '${spec.cloudInit.type}' is not supported (use nocloud)`)
    const p = this.#vols.parse(spec.node, drive.volid)
    const runDir = this.#runDir(spec.node, spec.vmid)
    await mkdir(runDir, {recursive: true})
    const iso = join(runDir, 'cloudinit.iso')
    await writeSeedImage(seedFiles(QemuBackend.seedSpec(spec)), iso)
    await mkdir(dirname(p.path), {recursive: true})
    if (p.path.endsWith('.raw')) {
      await rename(iso, p.path)
    } else {
      const tmp = `${p.path}.partial`
      await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', iso, tmp], {timeoutMs: 30_000})
      await rename(tmp, p.path)
      await rm(iso, {force: true})
    }
    this.#vols.forget(p.path)
  }

  async resizeDisk(spec: VmSpec, diskKey: string, newSizeBytes: number, ctx: TaskContext): Promise<void> {
    const d = spec.disks.find((x) => x.key === diskKey)
    if (!d) throw new BackendError(`no such disk '${diskKey}'`)
    const p = this.#vols.parse(spec.node, d.volid)
    const r = this.#running(spec.node, spec.vmid)
    if (r) {
      const q = await r.vm.qmp()
      try {
        // a disk attached at start has a named drive; a hot-plugged one a named block node
        const target = r.hotplugged?.has(diskKey) ? {'node-name': `drive-${diskKey}`} : {device: `drive-${diskKey}`}
        await q.execute('block_resize', {...target, size: newSizeBytes}, 60_000)
      } finally {
        q.close()
      }
    } else {
      const info = await this.#vols.imgInfo(p.path)
      await run('qemu-img', ['resize', '-f', info.format, p.path, String(newSizeBytes)], {timeoutMs: 60_000})
    }
    this.#vols.forget(p.path)
    ctx.log(`Image resized to ${newSizeBytes} bytes`)
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  #runDir(node: string, vmid: number): string {
    return join(this.#init.dir, node, String(vmid))
  }

  #running(node: string, vmid: number): RunningVm | undefined {
    const r = this.#vms.get(`${node}/${vmid}`)
    if (r && !r.vm.isRunning()) {
      this.#vms.delete(`${node}/${vmid}`)
      return undefined
    }
    return r
  }

  /** The user-mode network for net0: the guest's static address and gateway, or QEMU's default. */
  static networkFor(spec: VmSpec): UserNetSpec | undefined {
    const nic = spec.nics.find((n) => n.key === 'net0') ?? spec.nics[0]
    if (!nic) return undefined
    const ip = spec.cloudInit?.ipconfig[nic.key]?.ip
    const gw = spec.cloudInit?.ipconfig[nic.key]?.gw
    if (ip && ip !== 'dhcp') {
      const [addr, prefix] = ip.split('/')
      return userNetFor(addr, Number(prefix), gw, FORWARDED_PORTS, nic.macaddr)
    }
    if (nic.ipv4 && nic.ipv4 !== 'dhcp') return userNetFor(nic.ipv4.address, nic.ipv4.prefix, nic.ipv4.gateway, FORWARDED_PORTS, nic.macaddr)
    return userNetFor(DHCP_DEFAULT.address, DHCP_DEFAULT.prefix, DHCP_DEFAULT.gateway, FORWARDED_PORTS, nic.macaddr)
  }

  async start(spec: VmSpec, ctx: TaskContext): Promise<void> {
    if (this.#running(spec.node, spec.vmid)) throw new BackendError(`VM ${spec.vmid} already running`)
    const disks: VmDiskSpec[] = []
    const boot = spec.bootOrder.find((k) => spec.disks.some((d) => d.key === k))
    for (const d of spec.disks) {
      if (d.volid === 'none') continue
      if (d.firmware) {
        ctx.log(`${d.key}: kept, but not given to the VM (the lab's VMs boot with SeaBIOS and have no TPM)`)
        continue
      }
      const p = this.#vols.parse(spec.node, d.volid)
      if (!existsSync(p.path)) throw new BackendError(`start failed: volume '${d.volid}' does not exist`)
      const fmt = p.content === 'images' ? ((await this.#vols.imgInfo(p.path)).format as 'qcow2' | 'raw') : 'raw'
      const ide = /^ide(\d)$/.exec(d.key)
      if (d.media === 'cdrom' && !ide) {
        ctx.log(`warning: ${d.key}: CD-ROMs are attached on IDE only in the lab; skipped`)
        continue
      }
      const block = {file: p.path, format: fmt, id: d.key, ...(await this.#block.settings(p.storage.path(spec.node), d, ctx.log))}
      // scsi/sata disks are presented as virtio-blk (the lab has one disk controller model)
      if (ide) disks.push({...block, bus: 'ide', ideIndex: Number(ide[1]), media: d.media, readonly: d.media === 'cdrom'})
      else disks.push({...block, bus: 'virtio', serial: d.serial, ...(d.key === boot ? {bootIndex: 100} : {})})
    }
    if (!disks.some((d) => d.bootIndex !== undefined)) {
      const first = disks.find((d) => d.bus === 'virtio')
      if (first) first.bootIndex = 100
    }
    const net = QemuBackend.networkFor(spec)
    if (spec.nics.length > 1) ctx.log(`warning: only net0 is connected in the lab (${spec.nics.length} NICs configured)`)
    // the guest's paths to the host for this start (src/lab/qemu-uplink.ts)
    const uplink = net && this.#linkSim ? await attachUplink(this.#linkSim, {spec, net, runDir: this.#runDir(spec.node, spec.vmid), socat: this.#socat, log: ctx.log}) : undefined
    // its SMBIOS uuid, and the CPU PVE would give its config (src/lab/pve-cpu.ts)
    const uuid = /(?:^|,)uuid=([0-9a-f-]{36})/i.exec(spec.rawConfig.smbios1 ?? '')?.[1]
    const accel = await this.#accelDecision()
    ctx.log(`accelerator: ${accel.accel} (${accel.reason})`)
    let vm: QemuVm
    try {
      vm = await QemuVm.launch({
        name: `${spec.node}-${spec.vmid}`,
        dir: this.#runDir(spec.node, spec.vmid),
        memoryMiB: spec.memoryMb,
        cpus: Math.max(1, spec.cores * spec.sockets),
        disks,
        network: net,
        accel,
        cpu: labCpuArg(spec.rawConfig.cpu, accel.accel),
        uuid,
        guestAgent: true,
      })
    } catch (error) {
      throw new BackendError(`start failed: ${(error as Error).message}`)
    }
    this.#vms.set(`${spec.node}/${spec.vmid}`, {vm, spec, net, uplink})
    ctx.log(`VM ${spec.vmid} started (pid ${vm.pid})`)
    if (uplink) ctx.log(`uplink ${uplink.address}, ports ${uplink.ports.join(', ')}: through the link simulator to the host`)
    if (net) ctx.log(`guest network ${net.net} via ${net.host}, address ${net.guestAddress}; ${vm.forwards.map((f) => `${f.name} → ${f.host}:${f.hostPort}`).join(', ')}`)
  }

  async shutdown(spec: VmSpec, opts: {timeoutS: number; forceStop: boolean}, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    if (!r) return
    let asked = false
    if (spec.agent) {
      try {
        await r.vm.qga().shutdown('powerdown', 3000)
        asked = true
        ctx.log('shutdown requested through the guest agent')
      } catch (error) {
        ctx.log(`guest agent shutdown failed (${(error as Error).message}); sending ACPI power button`)
      }
    }
    if (!asked) await r.vm.powerdown().catch((e: Error) => ctx.log(`ACPI powerdown failed: ${e.message}`))
    if (await r.vm.waitExit(opts.timeoutS * 1000)) {
      this.#vms.delete(`${spec.node}/${spec.vmid}`)
      await r.vm.stop()
      return
    }
    if (!opts.forceStop) throw new BackendError('VM quit/powerdown failed - got timeout')
    ctx.log('VM still running - terminating now with SIGTERM')
    await r.vm.stop()
    this.#vms.delete(`${spec.node}/${spec.vmid}`)
  }

  async stop(node: string, vmid: number, ctx: TaskContext): Promise<void> {
    await this.#linkSim?.detach(node, vmid)
    const r = this.#vms.get(`${node}/${vmid}`)
    if (!r) return
    await r.vm.stop()
    this.#vms.delete(`${node}/${vmid}`)
    ctx.log(`VM ${vmid} stopped`)
  }

  status(node: string, vmid: number): VmRuntimeStatus {
    const r = this.#running(node, vmid)
    if (!r) return {running: false, uptime: 0, qmpstatus: 'stopped', cpu: 0, mem: 0}
    const {cpu, mem} = this.#usage(r)
    return {running: true, pid: r.vm.pid, uptime: r.vm.uptimeS(), qmpstatus: r.paused ? 'paused' : 'running', cpu, mem}
  }

  async #qmpCommand(node: string, vmid: number, command: string, args?: Record<string, unknown>): Promise<RunningVm> {
    const r = this.#running(node, vmid)
    if (!r) throw new BackendError(`VM ${vmid} not running`)
    const q = await r.vm.qmp()
    try {
      await q.execute(command, args, 10_000)
    } finally {
      q.close()
    }
    return r
  }

  async pause(node: string, vmid: number): Promise<void> {
    const r = await this.#qmpCommand(node, vmid, 'stop')
    r.paused = true
  }

  async resume(node: string, vmid: number): Promise<void> {
    const r = await this.#qmpCommand(node, vmid, 'cont')
    r.paused = false
  }

  // ---- hot-plug (PVE's vm_deviceplug / vm_deviceunplug for disks) ---------------------------------

  async hotplugDisk(spec: VmSpec, disk: VmDisk, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    if (!r) throw new BackendError(`VM ${spec.vmid} is not running`)
    if (disk.media === 'cdrom') throw new BackendError(`${disk.key}: CD-ROMs cannot be hot-plugged in the lab`)
    const p = this.#vols.parse(spec.node, disk.volid)
    if (!existsSync(p.path)) throw new BackendError(`volume '${disk.volid}' does not exist`)
    const format = p.content === 'images' ? (await this.#vols.imgInfo(p.path)).format : 'raw'
    if (disk.serial !== undefined && !/^[A-Za-z0-9_.-]{1,20}$/.test(disk.serial)) throw new BackendError(`${disk.key}: disk serial "${disk.serial}" must be 1–20 characters [A-Za-z0-9_.-]`)
    const node = `drive-${disk.key}`
    const q = await r.vm.qmp()
    try {
      // as at start: PVE's cache and aio (src/lab/pve-drive.ts), discard unmap (src/qemu/vm.ts)
      const b = await this.#block.settings(p.storage.path(spec.node), disk, ctx.log)
      await q.execute('blockdev-add', {'node-name': node, driver: format, discard: 'unmap', cache: qmpCache(b.cache), file: {driver: 'file', filename: p.path, discard: 'unmap', aio: b.aio, cache: qmpCache(b.cache)}}, 30_000)
      try {
        // scsi/sata disks are presented as virtio-blk, as at start (the lab has one disk controller model)
        await q.execute('device_add', {driver: 'virtio-blk-pci', id: disk.key, drive: node, ...(disk.serial ? {serial: disk.serial} : {})}, 30_000)
      } catch (error) {
        await q.execute('blockdev-del', {'node-name': node}, 10_000).catch(() => undefined)
        throw error
      }
    } catch (error) {
      throw new BackendError(`error on hotplug device '${disk.key}': ${(error as Error).message.replace(/^QMP \S+ failed: /, '')}`)
    } finally {
      q.close()
    }
    ;(r.hotplugged ??= new Set()).add(disk.key)
    this.#vols.forget(p.path)
    ctx.log(`hot-plugged ${disk.key} (${disk.volid}) as virtio-blk`)
  }

  async unplugDisk(spec: VmSpec, diskKey: string, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    if (!r) return
    const q = await r.vm.qmp()
    try {
      const devices = await q.execute<{name: string}[]>('qom-list', {path: '/machine/peripheral'}, 10_000)
      if (!devices.some((d) => d.name === diskKey)) return
      // the guest releases the device (ACPI eject) and QEMU then announces DEVICE_DELETED
      const deleted = new Promise<void>((resolve) => {
        const off = q.onEvent((e) => {
          if (e.event === 'DEVICE_DELETED' && (e.data as {device?: string} | undefined)?.device === diskKey) {
            off()
            resolve()
          }
        })
      })
      await q.execute('device_del', {id: diskKey}, 10_000)
      let timer: NodeJS.Timeout | undefined
      const ok = await Promise.race([deleted.then(() => true), new Promise<boolean>((res) => (timer = setTimeout(() => res(false), this.#opts.unplugTimeoutMs ?? 60_000)))])
      clearTimeout(timer)
      if (!ok) throw new BackendError(`error on hot-unplugging device '${diskKey}' (the guest did not release it)`)
      // a hot-plugged disk's block node goes with it; a disk given at start was a -drive, removed with its device
      if (r.hotplugged?.delete(diskKey)) await q.execute('blockdev-del', {'node-name': `drive-${diskKey}`}, 10_000)
    } catch (error) {
      if (error instanceof BackendError) throw error
      throw new BackendError(`error on hot-unplugging device '${diskKey}': ${(error as Error).message}`)
    } finally {
      q.close()
    }
    ctx.log(`unplugged ${diskKey}`)
  }

  /** CPU (fraction of a core, averaged since the previous call) and resident memory of QEMU. */
  #usage(r: RunningVm): {cpu: number; mem: number} {
    try {
      const stat = readFileSync(`/proc/${r.vm.pid}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const ticks = Number(f[11]) + Number(f[12])
      const rssPages = Number(f[21])
      const now = Date.now()
      let cpu = r.cpuSample?.cpu ?? 0
      if (r.cpuSample && now - r.cpuSample.at >= 500) cpu = (ticks - r.cpuSample.ticks) / 100 / ((now - r.cpuSample.at) / 1000)
      if (!r.cpuSample || now - r.cpuSample.at >= 500) r.cpuSample = {at: now, ticks, cpu}
      return {cpu: Math.max(0, Math.round(cpu * 1000) / 1000), mem: rssPages * 4096}
    } catch {
      return {cpu: 0, mem: 0}
    }
  }

  access(node: string, vmid: number): VmAccess | undefined {
    const r = this.#running(node, vmid)
    if (!r) return undefined
    const endpoints: Record<string, string> = {}
    for (const f of r.vm.forwards) endpoints[f.name] = `${f.host}:${f.hostPort}`
    const n = r.net
    const up = r.uplink ? `; the guest reaches the host's link simulator at ${r.uplink.address} (ports ${r.uplink.ports.join(', ')})` : ''
    return {
      endpoints,
      note: n
        ? `QEMU user-mode network ${n.net}: guest ${n.guestAddress}, gateway ${n.host}; only the listed ports reach the guest, on loopback${up}`
        : 'no network interface',
    }
  }

  async destroyVm(node: string, vmid: number, volids: string[], ctx: TaskContext): Promise<void> {
    await this.#linkSim?.detach(node, vmid)
    const r = this.#vms.get(`${node}/${vmid}`)
    if (r) {
      await r.vm.stop()
      this.#vms.delete(`${node}/${vmid}`)
    }
    for (const volid of volids) {
      try {
        const p = this.#vols.parse(node, volid)
        if (existsSync(p.path)) {
          await rm(p.path, {force: true})
          ctx.log(`Removing image: 100% complete...done.`)
        }
        this.#vols.forget(p.path)
      } catch (error) {
        ctx.log(`warning: ${volid}: ${(error as Error).message}`)
      }
    }
    for (const s of this.#init.storages) {
      const d = join(s.path(node), 'images', String(vmid))
      if (existsSync(d) && readdirSync(d).length === 0) await rm(d, {recursive: true, force: true})
    }
    await rm(this.#runDir(node, vmid), {recursive: true, force: true})
  }

  // ---- snapshots ------------------------------------------------------------------------------

  /** Disks with snapshots; `attached` when the running QEMU has them (firmware volumes it never has). */
  #snapDisks(spec: VmSpec): {key: string; path: string; volid: string; attached: boolean}[] {
    return spec.disks
      .filter((d) => d.media === 'disk' && !d.cloudinit && !/^ide\d$/.test(d.key))
      .map((d) => ({key: d.key, volid: d.volid, path: this.#vols.parse(spec.node, d.volid).path, attached: !d.firmware}))
      .filter((d) => d.path.endsWith('.qcow2'))
  }

  async snapshotCreate(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    for (const d of this.#snapDisks(spec)) {
      ctx.log(`snapshotting '${d.key}' (${d.volid})`)
      if (r && d.attached) {
        const q = await r.vm.qmp()
        try {
          await q.execute('blockdev-snapshot-internal-sync', {device: `drive-${d.key}`, name}, 120_000)
        } finally {
          q.close()
        }
      } else {
        await run('qemu-img', ['snapshot', '-c', name, d.path], {timeoutMs: 120_000})
      }
      this.#vols.forget(d.path)
    }
  }

  async snapshotRollback(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    if (this.#running(spec.node, spec.vmid)) throw new BackendError(`VM ${spec.vmid} is running - rollback needs it stopped`)
    for (const d of this.#snapDisks(spec)) {
      const info = await this.#vols.imgInfo(d.path)
      if (!(info.snapshots ?? []).some((s) => s.name === name)) throw new BackendError(`snapshot '${name}' does not exist on '${d.volid}'`)
    }
    for (const d of this.#snapDisks(spec)) {
      ctx.log(`rollback '${d.key}' to '${name}'`)
      await run('qemu-img', ['snapshot', '-a', name, d.path], {timeoutMs: 120_000})
      this.#vols.forget(d.path)
    }
  }

  async snapshotDelete(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    for (const d of this.#snapDisks(spec)) {
      const info = await this.#vols.imgInfo(d.path)
      if (!(info.snapshots ?? []).some((s) => s.name === name)) continue
      ctx.log(`delete snapshot '${name}' of '${d.key}'`)
      if (r && d.attached) {
        const q = await r.vm.qmp()
        try {
          await q.execute('blockdev-snapshot-delete-internal-sync', {device: `drive-${d.key}`, name}, 120_000)
        } finally {
          q.close()
        }
      } else {
        await run('qemu-img', ['snapshot', '-d', name, d.path], {timeoutMs: 120_000})
      }
      this.#vols.forget(d.path)
    }
  }

  // ---- guest agent: the real qemu-guest-agent -------------------------------------------------

  #qga(node: string, vmid: number): QgaClient {
    const r = this.#running(node, vmid)
    if (!r) throw new BackendError(`VM ${vmid} is not running`)
    return r.vm.qga()
  }

  readonly agent: GuestAgent = qemuGuestAgent((node, vmid) => this.#qga(node, vmid))

  /** For tests: wait until the guest agent of a VM answers (boot under TCG takes a while). */
  async waitAgent(node: string, vmid: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        await this.agent.ping(node, vmid, 3000)
        return
      } catch (error) {
        if (Date.now() > deadline) throw error
        await sleep(1000)
      }
    }
  }
}

export default QemuBackend