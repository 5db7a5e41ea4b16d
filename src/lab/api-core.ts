import {AccessControl, PermissionError, type Principal} from './access.js'
import {BackendError, type CloudInitSpec, type StorageDef, type TaskContext, type VmBackend, type VmDisk, type VmNic, type VmSpec} from './backend.js'
import {agentEnabled, HttpError, MASK, randomMac, type Ctx, type LabApiOptions, type NodeState} from './context.js'
import {Faults} from './faults.js'
import {loadPveSchema, releaseOf, type PveSchema} from './pve-schema.js'
import {ConfigLocks, TaskManager} from './tasks.js'
import type {DiskAio, DiskCache} from '../qemu/vm.js'
import {parseSize} from '../size.js'
import {sleep} from '../sleep.js'
import {formatSize, ParamError, parseBool, parsePropertyString, splitList, type RawParams} from './validate.js'
import {
  configDigest,
  isCdrom,
  isCloudinitDrive,
  isDriveKey,
  newVm,
  outputValue,
  parseDrive,
  printDrive,
  referencedVolids,
  vmDigest,
  withPending,
  type Drive,
  type VmRecord,
} from './vmconfig.js'

/**
 * The lab's model of PVE, first half: the nodes and their VMs, locks, tasks, the VM spec a backend
 * gets, drives (parsing, allocation) and PVE's permission checks on config keys and volumes.
 * The config changes ([PENDING], hot-plug) and the lifecycle are in api.ts (LabApi extends this).
 */

/** Privilege(s) a config key needs (qemu-server's check_vm_modify_config_perm); drives are checked per value. */

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

export class LabApiCore {
  readonly nodes = new Map<string, NodeState>()
  readonly tasks = new TaskManager()
  readonly locks: ConfigLocks
  readonly faults: Faults
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
      await sleep(Math.min(this.locks.timeoutMs, 10_000))
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
  protected vmDisk(d: Drive): VmDisk {
    const cloudinit = isCloudinitDrive(d)
    return {
      key: d.key,
      volid: d.file,
      media: isCdrom(d) ? 'cdrom' : 'disk',
      serial: d.opts.serial,
      // the schema's enums are QEMU's own values (parseDrive has checked them)
      ...(d.opts.cache ? {cache: d.opts.cache as DiskCache} : {}),
      ...(d.opts.aio ? {aio: d.opts.aio as DiskAio} : {}),
      ...(cloudinit ? {cloudinit: true} : {}),
      ...(/^(efidisk|tpmstate)0$/.test(d.key) ? {firmware: true} : {}),
    }
  }

  /** Builds the backend's VmSpec from the current config. */
  spec(node: string, vm: VmRecord): VmSpec {
    const cfg = vm.config
    const disks: VmDisk[] = []
    const nics: VmNic[] = []
    for (const [k, v] of Object.entries(cfg)) {
      if (isDriveKey(k)) disks.push(this.vmDisk(this.parseDrive(k, v)))
      const nm = /^net(\d+)$/.exec(k)
      if (nm) {
        const p = this.parseNet(k, v)
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
        sshKeys: cfg.sshkeys ? lenientDecode(cfg.sshkeys).split('\n').filter((l) => l.trim() !== '') : [],
        nameservers: cfg.nameserver ? splitList(cfg.nameserver) : [],
        searchdomain: cfg.searchdomain,
        ipconfig,
        type: cfg.citype === 'configdrive2' ? 'configdrive2' : 'nocloud',
        upgrade: cfg.ciupgrade === undefined ? true : cfg.ciupgrade === '1',
      }
    }
    const boot = /order=([^,]+)/.exec(cfg.boot ?? '')?.[1]?.split(';') ?? disks.filter((d) => d.media === 'disk' && !d.firmware).map((d) => d.key)
    const version = /(?:^|;)pgi-(\d{4}\.\d+\.\d+)/.exec(cfg.tags ?? '')?.[1] ?? /image[ :=]+v?(\d{4}\.\d+\.\d+)/i.exec(lenientDecode(cfg.description ?? ''))?.[1]
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

  protected parseNet(_key: string, value: string): Record<string, string> {
    const props = this.schema.method('POST', '/nodes/{node}/qemu')!.parameters!.properties!
    return parsePropertyString(value, props['net[n]']!.format as never)
  }

  /** A net property string with its MAC (qemu-server's print_net after parse_net, which adds a random MAC). */
  protected normaliseNet(key: string, value: string): string {
    const p = this.parseNet(key, value)
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
 * A config value URL-decoded when it is encoded, as given otherwise: a description may hold a
 * plain '%' (a rollout mark's reason quoting a Python traceback), which decodeURIComponent
 * rejects, and a task reading the VM's config must not fail on it.
 */
function lenientDecode(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}
