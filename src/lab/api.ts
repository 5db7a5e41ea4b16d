import {randomBytes, randomUUID} from 'node:crypto'

import {run} from '../exec.js'
import {AccessControl, PermissionError, type Principal} from './access.js'
import {BackendError, type CloudInitSpec, type StorageDef, type TaskContext, type VmBackend, type VmDisk, type VmNic, type VmSpec} from './backend.js'
import {Faults} from './faults.js'
import {loadPveSchema, releaseOf, type PveSchema} from './pve-schema.js'
import {agentRoutes} from './routes/agent.js'
import {clusterRoutes} from './routes/cluster.js'
import {qemuRoutes} from './routes/qemu.js'
import {storageRoutes} from './routes/storage.js'
import {ConfigLocks, TaskManager} from './tasks.js'
import {formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from './validate.js'
import {
  CALL_PARAMS,
  configDigest,
  defaultBootOrder,
  hotplugFeatures,
  isCdrom,
  isCloudinitDrive,
  isCloudinitKey,
  isDriveKey,
  isFastPlug,
  newVm,
  nextUnused,
  normaliseOption,
  outputValue,
  parseDrive,
  printDrive,
  referencedVolids,
  vmDigest,
  withPending,
  type Drive,
  type VmRecord,
} from './vmconfig.js'

export {configDigest, type VmRecord} from './vmconfig.js'

/**
 * The PVE semantics of the lab: VM configs (source of truth, with PVE's [PENDING] section and
 * hot-plug rules), locks, digests, tasks, permissions and every endpoint's behaviour. The HTTP
 * layer (server.ts) parses requests, authenticates, validates parameters against the PVE schema
 * and runs the schema's permission check, then calls `handlers[route.handler]`; backends do the
 * machine work.
 */

/** An error answered with an HTTP status and PVE's message (as reason phrase and `message`). */
export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

export interface PoolRecord {
  comment?: string
  /** Member ids: "qemu/100", "storage/local". */
  members: Set<string>
}

export interface NodeState {
  name: string
  vms: Map<number, VmRecord>
  pools: Map<string, PoolRecord>
  /** Unix start time of the node (for /nodes uptime). */
  started: number
}

export interface LabApiOptions {
  nodes: string[]
  storages: StorageDef[]
  backend: VmBackend
  access: AccessControl
  faults?: Faults
  pveVersion: string
  /** Config-lock wait before "can't lock file … got timeout" (PVE: 10 s). */
  lockTimeoutMs?: number
  /** Called after every state change (debounced persistence). */
  onChange?: () => void
  log?: (line: string) => void
  /** Host-side directory for temp upload/download files (inside the lab dir). */
  tmpDir: string
}

export interface Ctx {
  node: NodeState
  params: RawParams
  principal: Principal
  /** Uploaded file (multipart) for storage upload. */
  upload?: {path: string; size: number}
}

export type Handler = (c: Ctx) => Promise<unknown>

/** What `PVE::Tools::assert_if_modified` says (resize, move_disk, …). */
export const DIGEST_MISMATCH = 'detected modified configuration - file changed by other user? Try again.'
/** What a config update says when `digest` does not match (qemu-server's update_vm_api). */
export const CONFIG_DIGEST_MISMATCH = 'checksum mismatch (file change by other user?)'
export const MASK = '**********'

export function randomMac(): string {
  const b = randomBytes(6)
  b[0] = 0xbc
  b[1] = 0x24
  b[2] = 0x11
  return [...b].map((x) => x.toString(16).toUpperCase().padStart(2, '0')).join(':')
}

/** Privilege(s) a config key needs (qemu-server's check_vm_modify_config_perm); drives are checked per value. */
const KEY_PRIVS: [RegExp, string[], boolean?][] = [
  [/^(cores|cpu|runningcpu|cpulimit|cpuunits|numa|smp|sockets|vcpus|numa\d+)$/, ['VM.Config.CPU']],
  [/^(memory|balloon|shares|allow-ksm)$/, ['VM.Config.Memory']],
  [/^(acpi|hotplug|kvm|machine|runningmachine|scsihw|smbios1|tablet|vga|watchdog|audio0|rng0)$/, ['VM.Config.HWType']],
  [/^(agent|autostart|bios|description|keyboard|localtime|migrate_downtime|migrate_speed|name|onboot|ostype|protection|reboot|startdate|startup|tdf|template|tags)$/, ['VM.Config.Options']],
  [/^freeze$/, ['VM.PowerMgmt']],
  [/^(boot|bootdisk|vmstatestorage)$/, ['VM.Config.Disk']],
  [/^(net\d+|running-nets-host-mtu)$/, ['VM.Config.Network']],
  [/^(cicustom|cipassword|citype|ciuser|ciupgrade|nameserver|searchdomain|sshkeys|ipconfig\d+)$/, ['VM.Config.Cloudinit', 'VM.Config.Network'], true],
  [/^vmstate$/, ['VM.Config.Disk', 'VM.PowerMgmt']],
]

/** Whether a VM config turns the guest agent on (`agent: 1` or `agent: enabled=1,…`). */
export function agentEnabled(cfg: Record<string, string>): boolean {
  return /^(1|enabled=1)(,|$)/.test(cfg.agent ?? '')
}

export class LabApi {
  readonly nodes = new Map<string, NodeState>()
  readonly tasks = new TaskManager()
  readonly locks: ConfigLocks
  readonly faults: Faults
  readonly handlers: Record<string, Handler>
  readonly schema: PveSchema
  readonly #o: LabApiOptions
  readonly storages: Map<string, StorageDef>

  constructor(o: LabApiOptions) {
    this.#o = o
    this.faults = o.faults ?? new Faults()
    this.locks = new ConfigLocks(o.lockTimeoutMs ?? 10_000)
    this.storages = new Map(o.storages.map((s) => [s.id, s]))
    this.schema = loadPveSchema(releaseOf(o.pveVersion))
    const started = Math.floor(Date.now() / 1000)
    for (const n of o.nodes) this.nodes.set(n, {name: n, vms: new Map(), pools: new Map(), started})
    this.handlers = {...clusterRoutes(this), ...qemuRoutes(this), ...agentRoutes(this), ...storageRoutes(this)}
  }

  get pveVersion(): string {
    return this.#o.pveVersion
  }

  get access(): AccessControl {
    return this.#o.access
  }

  get backend(): VmBackend {
    return this.#o.backend
  }

  changed(): void {
    this.#o.onChange?.()
  }

  log(line: string): void {
    this.#o.log?.(line)
  }

  // ---- helpers -----------------------------------------------------------------------------------

  vmOf(c: Ctx): VmRecord {
    const vmid = Number(c.params.vmid)
    const vm = c.node.vms.get(vmid)
    if (!vm) throw new HttpError(500, `Configuration file 'nodes/${c.node.name}/qemu-server/${vmid}.conf' does not exist`)
    return vm
  }

  authid(p: Principal): string {
    return p.tokenid ?? p.user
  }

  checkLock(vm: VmRecord, c: Ctx): void {
    const skip = parseBool(c.params.skiplock)
    if (skip && !this.access.isRoot(c.principal)) throw new ParamError({skiplock: 'Only root may use this option.'})
    if (vm.config.lock && !skip) throw new HttpError(500, `VM is locked (${vm.config.lock})`)
  }

  storageDef(id: string, content?: string): StorageDef {
    const s = this.storages.get(id)
    if (!s) throw new HttpError(500, `storage '${id}' does not exist`)
    if (content && !s.content.includes(content as never)) throw new HttpError(500, `storage '${id}' does not support content-type '${content}'`)
    return s
  }

  running(c: Ctx, vm: VmRecord): boolean {
    return this.backend.status(c.node.name, vm.vmid).running
  }

  async withConfigLock<T>(c: Ctx, vmid: number, fn: () => Promise<T> | T): Promise<T> {
    if (this.faults.lockContention(c.node.name, vmid)) {
      // Another (simulated) holder keeps the lock past the timeout.
      await new Promise((r) => setTimeout(r, Math.min(this.locks.timeoutMs, 10_000)))
      throw new HttpError(500, `can't lock file '/var/lock/qemu-server/lock-${vmid}.conf' - got timeout`)
    }
    try {
      return await this.locks.with(c.node.name, vmid, fn)
    } catch (e) {
      if (e instanceof Error && /^can't lock file/.test(e.message)) throw new HttpError(500, e.message)
      throw e
    }
  }

  /** Runs fn as a task; injects task failures (replayable) before the work starts. */
  task(c: Ctx, type: string, id: string, fn: (ctx: TaskContext) => Promise<void>, onFault?: () => void): string {
    const fails = this.faults.taskFails(type, `${c.node.name}:${id}`)
    return this.tasks.start(c.node.name, type, id, this.authid(c.principal), async (ctx) => {
      if (fails) {
        onFault?.()
        this.changed()
        throw new Error(`${type} ${id}: lab fault injection (seed ${this.faults.config.seed})`)
      }
      try {
        await fn(ctx)
      } catch (e) {
        if (e instanceof BackendError || e instanceof HttpError) throw new Error(e.message)
        if (e instanceof ParamError) throw new Error(Object.entries(e.errors).map(([k, v]) => `${k}: ${v}`).join('\n'))
        throw e
      } finally {
        this.changed()
      }
    })
  }

  // ---- drives ------------------------------------------------------------------------------------

  parseDrive(key: string, value: string): Drive {
    return parseDrive(this.schema, key, value)
  }

  /** A VM disk as the backend sees it. */
  #vmDisk(d: Drive): VmDisk {
    const cloudinit = isCloudinitDrive(d)
    return {key: d.key, volid: d.file, media: isCdrom(d) ? 'cdrom' : 'disk', serial: d.opts.serial, ...(cloudinit ? {cloudinit: true} : {}), ...(/^(efidisk|tpmstate)0$/.test(d.key) ? {firmware: true} : {})}
  }

  /** Builds the backend's VmSpec from the current config. */
  spec(node: string, vm: VmRecord): VmSpec {
    const cfg = vm.config
    const disks: VmDisk[] = []
    const nics: VmNic[] = []
    for (const [k, v] of Object.entries(cfg)) {
      if (isDriveKey(k)) disks.push(this.#vmDisk(this.parseDrive(k, v)))
      const nm = /^net(\d+)$/.exec(k)
      if (nm) {
        const p = this.#parseNet(k, v)
        const ipc = cfg[`ipconfig${nm[1]}`]
        let ipv4: VmNic['ipv4']
        if (ipc) {
          const kv = Object.fromEntries(ipc.split(',').map((x) => x.split('=') as [string, string]))
          if (kv.ip === 'dhcp') ipv4 = 'dhcp'
          else if (kv.ip && kv.ip !== 'manual') ipv4 = {address: kv.ip.split('/')[0]!, prefix: Number(kv.ip.split('/')[1]), gateway: kv.gw}
        }
        nics.push({key: k, model: p.model ?? 'virtio', macaddr: p.macaddr ?? '', bridge: p.bridge, ipv4})
      }
    }
    let cloudInit: CloudInitSpec | undefined
    if (disks.some((d) => d.cloudinit)) {
      const ipconfig: CloudInitSpec['ipconfig'] = {}
      for (const [k, v] of Object.entries(cfg)) {
        const m = /^ipconfig(\d+)$/.exec(k)
        if (m) ipconfig[`net${m[1]}`] = Object.fromEntries(v.split(',').map((x) => x.split('=') as [string, string]))
      }
      cloudInit = {
        hostname: cfg.name ?? `VM${vm.vmid}`,
        user: cfg.ciuser,
        passwordHash: cfg.cipassword,
        sshKeys: cfg.sshkeys ? decodeURIComponent(cfg.sshkeys).split('\n').filter((l) => l.trim() !== '') : [],
        nameservers: cfg.nameserver ? splitList(cfg.nameserver) : [],
        searchdomain: cfg.searchdomain,
        ipconfig,
        type: cfg.citype === 'configdrive2' ? 'configdrive2' : 'nocloud',
        upgrade: cfg.ciupgrade === undefined ? true : cfg.ciupgrade === '1',
      }
    }
    const boot = /order=([^,]+)/.exec(cfg.boot ?? '')?.[1]?.split(';') ?? disks.filter((d) => d.media === 'disk' && !d.firmware).map((d) => d.key)
    const version = /(?:^|;)pgi-(\d{4}\.\d+\.\d+)/.exec(cfg.tags ?? '')?.[1] ?? /image[ :=]+v?(\d{4}\.\d+\.\d+)/i.exec(decodeURIComponent(cfg.description ?? ''))?.[1]
    const memory = /^(?:current=)?(\d+)/.exec(cfg.memory ?? '')?.[1]
    return {
      node,
      vmid: vm.vmid,
      name: cfg.name ?? `VM${vm.vmid}`,
      cores: Number(cfg.cores ?? 1),
      sockets: Number(cfg.sockets ?? 1),
      memoryMb: Number(memory ?? 512),
      agent: agentEnabled(cfg),
      disks,
      nics,
      bootOrder: boot,
      cloudInit,
      imageVersion: version,
      rawConfig: {...cfg},
    }
  }

  #parseNet(_key: string, value: string): Record<string, string> {
    const props = this.schema.method('POST', '/nodes/{node}/qemu')!.parameters!.properties!
    return parsePropertyString(value, props['net[n]']!.format as never)
  }

  /** A net property string with its MAC (qemu-server's print_net after parse_net, which adds a random MAC). */
  #normaliseNet(key: string, value: string): string {
    const p = this.#parseNet(key, value)
    const model = p.model ?? 'virtio'
    const mac = (p.macaddr ?? randomMac()).toUpperCase()
    const rest = Object.keys(p)
      .filter((x) => x !== 'model' && x !== 'macaddr')
      .sort()
      .map((x) => `${x}=${p[x]}`)
    return [`${model}=${mac}`, ...rest].join(',')
  }

  /**
   * qemu-server's create_disks for one drive parameter: allocates a new volume (`STORAGE:SIZE`,
   * `STORAGE:0,import-from=…`, `STORAGE:cloudinit`, efidisk0/tpmstate0) or checks an existing one,
   * and returns the value to store. `created` collects new volids (removed if the call fails).
   */
  async createDrive(c: Ctx, vm: VmRecord, key: string, value: string, ctx: TaskContext, defaultStorage: string | undefined, created: string[]): Promise<string> {
    const d = this.parseDrive(key, value)
    const file = d.file
    if (file === '' || file === 'none' || file === 'cdrom') {
      delete d.opts.size
      return printDrive(d)
    }
    const ci = /^(?:([a-z][a-z0-9\-_.]*[a-z0-9]):)?cloudinit$/i.exec(file)
    if (ci) {
      const storage = ci[1] ?? defaultStorage
      if (!storage) throw new HttpError(500, 'no storage ID specified (and no default storage)')
      const existing = Object.entries({...vm.config, ...vm.pending}).find(([k, v]) => k !== key && isDriveKey(k) && isCloudinitDrive(this.parseDrive(k, v)))
      if (existing) throw new HttpError(500, `${key} - cloud-init drive is already attached at '${existing[0]}'`)
      this.storageDef(storage, 'images')
      const vol = await this.backend.allocateCloudInit(c.node.name, vm.vmid, storage, ctx)
      created.push(vol.volid)
      const {format: _f, ...opts} = d.opts
      ctx.log(`${key}: successfully created disk '${printDrive({key, file: vol.volid, opts: {...opts, media: 'cdrom'}})}'`)
      return printDrive({key, file: vol.volid, opts: {...opts, media: 'cdrom'}})
    }
    const alloc = /^(?:([^/:\s]+):)?(\d+(?:\.\d+)?)$/.exec(file)
    if (alloc && !isCdrom(d)) {
      const storage = alloc[1] ?? defaultStorage
      if (!storage) throw new HttpError(500, 'no storage ID specified (and no default storage)')
      this.storageDef(storage, 'images')
      const fmt = (d.opts.format === 'raw' ? 'raw' : 'qcow2') as 'qcow2' | 'raw'
      const {format: _f, 'import-from': src, ...opts} = d.opts
      let vol
      if (key === 'efidisk0' || key === 'tpmstate0') {
        // OVMF variables (528K for 4m, 128K for 2m) and the TPM state (4M): fixed sizes, as PVE allocates them
        const size = key === 'tpmstate0' ? 4 * 2 ** 20 : d.opts.efitype === '4m' ? 528 * 1024 : 128 * 1024
        vol = await this.backend.allocateDisk(c.node.name, vm.vmid, {storage, format: fmt, sizeBytes: size}, ctx)
      } else if (src) {
        const info = await this.backend.volumeInfo(c.node.name, src)
        if (!info) throw new HttpError(500, `cannot import from '${src}' - volume '${src}' does not exist`)
        if (info.content !== 'images' && info.content !== 'import') throw new ParamError({[key]: `${src} has wrong type '${info.content}' - needs to be 'images' or 'import'`})
        vol = await this.backend.allocateDisk(c.node.name, vm.vmid, {storage, format: fmt, importFrom: src}, ctx)
      } else {
        vol = await this.backend.allocateDisk(c.node.name, vm.vmid, {storage, format: fmt, sizeBytes: parseSize(alloc[2]!, 'G')}, ctx)
      }
      created.push(vol.volid)
      return printDrive({key, file: vol.volid, opts: {...opts, size: formatSize(vol.size)}})
    }
    // An existing volume (an image, an ISO) or, for root, a path.
    if (file.startsWith('/')) return printDrive(d)
    const info = await this.backend.volumeInfo(c.node.name, file)
    if (!info) throw new HttpError(500, `volume '${file}' does not exist`)
    if (info.content !== 'images' && info.content !== 'iso') throw new ParamError({[key]: "content type needs to be 'images' or 'iso'"})
    if (info.content === 'images' && d.opts.size === undefined) d.opts.size = formatSize(info.size)
    return printDrive(d)
  }

  /**
   * PVE's storage access checks for drive parameters (check_storage_access): allocation needs
   * Datastore.AllocateSpace on the target storage; an existing volume or an import source needs
   * access to it (check_volume_access); filesystem paths are root@pam's alone.
   */
  checkDriveAccess(c: Ctx, params: RawParams, defaultStorage?: string): void {
    for (const [k, v] of Object.entries(params)) {
      if (!isDriveKey(k) || typeof v !== 'string') continue
      const d = this.parseDrive(k, v)
      const file = d.file
      if (file === '' || file === 'none' || /(^|:)cloudinit$/.test(file)) {
        // nothing to check
      } else if (isCdrom(d) && file === 'cdrom') {
        this.access.check(c.principal, '/', ['Sys.Console'])
      } else if (!isCdrom(d) && /^(?:([^/:\s]+):)?(\d+(?:\.\d+)?)$/.test(file)) {
        const storage = /^([^/:\s]+):/.exec(file)?.[1] ?? defaultStorage
        if (!storage) throw new HttpError(500, 'no storage ID specified (and no default storage)')
        this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
        const s = this.storages.get(storage)
        if (!s) throw new HttpError(500, `storage '${storage}' does not exist`)
        if (!s.content.includes('images')) throw new ParamError({storage: `storage '${storage}' does not support vm images`})
      } else this.#checkVolumeAccess(c, file)
      const src = d.opts['import-from']
      if (src) this.#checkVolumeAccess(c, src)
    }
  }

  /** PVE::Storage::check_volume_access (the parts the lab's storages need). */
  #checkVolumeAccess(c: Ctx, volid: string): void {
    if (volid.startsWith('/') || !volid.includes(':')) {
      if (!this.access.isRoot(c.principal)) throw new HttpError(500, 'Only root can pass arbitrary filesystem paths.')
      return
    }
    const storage = volid.split(':')[0]!
    const owner = /^[^:]+:(?:base-\d+-disk-\d+\.\w+\/)?(\d+)\//.exec(volid)?.[1]
    if (owner) {
      // an image of a VM: the VM's disk privilege, or the storage's allocation right
      if (this.access.has(c.principal, `/storage/${storage}`, 'Datastore.Allocate')) return
      this.access.check(c.principal, `/vms/${owner}`, ['VM.Config.Disk'])
      return
    }
    this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace', 'Datastore.Audit'], true)
  }

  /** Permission checks for config keys being set or deleted (qemu-server's check_vm_modify_config_perm and drive checks). */
  checkConfigPerms(c: Ctx, vm: VmRecord | undefined, keys: [string, string | undefined][]): void {
    if (this.access.isRoot(c.principal)) return
    const path = `/vms/${c.params.vmid}`
    for (const [k, v] of keys) {
      if (isDriveKey(k) || k === 'cdrom') {
        if (v === undefined) continue
        const d = k === 'cdrom' ? {key: 'ide2', file: v, opts: {media: 'cdrom'}} : this.parseDrive(k, v)
        if (isCloudinitDrive(d) || /(^|:)cloudinit$/.test(d.file)) this.access.check(c.principal, path, ['VM.Config.Cloudinit', 'VM.Config.CDROM'])
        else if (isCdrom(d)) this.access.check(c.principal, path, ['VM.Config.CDROM'])
        else this.access.check(c.principal, path, ['VM.Config.Disk'])
        continue
      }
      if (/^unused\d+$/.test(k)) {
        this.access.check(c.principal, path, ['VM.Config.Disk'])
        continue
      }
      if (/^(serial\d+)$/.test(k)) {
        const cur = vm?.config[k]
        if ((v === undefined || v === 'socket') && (cur === undefined || cur === 'socket')) this.access.check(c.principal, path, ['VM.Config.HWType'])
        else throw new HttpError(500, `only root can set '${k}' config for real devices`)
        continue
      }
      if (/^(usb|hostpci|virtiofs)\d+$/.test(k)) {
        // device mappings: the lab has none, so these need root (as PVE's mapping checks would fail)
        throw new HttpError(500, `only root can set '${k}' config for real devices`)
      }
      const rule = KEY_PRIVS.find(([re]) => re.test(k))
      if (!rule) throw new HttpError(500, `only root can set '${k}' config`)
      this.access.check(c.principal, path, rule[1], rule[2] === true)
      if (k === 'startup') this.access.check(c.principal, '/', ['Sys.Modify'])
    }
  }

  // ---- applying configuration ---------------------------------------------------------------------

  /**
   * Regenerates the cloud-init media when the VM has a cloud-init drive (PVE does it at start,
   * on `PUT …/cloudinit`, and when applying pending cloud-init changes) and records what it holds.
   */
  async regenerateCloudInit(node: string, vm: VmRecord): Promise<void> {
    const spec = this.spec(node, vm)
    if (!spec.cloudInit) return
    await this.backend.regenerateCloudInit(spec)
    vm.cloudinitApplied = Object.fromEntries(Object.entries(vm.config).filter(([k]) => isCloudinitKey(k) || k === 'name'))
  }

  /** A drive leaves the config: the cloud-init volume is freed, a disk becomes `unusedN` (vmconfig_register_unused_drive). */
  async #registerUnused(c: Ctx, vm: VmRecord, d: Drive): Promise<void> {
    if (isCloudinitDrive(d)) {
      await this.backend.deleteVolume(c.node.name, d.file).catch(() => undefined)
      return
    }
    if (isCdrom(d) || !d.file.includes(':')) return
    if (!new RegExp(`^[^:]+:(?:base-\\d+-disk-\\d+\\.\\w+/)?${vm.vmid}/`).test(d.file)) return // not this VM's volume
    const used = Object.entries(vm.config).some(([k, v]) => /^unused\d+$/.test(k) && v === d.file)
    if (!used) vm.config[nextUnused(vm.config)] = d.file
  }

  /** Removes `unusedN` entries whose volume is attached again (write_vm_config does it). */
  #dropReattachedUnused(vm: VmRecord): void {
    const attached = new Set(Object.entries(vm.config).filter(([k]) => isDriveKey(k)).map(([k, v]) => this.parseDrive(k, v).file))
    for (const k of Object.keys(vm.config)) if (/^unused\d+$/.test(k) && attached.has(vm.config[k]!)) delete vm.config[k]
  }

  /** vmconfig_apply_pending: the VM is stopped, every pending change goes into the config. */
  async applyPending(c: Ctx, vm: VmRecord): Promise<void> {
    if (Object.keys(vm.pending).length === 0 && vm.pendingDelete.size === 0) return
    let cloudinit = false
    for (const [k, force] of [...vm.pendingDelete].sort(([a], [b]) => a.localeCompare(b))) {
      const cur = vm.config[k]
      if (cur !== undefined && isDriveKey(k)) {
        const d = this.parseDrive(k, cur)
        if (force && !isCdrom(d)) await this.#deallocate(c, vm, d)
        else await this.#registerUnused(c, vm, d)
      }
      if (cur !== undefined && isCloudinitKey(k)) cloudinit = true
      delete vm.config[k]
      vm.pendingDelete.delete(k)
    }
    for (const [k, v] of Object.entries(vm.pending)) {
      const cur = vm.config[k]
      if (cur !== undefined && isDriveKey(k) && this.parseDrive(k, cur).file !== this.parseDrive(k, v).file) await this.#registerUnused(c, vm, this.parseDrive(k, cur))
      if (isCloudinitKey(k) || (isDriveKey(k) && isCloudinitDrive(this.parseDrive(k, v)))) cloudinit = true
      vm.config[k] = v
      delete vm.pending[k]
    }
    this.#dropReattachedUnused(vm)
    if (cloudinit) await this.regenerateCloudInit(c.node.name, vm)
  }

  /** Frees a drive's volume (force delete, or an unusedN removed): PVE's try_deallocate_drive. */
  async #deallocate(c: Ctx, vm: VmRecord, d: Drive): Promise<void> {
    if (!new RegExp(`^[^:]+:(?:base-\\d+-disk-\\d+\\.\\w+/)?${vm.vmid}/`).test(d.file)) return
    const inSnapshot = Object.values(vm.snapshots).some((s) => Object.entries(s.config).some(([k, v]) => (isDriveKey(k) || /^unused\d+$/.test(k)) && v.split(',')[0] === d.file))
    if (inSnapshot) throw new HttpError(500, `unable to delete '${d.file}' - volume is still in use (snapshot?)`)
    this.access.check(c.principal, `/storage/${d.file.split(':')[0]}`, ['Datastore.AllocateSpace'])
    await this.backend.deleteVolume(c.node.name, d.file).catch(() => undefined)
  }

  /**
   * vmconfig_hotplug_pending: the VM runs; what can change live is applied (the fast-plug and
   * cloud-init options always; disks with the `disk` hotplug feature, NICs with `network`, …),
   * the rest stays pending until the next start. Errors are PVE's "hotplug problem - …".
   */
  async hotplugPending(c: Ctx, vm: VmRecord, ctx: TaskContext): Promise<Record<string, string>> {
    const errors: Record<string, string> = {}
    for (const [k, v] of Object.entries(vm.pending)) {
      if (isFastPlug(k)) {
        vm.config[k] = v
        delete vm.pending[k]
      }
    }
    const features = hotplugFeatures(vm.config)
    for (const [k, force] of [...vm.pendingDelete].sort(([a], [b]) => a.localeCompare(b))) {
      const cur = vm.config[k]
      let apply = false
      try {
        if (k === 'hotplug') apply = !/(cpu|memory)/.test(vm.config.hotplug ?? '')
        else if (k === 'tablet' || /^usb\d+$/.test(k)) apply = features.has('usb')
        else if (k === 'vcpus') apply = features.has('cpu')
        else if (k === 'balloon') apply = vm.config.balloon !== '0'
        else if (isFastPlug(k)) apply = true
        else if (/^net\d+$/.test(k)) apply = features.has('network')
        else if (isDriveKey(k)) {
          if (!features.has('disk') || /^(efidisk|ide|sata|tpmstate)\d+$/.test(k)) apply = false
          else {
            if (cur !== undefined) {
              const d = this.parseDrive(k, cur)
              await this.backend.unplugDisk(this.spec(c.node.name, vm), k, ctx)
              if (force && !isCdrom(d)) await this.#deallocate(c, vm, d)
              else await this.#registerUnused(c, vm, d)
            }
            apply = true
          }
        } else if (k === 'memory') apply = features.has('memory')
        else if (k === 'cpuunits' || k === 'cpulimit') apply = true
      } catch (e) {
        errors[k] = `hotplug problem - ${(e as Error).message}`
        continue
      }
      if (apply) {
        delete vm.config[k]
        vm.pendingDelete.delete(k)
      }
    }
    for (const [k, v] of Object.entries(vm.pending)) {
      const cur = vm.config[k]
      let apply = false
      try {
        if (k === 'hotplug') apply = !/(cpu|memory)/.test(v) && !/(cpu|memory)/.test(vm.config.hotplug ?? '')
        else if (k === 'tablet' || /^usb\d+$/.test(k)) apply = features.has('usb')
        else if (k === 'vcpus') apply = features.has('cpu')
        else if (k === 'balloon') apply = (vm.config.balloon ?? '1') !== '0' && v !== '0'
        else if (/^net\d+$/.test(k)) apply = features.has('network') || (cur !== undefined && this.#netLiveChange(k, cur, v))
        else if (isDriveKey(k)) apply = await this.#hotplugDrive(c, vm, k, cur, v, features.has('disk'), ctx)
        else if (k === 'memory') apply = features.has('memory')
        else if (k === 'cpuunits' || k === 'cpulimit') apply = true
        else if (k === 'agent') apply = cur !== undefined && this.#agentLiveChange(cur, v)
      } catch (e) {
        errors[k] = `hotplug problem - ${(e as Error).message}`
        continue
      }
      if (apply) {
        vm.config[k] = v
        delete vm.pending[k]
      }
    }
    this.#dropReattachedUnused(vm)
    return errors
  }

  /** vmconfig_update_net without the `network` feature: bridge, tag, firewall, link_down, rate change live; the model or MAC do not. */
  #netLiveChange(k: string, cur: string, next: string): boolean {
    const a = this.#parseNet(k, cur)
    const b = this.#parseNet(k, next)
    return a.model === b.model && a.macaddr === b.macaddr && a.queues === b.queues
  }

  /** vmconfig_update_agent: only the options that do not need a new device (fstrim, freeze) change live. */
  #agentLiveChange(cur: string, next: string): boolean {
    const f = this.schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')!.parameters!.properties!.agent!.format as never
    const a = parsePropertyString(cur, f)
    const b = parsePropertyString(next, f)
    return (a.enabled ?? '0') === (b.enabled ?? '0') && (a.type ?? 'virtio') === (b.type ?? 'virtio')
  }

  /** vmconfig_update_disk on a running VM; true when the change was applied. */
  async #hotplugDrive(c: Ctx, vm: VmRecord, k: string, cur: string | undefined, next: string, hotplug: boolean, ctx: TaskContext): Promise<boolean> {
    if (k === 'efidisk0' || k === 'tpmstate0') return false
    const d = this.parseDrive(k, next)
    if (cur !== undefined) {
      const old = this.parseDrive(k, cur)
      if ((d.opts.media ?? 'disk') !== (old.opts.media ?? 'disk') && !isCloudinitDrive(d) && !isCloudinitDrive(old)) throw new Error('unable to change media type')
      if (isCdrom(old)) {
        // change_medium: a CD-ROM's medium changes live
        if (d.file === 'none' && isCloudinitDrive(old)) await this.#registerUnused(c, vm, old)
        return true
      }
      if (d.file === old.file) {
        // the same volume with other options: these need a new device
        const cold = ['aio', 'discard', 'iothread', 'queues', 'product', 'cache', 'ssd', 'vendor', 'ro']
        return !cold.some((o) => (d.opts[o] ?? '') !== (old.opts[o] ?? ''))
      }
      if (!hotplug) return false
      await this.backend.unplugDisk(this.spec(c.node.name, vm), k, ctx)
      await this.#registerUnused(c, vm, old)
      delete vm.config[k]
    }
    if (!hotplug || /^(ide|sata)\d+$/.test(k)) return false
    const spec = this.spec(c.node.name, vm)
    await this.backend.hotplugDisk(spec, this.#vmDisk(d), ctx)
    return true
  }

  /**
   * The config change of POST/PUT …/config (qemu-server's update_vm_api): deletions and new values
   * go to [PENDING] (drives are allocated now), then they are applied at once when the VM is
   * stopped, or hot-plugged as far as the VM allows when it runs.
   */
  async updateConfig(c: Ctx, ctx: TaskContext): Promise<void> {
    const vm = this.vmOf(c)
    const params: RawParams = {}
    for (const [k, v] of Object.entries(c.params)) if (!CALL_PARAMS.has(k)) params[k] = v
    const force = parseBool(c.params.force) ?? false
    const revert = c.params.revert ? splitList(String(c.params.revert)) : []
    const del = (c.params.delete ? splitList(String(c.params.delete)) : []).map((k) => (k === 'cdrom' ? 'ide2' : k))
    if (params.cdrom !== undefined) {
      params.ide2 = `${params.cdrom},media=cdrom`
      delete params.cdrom
    }
    if (del.length === 0 && revert.length === 0 && Object.keys(params).length === 0) throw new HttpError(500, 'no options specified')
    const optionExists = (k: string) => this.#optionExists(k)
    for (const k of revert) {
      if (!optionExists(k)) throw new ParamError({revert: `unknown option '${k}'`})
      if (params[k] !== undefined) throw new ParamError({delete: `you can't use '-${k}' and -revert ${k}' at the same time`})
    }
    for (const k of del) {
      if (params[k] !== undefined) throw new ParamError({delete: `you can't use '-${k}' and -delete ${k}' at the same time`})
      if (revert.includes(k)) throw new ParamError({revert: `you can't use '-delete ${k}' and -revert ${k}' at the same time`})
      if (!optionExists(k)) throw new ParamError({delete: `unknown option '${k}'`})
    }
    for (const [k, v] of Object.entries(params)) {
      if (/^net\d+$/.test(k)) params[k] = this.#normaliseNet(k, String(v))
      else if (k === 'vmgenid' && v === '1') params[k] = randomUUID()
    }
    this.checkConfigPerms(c, vm, [...del.map((k) => [k, vm.config[k] ?? vm.pending[k]] as [string, string | undefined]), ...Object.entries(params).map(([k, v]) => [k, String(v)] as [string, string])])
    this.checkDriveAccess(c, params)
    await this.withConfigLock(c, vm.vmid, async () => {
      const digest = c.params.digest as string | undefined
      if (digest && digest !== vmDigest(vm)) throw new HttpError(500, CONFIG_DIGEST_MISMATCH)
      this.checkLock(vm, c)
      this.#checkBalloon(vm, params)
      for (const k of revert) {
        if (vm.config[k] !== undefined) params[k] = vm.config[k]!
        else if (vm.pending[k] !== undefined) del.push(k)
      }
      // deletions → [PENDING] (unused disks are freed at once; tags go at once)
      let bootOrder = /order=([^,]+)/.exec(withPending(vm).boot ?? '')?.[1]?.split(';') ?? []
      const bootDeleted = del.includes('boot')
      for (const k of del) {
        const val = vm.config[k] ?? vm.pending[k]
        if (val === undefined) {
          ctx.log(`cannot delete '${k}' - not set in current configuration!`)
          continue
        }
        const wasPending = vm.pending[k] !== undefined
        delete vm.pending[k]
        if (!bootDeleted && bootOrder.includes(k)) {
          bootOrder = bootOrder.filter((x) => x !== k)
          vm.pending.boot = bootOrder.length > 0 ? `order=${bootOrder.join(';')}` : ''
        }
        if (/^unused\d+$/.test(k)) {
          if (vm.config.protection === '1') throw new HttpError(500, `can't remove unused disk '${val}' - protection mode enabled`)
          const volid = val.split(',')[0]!.replace(/^file=/, '')
          await this.#deallocate(c, vm, {key: k, file: volid, opts: {}})
          delete vm.config[k]
        } else if (isDriveKey(k)) {
          if (vm.config.protection === '1') throw new HttpError(500, `can't remove drive '${k}' - protection mode enabled`)
          if (wasPending) await this.#registerUnused(c, vm, this.parseDrive(k, val))
          if (vm.config[k] !== undefined) vm.pendingDelete.set(k, force)
        } else if (k === 'tags') {
          delete vm.config.tags
        } else if (vm.config[k] !== undefined) vm.pendingDelete.set(k, force)
      }
      // new values → [PENDING]
      const created: string[] = []
      try {
        for (const [k, raw] of Object.entries(params)) {
          let v = Array.isArray(raw) ? raw.join(',') : raw
          if (vm.pending[k] !== undefined && vm.pending[k] === v) continue
          if (isDriveKey(k)) {
            if (vm.pending[k] !== undefined) await this.#registerUnused(c, vm, this.parseDrive(k, vm.pending[k]!))
            v = await this.createDrive(c, vm, k, v, ctx, undefined, created)
            const drive = this.parseDrive(k, v)
            if (bootOrder.length > 0 && isCdrom(drive) && !bootOrder.includes(k) && !bootDeleted) {
              bootOrder.push(k)
              vm.pending.boot = `order=${bootOrder.join(';')}`
            }
          } else if (k === 'tags') v = normalizeTags(v)
          else if (k === 'cipassword') {
            vm.config.cipassword = await hashPassword(v)
            vm.pendingDelete.delete(k)
            continue
          } else if (k === 'boot') {
            const order = /(?:^|,)order=([^,]+)/.exec(v)?.[1]
            if (order) {
              for (const dev of order.split(';')) {
                const exists = vm.config[dev] !== undefined || vm.pending[dev] !== undefined || params[dev] !== undefined
                if (!exists || del.includes(dev)) throw new HttpError(500, `invalid bootorder: device '${dev}' does not exist'`)
              }
              v = `order=${order}`
              if (vm.config.bootdisk) vm.pendingDelete.set('bootdisk', false)
            }
          } else v = normaliseOption(this.schema, k, v)
          vm.pending[k] = v
          vm.pendingDelete.delete(k)
        }
      } catch (e) {
        for (const volid of created) await this.backend.deleteVolume(c.node.name, volid).catch(() => undefined)
        throw e
      }
      // cleanup_pending: a pending value equal to the current one is no change
      for (const [k, v] of Object.entries(vm.pending)) if (vm.config[k] === v) delete vm.pending[k]
      for (const k of [...vm.pendingDelete.keys()]) if (vm.config[k] === undefined) vm.pendingDelete.delete(k)
      this.changed()
      if (Object.keys(vm.pending).length === 0 && vm.pendingDelete.size === 0) return
      if (this.running(c, vm)) {
        const errors = await this.hotplugPending(c, vm, ctx)
        if (Object.keys(errors).length > 0) throw new ParamError(errors)
        if (Object.keys(params).some((k) => isCloudinitKey(k)) && hotplugFeatures(vm.config).has('cloudinit')) await this.regenerateCloudInit(c.node.name, vm)
      } else {
        await this.applyPending(c, vm)
        if (Object.keys(params).some((k) => isCloudinitKey(k) || k === 'name')) await this.regenerateCloudInit(c.node.name, vm)
      }
    })
    this.changed()
  }

  #optionExists(k: string): boolean {
    const props = this.schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')!.parameters!.properties!
    if (CALL_PARAMS.has(k) || k === 'cdrom') return k === 'cdrom'
    return props[k] !== undefined || /^([a-z]+)\d+$/.test(k) && props[`${k.replace(/\d+$/, '')}[n]`] !== undefined
  }

  /** "balloon value too large (must be smaller than assigned memory)". */
  #checkBalloon(vm: VmRecord, params: RawParams): void {
    if (params.memory === undefined && params.balloon === undefined) return
    const memory = String(params.memory ?? vm.pending.memory ?? vm.config.memory ?? '512')
    const max = Number(/^(?:current=)?(\d+)/.exec(memory)?.[1] ?? 512)
    const balloon = Number(params.balloon ?? vm.pending.balloon ?? vm.config.balloon ?? 0)
    if (balloon && balloon > max) throw new HttpError(500, 'balloon value too large (must be smaller than assigned memory)')
  }

  /** Fills a new VM's config from the create parameters (create_vm's createfn). */
  async createConfig(c: Ctx, vm: VmRecord, ctx: TaskContext, created: string[]): Promise<void> {
    const storage = c.params.storage as string | undefined
    const cfg: Record<string, string> = {}
    for (const [k, raw] of Object.entries(c.params)) {
      if (CALL_PARAMS.has(k)) continue
      let v = Array.isArray(raw) ? raw.join(',') : raw
      if (isDriveKey(k)) v = await this.createDrive(c, vm, k, v, ctx, storage, created)
      else if (/^net\d+$/.test(k)) v = this.#normaliseNet(k, v)
      else if (k === 'tags') v = normalizeTags(v)
      else if (k === 'cipassword') v = await hashPassword(v)
      else v = normaliseOption(this.schema, k, v)
      cfg[k] = v
    }
    if (!cfg.boot) {
      const boot = defaultBootOrder(cfg, this.schema)
      if (boot) cfg.boot = boot
    }
    cfg.smbios1 ??= `uuid=${randomUUID()}`
    if (cfg.vmgenid === undefined || cfg.vmgenid === '1') cfg.vmgenid = randomUUID()
    cfg.meta = `creation-qemu=${this.pveVersion.startsWith('8') ? '9.0.2' : '10.1.2'},ctime=${Math.floor(Date.now() / 1000)}`
    vm.config = cfg
  }

  /** GET …/config: the config (pending applied unless `current`), typed per schema, cipassword masked, with its digest. */
  configOut(vm: VmRecord, current = false, snapshot?: Record<string, string>): Record<string, unknown> {
    const cfg = snapshot ?? (current ? vm.config : withPending(vm))
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(cfg)) out[k] = k === 'cipassword' ? MASK : outputValue(this.schema, k, v)
    out.digest = snapshot ? configDigest(snapshot) : vmDigest(vm)
    return out
  }

  volids(vm: VmRecord): string[] {
    return referencedVolids(this.schema, vm)
  }

  // ---- lifecycle ------------------------------------------------------------------------------------

  async startVm(c: Ctx, vm: VmRecord, ctx: TaskContext): Promise<void> {
    await this.applyPending(c, vm)
    const spec = this.spec(c.node.name, vm)
    if (spec.cloudInit) await this.regenerateCloudInit(c.node.name, vm)
    await this.backend.start(this.spec(c.node.name, vm), ctx)
  }

  /** Storage upload/download: the server has the file in `tmpPath` (checksum verified). */
  importUploaded(c: Ctx, source: string | ((ctx: TaskContext) => Promise<string>), type: 'imgcopy' | 'download'): string {
    const storage = String(c.params.storage)
    const content = String(c.params.content)
    this.storageDef(storage, content)
    const filename = String(c.params.filename).replace(/[^a-zA-Z0-9_.\-]/g, '_')
    if (content === 'import' && !/\.(qcow2|raw|vmdk|img|ova)$/.test(filename)) throw new ParamError({filename: `invalid filename or wrong extension`})
    if (content === 'iso' && !/\.(iso|img)$/.test(filename)) throw new ParamError({filename: `wrong file extension`})
    return this.task(c, type, '', async (ctx) => {
      ctx.log(`target node: ${c.node.name}`)
      ctx.log(`target file: ${this.storages.get(storage)!.path(c.node.name)}/${content}/${filename}`)
      // An upload arrives as a verified temp file; a download is fetched (and verified) inside the task.
      const tmpPath = typeof source === 'string' ? source : await source(ctx)
      await this.backend.importFile(c.node.name, storage, content as never, filename, tmpPath, ctx)
      ctx.log(`file size is: ${c.upload?.size ?? 0}`)
    })
  }

  newVm(vmid: number): VmRecord {
    return newVm(vmid, {lock: 'create'})
  }

  /** The typed value of a config key (tests). */
  outputValue(key: string, value: string): string | number {
    return outputValue(this.schema, key, value)
  }

  permissionError(path?: string, privs?: string): PermissionError {
    return new PermissionError(path, privs)
  }
}

/**
 * cipassword as PVE stores it after an update: a SHA-512 crypt hash. Node has no crypt(3), so
 * `openssl passwd -6` computes it; the password goes on stdin, never on the command line.
 */
export async function hashPassword(pw: string): Promise<string> {
  if (/^\$(?:[156]|2[ay])(\$.+){2}/.test(pw)) return pw // already hashed (PVE keeps hashes as given)
  const r = await run('openssl', ['passwd', '-6', '-stdin'], {input: pw + '\n'})
  return r.stdout.trim()
}
