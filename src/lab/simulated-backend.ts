import {rm, stat} from 'node:fs/promises'
import {basename} from 'node:path'

import {sleep} from '../sleep.js'
import {simulatedAgent} from './simulated-agent.js'
import {bootGuest, readGuestFile, runGuestCommand} from './simulated-guest.js'
import {DataDisk, TEMPLATE_MODULES, TEMPLATE_ROWS, type BootState, type GuestEnv, type GuestFile} from './simulated-guest-state.js'
import {BackendError, type AgentExecStatus, type BackendInit, type DiskAllocation, type GuestAgent, type StorageContent, type TaskContext, type VmAccess, type VmBackend, type VmDisk, type VmRuntimeStatus, type VmSpec, type VolumeInfo} from './backend.js'

/**
 * The simulated backend: no VMs, no disk images. Volumes are records (size, format, the image
 * version they came from), operations take configurable times, and each "guest" answers the guest
 * agent from a model of the PGI image (src/lab/simulated-guest.ts: the guest contract's programs,
 * with their state on the data disk's volume, the OS disk's volume or the current boot, as in the
 * image). Built for scale tests: hundreds of VMs in one process.
 */

/** Realistic durations (ms) before scaling: what a small PVE node takes. */
export const DEFAULT_DURATIONS = {
  allocate: 2000,
  import: 20_000,
  start: 5000,
  /** From start until the guest agent answers. */
  boot: 15_000,
  shutdown: 4000,
  stop: 500,
  copy: 15_000,
  link: 1000,
  resize: 500,
  snapshot: 1500,
  rollback: 2000,
  destroy: 1000,
  importFile: 1000,
  template: 1000,
}
export type Durations = typeof DEFAULT_DURATIONS

export interface SimulatedOptions {
  /** Multiplies every duration (0 = instant, 0.01 for fast tests). Default 1. */
  timeScale?: number
  durations?: Partial<Durations>
  /**
   * A guest whose PGI never becomes healthy (fault injection: trytond does not start), asked with
   * the version of the OS image the guest booted.
   */
  guestUnhealthy?: (node: string, vmid: number, version: string) => boolean
  /** Does the guest's image record its health in /run/pgi/health.json (pgi-health.timer)? Default: yes. */
  guestHealthRecord?: (node: string, vmid: number) => boolean
  /** Guests whose image carries pgi-stage-delta (src/lab/simulated-stage-delta.ts); default: none (a 1.0.0-like image). */
  guestStageDelta?: {
    fetch: (url: string) => Buffer | undefined
    bytes?: (node: string, vmid: number) => number
    /** Options of `pgi-stage-delta start` the guest's tool lacks (an older image's, e.g. ['--patch']). */
    refuses?: (node: string, vmid: number) => readonly string[]
  }
}

interface SimVolume extends VolumeInfo {
  /** Image version carried by the volume (from the imported file's name), if any. */
  imageVersion?: string
  snapshots: Set<string>
}

interface SimVm {
  spec: VmSpec
  running: boolean
  /** vCPUs paused (QMP `stop`): qmpstatus `paused`. */
  paused?: boolean
  startedAt: number
  pid: number
  procs: Map<number, {status: AgentExecStatus}>
  nextPid: number
  /** /tmp and /run of the current boot. */
  runFiles: Map<string, GuestFile>
  /** What the current boot's units left (data disk, upgrade). */
  boot: BootState
  /** Accounts set by pgi-configure (ami). */
  accounts: Map<string, string>
  /** Version of the OS image this boot started. */
  bootedVersion: string
}

/**
 * The image version in a staged file's name, `<name>-<version>.<ext>` as deploy names it
 * (pgi-tryton-1.0.0.qcow2, pgi-tryton-2026.11.0.qcow2): the guest then reports that version, as a
 * real guest booted from that image does. Only calendar versions matched before, and a guest of
 * image 1.0.0 said it ran 0.0.0.
 */
const VERSION_RE = /-(\d+(?:\.\d+)+(?:[-+~][\w.]+)?)\.[A-Za-z0-9]+$/

/** A task's simulated duration; the lab's shutdown cuts it short (the task then fails: "task aborted"). */
function taskDuration(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve()
  return sleep(ms, signal).catch(() => {
    throw new Error('task aborted')
  })
}

function versionOf(json: Buffer | undefined): string | undefined {
  if (!json) return undefined
  try {
    const v = (JSON.parse(json.toString()) as {version?: unknown}).version
    return typeof v === 'string' ? v : undefined
  } catch {
    return undefined // not JSON: the guest keeps the file, the version stays what it was
  }
}

export function parseVolid(volid: string): {storage: string; name: string} {
  const i = volid.indexOf(':')
  if (i < 0) throw new BackendError(`unable to parse volume ID '${volid}'`)
  return {storage: volid.slice(0, i), name: volid.slice(i + 1)}
}

export class SimulatedBackend implements VmBackend {
  readonly kind = 'simulated'
  readonly #d: Durations
  readonly #scale: number
  readonly #unhealthy: (node: string, vmid: number, version: string) => boolean
  readonly #recordsHealth: (node: string, vmid: number) => boolean
  readonly #stageDelta: SimulatedOptions['guestStageDelta']
  #init!: BackendInit
  /** node → volid → volume */
  readonly #vols = new Map<string, Map<string, SimVolume>>()
  /** "node/vmid" → runtime */
  readonly #vms = new Map<string, SimVm>()
  /** "node volid" → what a data disk holds (/srv/pgi), created at the first boot with it */
  readonly #disks = new Map<string, DataDisk>()
  /** "node volid" → files of an OS disk (/etc…) written through the agent */
  readonly #osFiles = new Map<string, Map<string, GuestFile>>()
  /** "node volid@snapshot" → a volume's content when the snapshot was taken */
  readonly #snapContent = new Map<string, {disk?: DataDisk; osFiles?: Map<string, GuestFile>}>()
  #pidSeq = 20000

  constructor(opts: SimulatedOptions = {}) {
    this.#d = {...DEFAULT_DURATIONS, ...opts.durations}
    this.#scale = opts.timeScale ?? 1
    this.#unhealthy = opts.guestUnhealthy ?? (() => false)
    this.#recordsHealth = opts.guestHealthRecord ?? (() => true)
    this.#stageDelta = opts.guestStageDelta
  }

  #wait(what: keyof Durations, ctx?: TaskContext, factor = 1): Promise<void> {
    return taskDuration(this.#d[what] * this.#scale * factor, ctx?.signal)
  }

  async init(init: BackendInit): Promise<void> {
    this.#init = init
    for (const n of init.nodes) this.#vols.set(n.name, new Map())
  }

  async close(): Promise<void> {
    for (const vm of this.#vms.values()) vm.running = false
  }

  #nodeVols(node: string): Map<string, SimVolume> {
    const m = this.#vols.get(node)
    if (!m) throw new BackendError(`no such node '${node}'`)
    return m
  }

  #vm(node: string, vmid: number): SimVm | undefined {
    return this.#vms.get(`${node}/${vmid}`)
  }

  // ---- storage --------------------------------------------------------------------------------

  async listVolumes(node: string, storage: string, content?: StorageContent): Promise<VolumeInfo[]> {
    return [...this.#nodeVols(node).values()]
      .filter((v) => v.volid.startsWith(`${storage}:`) && (!content || v.content === content))
      .map(({snapshots: _s, imageVersion: _i, ...v}) => v)
  }

  async storageUsage(node: string, storage: string): Promise<{used: number}> {
    let used = 0
    for (const v of this.#nodeVols(node).values()) if (v.volid.startsWith(`${storage}:`)) used += v.used ?? v.size
    return {used}
  }

  async importFile(node: string, storage: string, content: StorageContent, filename: string, srcPath: string, ctx: TaskContext): Promise<VolumeInfo> {
    const st = await stat(srcPath)
    await this.#wait('importFile', ctx)
    // The simulation keeps the record, not the bytes: remove the temp file (the API layer verified its checksum).
    await rm(srcPath, {force: true})
    const volid = `${storage}:${content}/${filename}`
    const fmt = /\.(qcow2|raw|img|iso|vmdk)$/.exec(filename)?.[1] ?? 'raw'
    const v: SimVolume = {volid, content, format: fmt === 'img' ? 'raw' : fmt, size: st.size, used: st.size, ctime: Math.floor(Date.now() / 1000), snapshots: new Set(), imageVersion: VERSION_RE.exec(basename(filename))?.[1]}
    this.#nodeVols(node).set(volid, v)
    ctx.log(`imported ${filename} (${st.size} bytes) to ${volid}`)
    return v
  }

  async deleteVolume(node: string, volid: string): Promise<void> {
    if (!this.#nodeVols(node).delete(volid)) throw new BackendError(`volume '${volid}' does not exist`)
    this.#dropContent(node, volid)
  }

  // ---- what volumes hold (the guest's files) ---------------------------------------------------

  #key(node: string, volid: string): string {
    return `${node} ${volid}`
  }

  #dropContent(node: string, volid: string): void {
    const k = this.#key(node, volid)
    this.#disks.delete(k)
    this.#osFiles.delete(k)
    for (const s of [...this.#snapContent.keys()]) if (s.startsWith(`${k}@`)) this.#snapContent.delete(s)
  }

  /** A new volume made from `from` (a clone, a linked clone) holds what it held (at `snapname`, if given). */
  #copyContent(node: string, from: string, to: string, snapname?: string): void {
    const src = snapname ? this.#snapContent.get(`${this.#key(node, from)}@${snapname}`) : {disk: this.#disks.get(this.#key(node, from)), osFiles: this.#osFiles.get(this.#key(node, from))}
    if (src?.disk) this.#disks.set(this.#key(node, to), src.disk.clone())
    if (src?.osFiles) this.#osFiles.set(this.#key(node, to), cloneFiles(src.osFiles))
  }

  #renameContent(node: string, from: string, to: string): void {
    const a = this.#key(node, from)
    const b = this.#key(node, to)
    const d = this.#disks.get(a)
    if (d) this.#disks.set(b, d)
    const o = this.#osFiles.get(a)
    if (o) this.#osFiles.set(b, o)
    this.#disks.delete(a)
    this.#osFiles.delete(a)
  }

  async volumeInfo(node: string, volid: string): Promise<VolumeInfo | undefined> {
    return this.#nodeVols(node).get(volid)
  }

  // ---- disks --------------------------------------------------------------------------------

  #newName(node: string, storage: string, vmid: number, fmt: string, prefix = 'vm'): string {
    const vols = this.#nodeVols(node)
    for (let n = 0; ; n++) {
      const volid = `${storage}:${vmid}/${prefix}-${vmid}-disk-${n}.${fmt}`
      if (!vols.has(volid) && !vols.has(`${storage}:${vmid}/vm-${vmid}-disk-${n}.${fmt}`) && !vols.has(`${storage}:${vmid}/base-${vmid}-disk-${n}.${fmt}`)) return volid
    }
  }

  #add(node: string, v: Omit<SimVolume, 'ctime' | 'snapshots'> & {snapshots?: Set<string>}): SimVolume {
    const vol: SimVolume = {ctime: Math.floor(Date.now() / 1000), snapshots: new Set(), ...v}
    this.#nodeVols(node).set(vol.volid, vol)
    return vol
  }

  async allocateDisk(node: string, vmid: number, alloc: DiskAllocation, ctx: TaskContext): Promise<VolumeInfo> {
    const volid = this.#newName(node, alloc.storage, vmid, alloc.format)
    if (alloc.importFrom) {
      const src = this.#nodeVols(node).get(alloc.importFrom)
      if (!src) throw new BackendError(`unable to parse volume ID '${alloc.importFrom}'`)
      ctx.log(`importing disk '${alloc.importFrom}' to VM ${vmid} ...`)
      // Import time grows with the source size (20 s for a ~1 GiB image by default).
      await this.#wait('import', ctx, Math.max(0.2, src.size / 2 ** 30))
      const virtual = src.format === 'qcow2' ? Math.max(src.size, 2 * 2 ** 30) : src.size
      ctx.log(`transferred ${src.size} bytes: 100.00%`)
      return this.#add(node, {volid, content: 'images', format: alloc.format, size: virtual, used: src.size, vmid, imageVersion: src.imageVersion})
    }
    await this.#wait('allocate', ctx)
    ctx.log(`Formatting '${volid}', fmt=${alloc.format} size=${alloc.sizeBytes}`)
    return this.#add(node, {volid, content: 'images', format: alloc.format, size: alloc.sizeBytes ?? 0, used: 0, vmid})
  }

  async allocateCloudInit(node: string, vmid: number, storage: string): Promise<VolumeInfo> {
    const volid = `${storage}:${vmid}/vm-${vmid}-cloudinit.qcow2`
    return this.#add(node, {volid, content: 'images', format: 'qcow2', size: 4 * 2 ** 20, used: 4 * 2 ** 20, vmid})
  }

  async regenerateCloudInit(spec: VmSpec): Promise<void> {
    const vm = this.#vm(spec.node, spec.vmid)
    if (vm) vm.spec = spec
  }

  async copyDisk(node: string, srcVolid: string, newVmid: number, targetStorage: string, format: 'qcow2' | 'raw', ctx: TaskContext, snapname?: string): Promise<VolumeInfo> {
    const src = this.#nodeVols(node).get(srcVolid)
    if (!src) throw new BackendError(`volume '${srcVolid}' does not exist`)
    if (snapname && !src.snapshots.has(snapname)) throw new BackendError(`snapshot '${snapname}' does not exist on '${srcVolid}'`)
    ctx.log(`create full clone of drive (${srcVolid})`)
    await this.#wait('copy', ctx, Math.max(0.1, (src.used ?? src.size) / 2 ** 30))
    const volid = this.#newName(node, targetStorage, newVmid, format)
    this.#copyContent(node, srcVolid, volid, snapname)
    return this.#add(node, {volid, content: 'images', format, size: src.size, used: src.used, vmid: newVmid, imageVersion: src.imageVersion})
  }

  async linkDisk(node: string, baseVolid: string, newVmid: number, ctx: TaskContext): Promise<VolumeInfo> {
    const base = this.#nodeVols(node).get(baseVolid)
    if (!base) throw new BackendError(`volume '${baseVolid}' does not exist`)
    await this.#wait('link', ctx)
    const {storage, name} = parseVolid(baseVolid)
    const file = basename(this.#newName(node, storage, newVmid, base.format))
    const volid = `${storage}:${name}/${newVmid}/${file}`
    ctx.log(`create linked clone of drive (${baseVolid})`)
    this.#copyContent(node, baseVolid, volid)
    return this.#add(node, {volid, content: 'images', format: base.format, size: base.size, used: 0, vmid: newVmid, imageVersion: base.imageVersion})
  }

  async resizeDisk(spec: VmSpec, diskKey: string, newSizeBytes: number, ctx: TaskContext): Promise<void> {
    const d = spec.disks.find((x) => x.key === diskKey)
    const v = d && this.#nodeVols(spec.node).get(d.volid)
    if (!v) throw new BackendError(`no such disk '${diskKey}'`)
    await this.#wait('resize', ctx)
    v.size = newSizeBytes
  }

  async convertToTemplate(spec: VmSpec, ctx: TaskContext): Promise<Record<string, string>> {
    await this.#wait('template', ctx)
    const map: Record<string, string> = {}
    const vols = this.#nodeVols(spec.node)
    for (const d of spec.disks) {
      if (d.cloudinit || d.media === 'cdrom') continue
      const v = vols.get(d.volid)
      if (!v || !/\/vm-\d+-disk-\d+\./.test(v.volid)) continue
      const nv = v.volid.replace(/\/vm-(\d+)-disk-/, '/base-$1-disk-')
      vols.delete(v.volid)
      vols.set(nv, {...v, volid: nv})
      this.#renameContent(spec.node, v.volid, nv)
      map[v.volid] = nv
    }
    return map
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  async start(spec: VmSpec, ctx: TaskContext): Promise<void> {
    for (const d of spec.disks) {
      if (d.media === 'cdrom' && !d.cloudinit) continue
      if (!this.#nodeVols(spec.node).has(d.volid)) throw new BackendError(`start failed: volume '${d.volid}' does not exist`)
    }
    await this.#wait('start', ctx)
    const key = `${spec.node}/${spec.vmid}`
    const prev = this.#vms.get(key)
    const vm: SimVm = prev ?? {spec, running: false, startedAt: 0, pid: 0, procs: new Map(), nextPid: 1000, runFiles: new Map(), boot: {datadisk: {ok: false}, upgrade: {ok: false}}, accounts: new Map(), bootedVersion: ''}
    vm.spec = spec
    vm.running = true
    vm.paused = false
    vm.startedAt = Date.now()
    vm.pid = this.#pidSeq++
    vm.procs = new Map()
    // a new boot: /tmp and /run start empty, then the image's boot units run
    vm.runFiles = new Map()
    const env = this.#env(vm)
    vm.boot = bootGuest(env)
    vm.bootedVersion = env.osVersion
    this.#vms.set(key, vm)
    ctx.log(`VM ${spec.vmid} started (simulated)`)
  }

  async shutdown(spec: VmSpec, opts: {timeoutS: number; forceStop: boolean}, ctx: TaskContext): Promise<void> {
    const vm = this.#vm(spec.node, spec.vmid)
    if (!vm?.running) return
    // A guest without a running agent or still booting ignores ACPI only in real life; the model always obeys.
    await this.#wait('shutdown', ctx)
    vm.running = false
  }

  async stop(node: string, vmid: number, ctx: TaskContext): Promise<void> {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) return
    await this.#wait('stop', ctx)
    vm.running = false
  }

  status(node: string, vmid: number): VmRuntimeStatus {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) return {running: false, uptime: 0, qmpstatus: 'stopped', cpu: 0, mem: 0}
    const uptime = Math.floor((Date.now() - vm.startedAt) / 1000)
    return {running: true, pid: vm.pid, uptime, qmpstatus: vm.paused ? 'paused' : 'running', cpu: vm.paused ? 0 : 0.02, mem: Math.min(vm.spec.memoryMb, 900) * 2 ** 20}
  }

  async pause(node: string, vmid: number): Promise<void> {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) throw new BackendError(`VM ${vmid} not running`)
    vm.paused = true
  }

  async resume(node: string, vmid: number): Promise<void> {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) throw new BackendError(`VM ${vmid} not running`)
    vm.paused = false
  }

  // ---- hot-plug ------------------------------------------------------------------------------------

  async hotplugDisk(spec: VmSpec, disk: VmDisk, ctx: TaskContext): Promise<void> {
    const vm = this.#vm(spec.node, spec.vmid)
    if (!vm?.running) throw new BackendError(`VM ${spec.vmid} is not running`)
    if (!this.#nodeVols(spec.node).has(disk.volid)) throw new BackendError(`volume '${disk.volid}' does not exist`)
    if (vm.spec.disks.some((d) => d.key === disk.key)) throw new BackendError(`error on hotplug device '${disk.key}': duplicate ID '${disk.key}' for device`)
    // the guest sees the new disk (get-fsinfo…); what mounts at boot (the data disk) waits for a boot
    vm.spec = {...vm.spec, disks: [...vm.spec.disks, disk]}
    ctx.log(`hot-plugged ${disk.key} (${disk.volid})`)
  }

  async unplugDisk(spec: VmSpec, diskKey: string, ctx: TaskContext): Promise<void> {
    const vm = this.#vm(spec.node, spec.vmid)
    if (!vm?.running) return
    vm.spec = {...vm.spec, disks: vm.spec.disks.filter((d) => d.key !== diskKey)}
    ctx.log(`unplugged ${diskKey}`)
  }

  access(node: string, vmid: number): VmAccess | undefined {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) return undefined
    // no network: nothing is forwarded; the addresses are those cloud-init was given (what its agent reports)
    const addresses = vm.spec.nics.flatMap((n) => (n.ipv4 && n.ipv4 !== 'dhcp' ? [n.ipv4.address] : []))
    return {endpoints: {}, addresses, note: 'simulated backend: no network, guest answers the agent from a model'}
  }

  async destroyVm(node: string, vmid: number, volids: string[], ctx: TaskContext): Promise<void> {
    await this.#wait('destroy', ctx)
    const vols = this.#nodeVols(node)
    for (const v of volids) {
      vols.delete(v)
      this.#dropContent(node, v)
    }
    this.#vms.delete(`${node}/${vmid}`)
  }

  // ---- snapshots -------------------------------------------------------------------------------

  #snapDisks(spec: VmSpec): SimVolume[] {
    const vols = this.#nodeVols(spec.node)
    return spec.disks.filter((d) => d.media === 'disk' && !d.cloudinit).map((d) => vols.get(d.volid)).filter((v): v is SimVolume => v !== undefined)
  }

  async snapshotCreate(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    await this.#wait('snapshot', ctx)
    for (const v of this.#snapDisks(spec)) {
      v.snapshots.add(name)
      // what the volume holds (a data disk's databases and backups, an OS disk's files) goes with it
      const k = this.#key(spec.node, v.volid)
      const disk = this.#disks.get(k)
      const osFiles = this.#osFiles.get(k)
      this.#snapContent.set(`${k}@${name}`, {...(disk ? {disk: disk.clone()} : {}), ...(osFiles ? {osFiles: cloneFiles(osFiles)} : {})})
      ctx.log(`snapshotting '${v.volid}' (${name})`)
    }
  }

  async snapshotRollback(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    await this.#wait('rollback', ctx)
    const disks = this.#snapDisks(spec)
    for (const v of disks) if (!v.snapshots.has(name)) throw new BackendError(`snapshot '${name}' does not exist on '${v.volid}'`)
    for (const v of disks) {
      const k = this.#key(spec.node, v.volid)
      const saved = this.#snapContent.get(`${k}@${name}`)
      if (saved?.disk) this.#disks.set(k, saved.disk.clone())
      else this.#disks.delete(k)
      if (saved?.osFiles) this.#osFiles.set(k, cloneFiles(saved.osFiles))
      else this.#osFiles.delete(k)
    }
  }

  async snapshotDelete(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    await this.#wait('snapshot', ctx, 0.5)
    for (const v of this.#snapDisks(spec)) {
      v.snapshots.delete(name)
      this.#snapContent.delete(`${this.#key(spec.node, v.volid)}@${name}`)
    }
  }

  // ---- guest agent model --------------------------------------------------------------------------

  #agentVm(node: string, vmid: number, cmd: string): SimVm {
    const vm = this.#vm(node, vmid)
    if (!vm?.running) throw new BackendError(`VM ${vmid} is not running`)
    if (!vm.spec.agent) throw new BackendError('No QEMU guest agent configured')
    if (Date.now() - vm.startedAt < this.#d.boot * this.#scale) throw new BackendError('QEMU guest agent is not running')
    void cmd
    return vm
  }

  #osDisk(spec: VmSpec): VmSpec['disks'][number] | undefined {
    return spec.disks.find((d) => d.key === 'virtio0') ?? spec.disks.find((d) => d.media === 'disk' && !d.cloudinit && !d.firmware && d.serial !== 'pgi-data')
  }

  /** The OS disk's files (created on first use). */
  #osFilesOf(spec: VmSpec): Map<string, GuestFile> {
    const os = this.#osDisk(spec)
    const k = this.#key(spec.node, os?.volid ?? `(no OS disk of ${spec.vmid})`)
    let m = this.#osFiles.get(k)
    if (!m) this.#osFiles.set(k, (m = new Map()))
    return m
  }

  /** Everything the guest of `vm` sees now: its OS disk, its data disk (by serial), this boot. */
  #env(vm: SimVm): GuestEnv {
    const spec = vm.spec
    const vols = this.#nodeVols(spec.node)
    const osFiles = this.#osFilesOf(spec)
    const os = this.#osDisk(spec)
    const written = versionOf(osFiles.get('/etc/pgi/image.json')?.data)
    const osVersion = written ?? (os && vols.get(os.volid)?.imageVersion) ?? spec.imageVersion ?? '0.0.0'
    const data = spec.disks.find((d) => d.serial === 'pgi-data' && d.media === 'disk')
    const dataVol = data && vols.get(data.volid)
    let disk: DataDisk | undefined
    if (data && dataVol) {
      const k = this.#key(spec.node, data.volid)
      disk = this.#disks.get(k)
      if (!disk) this.#disks.set(k, (disk = new DataDisk()))
    }
    // the fault is asked at every look (a test may clear it: trytond then answers again)
    const trytondUp = vm.boot.datadisk.ok && !this.#unhealthy(spec.node, spec.vmid, vm.bootedVersion || osVersion)
    return {hostname: spec.name, osVersion, disk, diskSizeBytes: dataVol?.size ?? 0, osFiles, runFiles: vm.runFiles, boot: vm.boot, trytondUp, accounts: vm.accounts, now: Date.now, ...(this.#stageDelta ? {stageDelta: {fetch: this.#stageDelta.fetch, timeScale: this.#scale, ...(this.#stageDelta.bytes ? {bytes: this.#stageDelta.bytes(spec.node, spec.vmid)} : {}), ...(this.#stageDelta.refuses ? {refuses: this.#stageDelta.refuses(spec.node, spec.vmid)} : {})}} : {})}
  }

  /**
   * /run/pgi/health.json as the image's pgi-health.timer writes it (guest contract, docs/image.md):
   * first run 1 min after boot, then every 2 min (scaled like the other durations; at once at
   * scale 0); none before the first run (/run is a tmpfs). Its content is the guest's health now,
   * stamped with the last run's time.
   */
  #healthRecord(vm: SimVm): Buffer | undefined {
    if (!this.#recordsHealth(vm.spec.node, vm.spec.vmid)) return undefined
    const up = Date.now() - vm.startedAt
    const first = 60_000 * this.#scale
    const every = 120_000 * this.#scale
    if (up < first) return undefined
    const at = every > 0 ? vm.startedAt + first + Math.floor((up - first) / every) * every : Date.now()
    const h = runGuestCommand(this.#env(vm), ['/usr/local/sbin/pgi-health'], undefined)
    return Buffer.from(JSON.stringify({v: 1, at: new Date(at).toISOString().replace(/\.\d{3}Z$/, 'Z'), took_s: 0.4, exit_code: h.code, health: JSON.parse(h.out) as unknown}))
  }

  #readFile(vm: SimVm, file: string): Buffer | undefined {
    if (file === '/run/pgi/health.json' && !vm.runFiles.has(file)) return this.#healthRecord(vm)
    return readGuestFile(this.#env(vm), file)
  }

  readonly agent: GuestAgent = simulatedAgent<SimVm>({
    vm: (node, vmid, command) => this.#agentVm(node, vmid, command),
    env: (vm) => this.#env(vm),
    readFile: (vm, file) => this.#readFile(vm, file),
    volume: (node, volid) => this.#nodeVols(node).get(volid),
  })

  // ---- inspection and set-up (tests, the scale bench) -----------------------------------------

  /** For tests: the disks the running guest has (those it started with and those hot-plugged since). */
  guestDisks(node: string, vmid: number): VmDisk[] {
    const vm = this.#vm(node, vmid)
    return vm?.running ? vm.spec.disks.filter((d) => !d.firmware) : []
  }

  /**
   * Adds a database to the data disk of a VM that has booted with one, as `pgi-db create` and a
   * class's work would leave it: the template's modules, the given key-table row counts.
   */
  addDatabase(node: string, vmid: number, name: string, rows: Record<string, number> = TEMPLATE_ROWS, modules: Record<string, string> = TEMPLATE_MODULES): void {
    const disk = this.dataDisk(node, vmid)
    if (!disk) throw new BackendError(`VM ${vmid} has no data disk that has booted`)
    disk.databases.set(name, {modules: {...modules}, rows: {...rows}})
  }

  /** What the data disk of a VM holds (its volume's content), undefined before its first boot. */
  dataDisk(node: string, vmid: number): DataDisk | undefined {
    const vm = this.#vm(node, vmid)
    const data = vm?.spec.disks.find((d) => d.serial === 'pgi-data' && d.media === 'disk')
    const d = data && this.#disks.get(this.#key(node, data.volid))
    return d?.state ? d : undefined
  }

  /** The version of the OS image the VM last booted, and what its boot-time units reported. */
  guestBoot(node: string, vmid: number): {osVersion: string; boot: BootState} | undefined {
    const vm = this.#vm(node, vmid)
    return vm ? {osVersion: vm.bootedVersion, boot: vm.boot} : undefined
  }
}

function cloneFiles(m: Map<string, GuestFile>): Map<string, GuestFile> {
  return new Map([...m].map(([k, f]) => [k, {data: Buffer.from(f.data), mtime: f.mtime}]))
}
