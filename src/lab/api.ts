import {createHash, randomBytes} from 'node:crypto'

import {run} from '../exec.js'
import {AccessControl, PermissionError, type Principal} from './access.js'
import {BackendError, type CloudInitSpec, type StorageDef, type VmBackend, type VmDisk, type VmNic, type VmSpec} from './backend.js'
import {Faults} from './faults.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from './params.js'
import {ConfigLocks, TaskManager} from './tasks.js'
import {checkParam, formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from './validate.js'

/**
 * The PVE semantics of the lab: VM configs (source of truth), locks, digests, tasks, permissions and
 * every endpoint's behaviour. The HTTP layer (server.ts) parses requests, authenticates, validates
 * parameters against params.ts and calls `handlers[route.handler]`; backends do the machine work.
 */

/** An error answered with an HTTP status and PVE's message (as reason phrase and `message`). */
export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

export interface VmRecord {
  vmid: number
  /** Config as PVE's .conf: key → value text. */
  config: Record<string, string>
  snapshots: Record<string, {config: Record<string, string>; snaptime: number; description: string; parent?: string}>
}

export interface NodeState {
  name: string
  vms: Map<number, VmRecord>
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

type Handler = (c: Ctx) => Promise<unknown>

const DIGEST_MISMATCH = 'detected modified configuration - file changed by other user? Try again.'
const MASK = '**********'

/** SHA-1 of the config as PVE serialises it (sorted `key: value` lines), like PVE's config digest. */
export function configDigest(config: Record<string, string>): string {
  const text = Object.keys(config)
    .filter((k) => k !== 'digest')
    .sort()
    .map((k) => `${k}: ${config[k]}\n`)
    .join('')
  return createHash('sha1').update(text).digest('hex')
}

function randomMac(): string {
  const b = randomBytes(6)
  b[0] = 0xbc
  b[1] = 0x24
  b[2] = 0x11
  return [...b].map((x) => x.toString(16).toUpperCase().padStart(2, '0')).join(':')
}

const DISK_PARAM_KEYS = VM_CONFIG_PARAMS.virtio!.keys!

/** Privilege each config key needs (PVE's check_vm_modify_config_perm, simplified). */
function privForKey(key: string, value?: string): string {
  if (DISK_KEY_RE.test(key)) return value && /media=cdrom|:cloudinit/.test(value) ? 'VM.Config.CDROM' : 'VM.Config.Disk'
  if (/^net\d+$/.test(key)) return 'VM.Config.Network'
  if (/^(ci\w+|sshkeys|ipconfig\d+|nameserver|searchdomain)$/.test(key)) return 'VM.Config.Cloudinit'
  if (/^(cores|sockets|cpu|vcpus|cpulimit|cpuunits)$/.test(key)) return 'VM.Config.CPU'
  if (/^(memory|balloon|shares)$/.test(key)) return 'VM.Config.Memory'
  if (/^(scsihw|bios|serial\d+|vga|machine)$/.test(key)) return 'VM.Config.HWType'
  return 'VM.Config.Options'
}

export class LabApi {
  readonly nodes = new Map<string, NodeState>()
  readonly tasks = new TaskManager()
  readonly locks: ConfigLocks
  readonly faults: Faults
  readonly handlers: Record<string, Handler>
  readonly #o: LabApiOptions
  readonly #storages: Map<string, StorageDef>

  constructor(o: LabApiOptions) {
    this.#o = o
    this.faults = o.faults ?? new Faults()
    this.locks = new ConfigLocks(o.lockTimeoutMs ?? 10_000)
    this.#storages = new Map(o.storages.map((s) => [s.id, s]))
    const started = Math.floor(Date.now() / 1000)
    for (const n of o.nodes) this.nodes.set(n, {name: n, vms: new Map(), started})
    this.handlers = this.#handlers()
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

  #changed(): void {
    this.#o.onChange?.()
  }

  // ---- helpers -----------------------------------------------------------------------------------

  #vm(c: Ctx): VmRecord {
    const vmid = Number(c.params.vmid)
    const vm = c.node.vms.get(vmid)
    if (!vm) throw new HttpError(500, `Configuration file 'nodes/${c.node.name}/qemu-server/${vmid}.conf' does not exist`)
    return vm
  }

  #authid(p: Principal): string {
    return p.tokenid ?? p.user
  }

  #checkLock(vm: VmRecord, c: Ctx): void {
    const skip = parseBool(c.params.skiplock)
    if (skip && !this.access.isRoot(c.principal)) throw new ParamError({skiplock: 'Only root may use this option.'})
    if (vm.config.lock && !skip) throw new HttpError(500, `VM is locked (${vm.config.lock})`)
  }

  #storage(id: string, content?: string): StorageDef {
    const s = this.#storages.get(id)
    if (!s) throw new HttpError(500, `storage '${id}' does not exist`)
    if (content && !s.content.includes(content as never)) throw new HttpError(500, `storage '${id}' does not support content-type '${content}'`)
    return s
  }

  async #withConfigLock<T>(c: Ctx, vmid: number, fn: () => Promise<T> | T): Promise<T> {
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
  #task(c: Ctx, type: string, id: string, fn: (ctx: Parameters<Parameters<TaskManager['start']>[4]>[0]) => Promise<void>, onFault?: () => void): string {
    const fails = this.faults.taskFails(type, `${c.node.name}:${id}`)
    return this.tasks.start(c.node.name, type, id, this.#authid(c.principal), async (ctx) => {
      if (fails) {
        onFault?.()
        this.#changed()
        throw new Error(`${type} ${id}: lab fault injection (seed ${this.faults.config.seed})`)
      }
      try {
        await fn(ctx)
      } catch (e) {
        if (e instanceof BackendError || e instanceof HttpError) throw new Error(e.message)
        throw e
      } finally {
        this.#changed()
      }
    })
  }

  /** Builds the backend's VmSpec from a config. */
  spec(node: string, vm: VmRecord): VmSpec {
    const cfg = vm.config
    const disks: VmDisk[] = []
    const nics: VmNic[] = []
    for (const [k, v] of Object.entries(cfg)) {
      if (DISK_KEY_RE.test(k)) {
        const p = parsePropertyString(v, DISK_PARAM_KEYS_ALL)
        const cloudinit = /-cloudinit\.qcow2$/.test(p.file ?? '')
        disks.push({key: k, volid: p.file!, media: p.media === 'cdrom' || cloudinit ? 'cdrom' : 'disk', serial: p.serial, ...(cloudinit ? {cloudinit: true} : {})})
      }
      const nm = /^net(\d+)$/.exec(k)
      if (nm) {
        const p = parsePropertyString(v, VM_CONFIG_PARAMS.net!.keys!)
        const model = p.model ?? Object.keys(p).find((x) => ['virtio', 'e1000', 'e1000e', 'rtl8139', 'vmxnet3'].includes(x)) ?? 'virtio'
        const ipc = cfg[`ipconfig${nm[1]}`]
        let ipv4: VmNic['ipv4']
        if (ipc) {
          const kv = Object.fromEntries(ipc.split(',').map((x) => x.split('=') as [string, string]))
          if (kv.ip === 'dhcp') ipv4 = 'dhcp'
          else if (kv.ip) ipv4 = {address: kv.ip.split('/')[0]!, prefix: Number(kv.ip.split('/')[1]), gateway: kv.gw}
        }
        nics.push({key: k, model, macaddr: p.macaddr ?? p[model] ?? '', bridge: p.bridge, ipv4})
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
      }
    }
    const boot = /order=([^,]+)/.exec(cfg.boot ?? '')?.[1]?.split(';') ?? disks.filter((d) => d.media === 'disk').map((d) => d.key)
    const version = /(?:^|;)pgi-(\d{4}\.\d+\.\d+)/.exec(cfg.tags ?? '')?.[1] ?? /image[ :=]+v?(\d{4}\.\d+\.\d+)/i.exec(decodeURIComponent(cfg.description ?? ''))?.[1]
    return {
      node,
      vmid: vm.vmid,
      name: cfg.name ?? `VM${vm.vmid}`,
      cores: Number(cfg.cores ?? 1),
      sockets: Number(cfg.sockets ?? 1),
      memoryMb: Number(parsePropertyString(cfg.memory ?? '512', VM_CONFIG_PARAMS.memory!.keys!).current ?? 512),
      agent: /^(1|enabled=1)/.test(cfg.agent ?? ''),
      disks,
      nics,
      bootOrder: boot,
      cloudInit,
      imageVersion: version,
      rawConfig: {...cfg},
    }
  }

  /**
   * Applies config params (create / POST / PUT): allocates new disks (backend), normalises tags,
   * hashes cipassword, keeps sshkeys urlencoded. Runs under the config lock.
   */
  async #applyConfig(c: Ctx, vm: VmRecord, params: RawParams, ctx: Parameters<VmBackend['allocateDisk']>[3], defaultStorage?: string): Promise<void> {
    const cfg = vm.config
    for (const [k, raw] of Object.entries(params)) {
      if (['node', 'vmid', 'digest', 'delete', 'skiplock', 'start', 'storage', 'pool', 'revert'].includes(k)) continue
      const v = String(raw)
      if (DISK_KEY_RE.test(k)) {
        cfg[k] = await this.#diskValue(c, vm.vmid, k, v, ctx, defaultStorage)
      } else if (/^net\d+$/.test(k)) {
        const p = parsePropertyString(v, VM_CONFIG_PARAMS.net!.keys!)
        const model = p.model ?? Object.keys(p).find((x) => ['virtio', 'e1000', 'e1000e', 'rtl8139', 'vmxnet3'].includes(x)) ?? 'virtio'
        const mac = p[model] ?? p.macaddr ?? randomMac()
        const rest = Object.entries(p).filter(([x]) => x !== 'model' && x !== 'macaddr' && x !== model)
        cfg[k] = [`${model}=${mac.toUpperCase()}`, ...rest.map(([a, b]) => `${a}=${b}`)].join(',')
      } else if (k === 'tags') {
        cfg.tags = normalizeTags(v)
      } else if (k === 'cipassword') {
        cfg.cipassword = await hashPassword(v)
      } else if (k === 'description') {
        cfg.description = v
      } else if (k === 'agent' && /^\d$/.test(v)) {
        cfg.agent = v
      } else {
        cfg[k] = v
      }
    }
  }

  /** A disk parameter value → the stored value (allocating volumes as PVE does). */
  async #diskValue(c: Ctx, vmid: number, key: string, value: string, ctx: Parameters<VmBackend['allocateDisk']>[3], defaultStorage?: string): Promise<string> {
    const p = parsePropertyString(value, DISK_PARAM_KEYS_ALL)
    const file = p.file ?? ''
    const extra = Object.entries(p).filter(([x]) => !['file', 'import-from', 'size', 'format'].includes(x)).map(([a, b]) => `${a}=${b}`)
    const ci = /^([a-z][a-z0-9\-_.]*):cloudinit$/i.exec(file)
    if (ci) {
      this.#storage(ci[1]!, 'images')
      const vol = await this.backend.allocateCloudInit(c.node.name, vmid, ci[1]!, ctx)
      return [vol.volid, 'media=cdrom'].join(',')
    }
    const alloc = /^([a-z][a-z0-9\-_.]*):(\d+(?:\.\d+)?)$/i.exec(file)
    if (alloc) {
      const storage = alloc[1]!
      this.#storage(storage, 'images')
      this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
      const fmt = (p.format === 'raw' ? 'raw' : 'qcow2') as 'qcow2' | 'raw'
      const src = p['import-from']
      if (src) {
        if (src.startsWith('/')) {
          if (!this.access.isRoot(c.principal)) throw new PermissionError(`/`, 'Sys.Modify') // PVE: only root may import from an absolute path
          throw new HttpError(500, `${key}: importing from an absolute path is not supported by the lab; upload it to an 'import' storage`)
        }
        const info = await this.backend.volumeInfo(c.node.name, src)
        if (!info) throw new HttpError(500, `${key}: unable to parse volume ID '${src}' - volume does not exist`)
        const srcStorage = src.split(':')[0]!
        // PVE's check_volume_access for import/iso content: read access to the storage.
        this.access.check(c.principal, `/storage/${srcStorage}`, ['Datastore.AllocateSpace', 'Datastore.Audit'], true)
        const vol = await this.backend.allocateDisk(c.node.name, vmid, {storage, format: fmt, importFrom: src}, ctx)
        return [vol.volid, ...extra, `size=${formatSize(vol.size)}`].join(',')
      }
      const size = parseSize(alloc[2]!, 'G')
      const vol = await this.backend.allocateDisk(c.node.name, vmid, {storage, format: fmt, sizeBytes: size}, ctx)
      return [vol.volid, ...extra, `size=${formatSize(vol.size)}`].join(',')
    }
    // An existing volume (or "none" for an empty cdrom).
    if (file === 'none' || file === 'cdrom') return value
    const info = await this.backend.volumeInfo(c.node.name, file)
    if (!info) throw new HttpError(500, `${key}: volume '${file}' does not exist`)
    void defaultStorage
    return [file, ...extra, ...(p.size ? [] : info.content === 'images' ? [`size=${formatSize(info.size)}`] : [])].join(',') + (p.size ? `,size=${p.size}` : '')
  }

  #volids(vm: VmRecord): string[] {
    const out: string[] = []
    for (const [k, v] of Object.entries(vm.config)) {
      if (DISK_KEY_RE.test(k) || /^unused\d+$/.test(k)) {
        const f = v.split(',')[0]!
        if (f.includes(':') && !/media=cdrom/.test(v)) out.push(f)
        else if (/-cloudinit\.qcow2$/.test(f)) out.push(f)
      }
    }
    return out
  }

  /** Permission check for each config key being set or deleted. */
  #checkConfigPerms(c: Ctx, keys: [string, string | undefined][]): void {
    const path = `/vms/${c.params.vmid}`
    for (const [k, v] of keys) this.access.check(c.principal, path, [privForKey(k, v)])
  }

  /** Output form of a config for GET …/config (types per schema, cipassword masked). */
  #configOut(vm: VmRecord): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(vm.config)) {
      if (k === 'cipassword') out[k] = MASK
      else if (['cores', 'sockets', 'onboot', 'protection', 'template'].includes(k)) out[k] = Number(v)
      else out[k] = v
    }
    out.digest = configDigest(vm.config)
    return out
  }

  // ---- handlers ------------------------------------------------------------------------------------

  #handlers(): Record<string, Handler> {
    const h: Record<string, Handler> = {}

    h.version = async () => ({version: this.#o.pveVersion === '8.4' ? '8.4.1' : '9.1.1', release: this.#o.pveVersion, repoid: this.#o.pveVersion === '8.4' ? 'lab84' : 'lab91', lab: 1})

    h.nodes = async (c) => [{node: c.node.name, status: 'online', uptime: Math.floor(Date.now() / 1000) - c.node.started, type: 'node', id: `node/${c.node.name}`, level: '', maxcpu: 8, maxmem: 32 * 2 ** 30, ssl_fingerprint: undefined}]

    h.nodeStatus = async (c) => ({uptime: Math.floor(Date.now() / 1000) - c.node.started, pveversion: `pve-manager/${this.#o.pveVersion}/lab`, kversion: 'Linux lab', cpu: 0.01, memory: {total: 32 * 2 ** 30, used: 2 ** 30, free: 31 * 2 ** 30}, node: c.node.name})

    h.clusterResources = async (c) => {
      const type = c.params.type as string | undefined
      const out: Record<string, unknown>[] = []
      if (!type || type === 'node') out.push({id: `node/${c.node.name}`, type: 'node', node: c.node.name, status: 'online', uptime: Math.floor(Date.now() / 1000) - c.node.started})
      if (!type || type === 'vm') {
        for (const vm of c.node.vms.values()) {
          if (!this.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
          const st = this.backend.status(c.node.name, vm.vmid)
          out.push({id: `qemu/${vm.vmid}`, type: 'qemu', node: c.node.name, vmid: vm.vmid, name: vm.config.name, status: st.running ? 'running' : 'stopped', template: Number(vm.config.template ?? 0), ...(vm.config.tags ? {tags: vm.config.tags} : {}), ...(vm.config.lock ? {lock: vm.config.lock} : {}), uptime: st.uptime, maxmem: this.spec(c.node.name, vm).memoryMb * 2 ** 20, mem: st.mem, cpu: st.cpu})
        }
      }
      if (!type || type === 'storage') {
        for (const s of this.#storages.values()) {
          if (!this.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit')) continue
          const {used} = await this.backend.storageUsage(c.node.name, s.id)
          out.push({id: `storage/${c.node.name}/${s.id}`, type: 'storage', node: c.node.name, storage: s.id, status: 'available', plugintype: 'dir', content: s.content.join(','), maxdisk: s.totalBytes, disk: used, shared: 0})
        }
      }
      return out
    }

    h.nextid = async (c) => {
      if (c.params.vmid !== undefined) {
        const id = Number(c.params.vmid)
        if (c.node.vms.has(id)) throw new ParamError({vmid: `VM ${id} already exists`})
        return String(id)
      }
      let id = 100
      while (c.node.vms.has(id)) id++
      return String(id)
    }

    h.ticket = async (c) => {
      const r = this.access.login(String(c.params.username), String(c.params.password), c.params.realm as string | undefined)
      return {...r, cap: {}}
    }

    h.vmList = async (c) => {
      const out: Record<string, unknown>[] = []
      for (const vm of c.node.vms.values()) {
        if (!this.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
        const st = this.backend.status(c.node.name, vm.vmid)
        out.push({vmid: vm.vmid, name: vm.config.name, status: st.running ? 'running' : 'stopped', uptime: st.uptime, ...(st.pid ? {pid: st.pid} : {}), ...(vm.config.tags ? {tags: vm.config.tags} : {}), ...(vm.config.lock ? {lock: vm.config.lock} : {}), template: Number(vm.config.template ?? 0) || undefined, maxmem: this.spec(c.node.name, vm).memoryMb * 2 ** 20, cpus: Number(vm.config.cores ?? 1)})
      }
      return out
    }

    h.vmIndex = async (c) => {
      this.#vm(c)
      return ['config', 'status', 'snapshot', 'agent', 'cloudinit', 'resize', 'move_disk', 'clone', 'template'].map((subdir) => ({subdir}))
    }

    h.vmCreate = async (c) => {
      const vmid = Number(c.params.vmid)
      this.access.check(c.principal, `/vms/${vmid}`, ['VM.Allocate'])
      // PVE checks the VM.Config.* privilege of every key given at creation too.
      const keys = Object.keys(c.params).filter((k) => !['node', 'vmid', 'start', 'storage', 'pool'].includes(k))
      this.#checkConfigPerms(c, keys.map((k) => [k, String(c.params[k])] as [string, string]))
      if (c.node.vms.has(vmid)) throw new HttpError(500, `unable to create VM ${vmid} - VM ${vmid} already exists on node '${c.node.name}'`)
      const vm: VmRecord = {vmid, config: {lock: 'create'}, snapshots: {}}
      c.node.vms.set(vmid, vm)
      this.#changed()
      return this.#task(c, 'qmcreate', String(vmid), async (ctx) => {
        try {
          await this.#withConfigLock(c, vmid, async () => {
            const params = {...c.params}
            await this.#applyConfig(c, vm, params, ctx, c.params.storage as string | undefined)
            vm.config.smbios1 ??= `uuid=${crypto.randomUUID()}`
            vm.config.vmgenid ??= crypto.randomUUID()
            vm.config.meta ??= `creation-qemu=9.2.0,ctime=${Math.floor(Date.now() / 1000)}`
            delete vm.config.lock
          })
        } catch (e) {
          // PVE removes a half-created VM (and the disks it allocated).
          await this.backend.destroyVm(c.node.name, vmid, this.#volids(vm), ctx).catch(() => undefined)
          c.node.vms.delete(vmid)
          throw e
        }
        if (parseBool(c.params.start)) await this.#startVm(c, vm, ctx)
      }, () => c.node.vms.delete(vmid))
    }

    h.vmDestroy = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      if (vm.config.protection === '1') throw new HttpError(500, `can't remove VM ${vm.vmid} - protection mode enabled`)
      if (this.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} is running - destroy failed`)
      vm.config.lock = 'destroyed'
      return this.#task(c, 'qmdestroy', String(vm.vmid), async (ctx) => {
        await this.#withConfigLock(c, vm.vmid, async () => {
          const volids = this.#volids(vm)
          if (parseBool(c.params['destroy-unreferenced-disks']) !== false) {
            for (const s of this.#storages.values()) {
              if (!s.content.includes('images')) continue
              for (const v of await this.backend.listVolumes(c.node.name, s.id, 'images')) if (v.vmid === vm.vmid && !volids.includes(v.volid)) volids.push(v.volid)
            }
          }
          await this.backend.destroyVm(c.node.name, vm.vmid, volids, ctx)
          c.node.vms.delete(vm.vmid)
        })
      }, () => delete vm.config.lock)
    }

    h.vmClone = async (c) => {
      const src = this.#vm(c)
      const newid = Number(c.params.newid)
      this.access.check(c.principal, `/vms/${src.vmid}`, ['VM.Clone'])
      this.access.check(c.principal, `/vms/${newid}`, ['VM.Allocate'])
      if (c.params.target && c.params.target !== c.node.name) throw new HttpError(500, `Node '${c.params.target}' is not part of this lab node's cluster (each lab node is a single-node cluster)`)
      if (c.node.vms.has(newid)) throw new HttpError(500, `unable to create VM ${newid}: config file already exists`)
      this.#checkLock(src, c)
      const isTemplate = src.config.template === '1'
      const full = c.params.full === undefined ? !isTemplate : parseBool(c.params.full)
      if (!full && !isTemplate) throw new HttpError(500, 'Linked clone feature is not supported for a non-template VM (use full=1)')
      if (c.params.storage && !full) throw new ParamError({storage: 'Storage migration requires full clone'})
      const target: VmRecord = {vmid: newid, config: {lock: 'create'}, snapshots: {}}
      c.node.vms.set(newid, target)
      if (!isTemplate) src.config.lock = 'clone'
      this.#changed()
      return this.#task(c, 'qmclone', String(src.vmid), async (ctx) => {
        try {
          const snap = c.params.snapname as string | undefined
          const base = snap ? src.snapshots[snap]?.config : src.config
          if (!base) throw new Error(`snapshot '${snap}' does not exist`)
          const cfg: Record<string, string> = {}
          for (const [k, v] of Object.entries(base)) {
            if (['lock', 'template', 'parent', 'snapstate', 'vmgenid', 'smbios1'].includes(k) || /^unused\d+$/.test(k)) continue
            if (DISK_KEY_RE.test(k)) {
              const p = parsePropertyString(v, DISK_PARAM_KEYS_ALL)
              const file = p.file!
              if (p.media === 'cdrom' && !/-cloudinit\.qcow2$/.test(file)) {
                cfg[k] = v
                continue
              }
              if (/-cloudinit\.qcow2$/.test(file)) {
                const vol = await this.backend.allocateCloudInit(c.node.name, newid, (c.params.storage as string) ?? file.split(':')[0]!, ctx)
                cfg[k] = `${vol.volid},media=cdrom`
                continue
              }
              const storage = (c.params.storage as string | undefined) ?? file.split(':')[0]!
              if (full) this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
              const fmt = ((c.params.format as string) ?? (file.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
              const vol = full ? await this.backend.copyDisk(c.node.name, file, newid, storage, fmt, ctx, snap) : await this.backend.linkDisk(c.node.name, file, newid, ctx)
              const rest = v.split(',').slice(1).filter((x) => !x.startsWith('size='))
              cfg[k] = [vol.volid, ...rest, `size=${formatSize(vol.size)}`].join(',')
              continue
            }
            if (/^net\d+$/.test(k)) {
              cfg[k] = v.replace(/([0-9A-F]{2}:){5}[0-9A-F]{2}/i, randomMac())
              continue
            }
            cfg[k] = v
          }
          if (c.params.name) cfg.name = String(c.params.name)
          else cfg.name = `Copy-of-VM-${src.config.name ?? src.vmid}`
          if (c.params.description !== undefined) cfg.description = String(c.params.description)
          cfg.smbios1 = `uuid=${crypto.randomUUID()}`
          cfg.vmgenid = crypto.randomUUID()
          target.config = cfg
        } catch (e) {
          await this.backend.destroyVm(c.node.name, newid, this.#volids(target), ctx).catch(() => undefined)
          c.node.vms.delete(newid)
          throw e
        } finally {
          if (src.config.lock === 'clone') delete src.config.lock
        }
      }, () => {
        c.node.vms.delete(newid)
        if (src.config.lock === 'clone') delete src.config.lock
      })
    }

    h.vmTemplate = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      if (vm.config.template === '1') throw new HttpError(500, 'you can\'t convert a template to a template')
      if (this.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `you can't convert a VM to template if VM is running`)
      return this.#task(c, 'qmtemplate', String(vm.vmid), async (ctx) => {
        await this.#withConfigLock(c, vm.vmid, async () => {
          const map = await this.backend.convertToTemplate(this.spec(c.node.name, vm), ctx)
          for (const [k, v] of Object.entries(vm.config)) {
            if (!DISK_KEY_RE.test(k)) continue
            const f = v.split(',')[0]!
            if (map[f]) vm.config[k] = v.replace(f, map[f])
          }
          vm.config.template = '1'
        })
      })
    }

    h.vmConfigGet = async (c) => {
      const vm = this.#vm(c)
      const snap = c.params.snapshot as string | undefined
      if (snap) {
        const s = vm.snapshots[snap]
        if (!s) throw new HttpError(500, `snapshot '${snap}' does not exist`)
        return this.#configOut({vmid: vm.vmid, config: s.config, snapshots: {}})
      }
      return this.#configOut(vm)
    }

    const update = async (c: Ctx, ctx?: Parameters<VmBackend['allocateDisk']>[3]): Promise<void> => {
      const vm = this.#vm(c)
      const del = c.params.delete ? splitList(String(c.params.delete)) : []
      const setKeys = Object.keys(c.params).filter((k) => !['node', 'vmid', 'digest', 'delete', 'skiplock'].includes(k))
      for (const k of del) {
        if (setKeys.includes(k)) throw new ParamError({[k]: `unable to delete parameter '${k}' and set it at the same time`})
      }
      this.#checkConfigPerms(c, [...setKeys.map((k) => [k, String(c.params[k])] as [string, string]), ...del.map((k) => [k, vm.config[k]] as [string, string | undefined])])
      await this.#withConfigLock(c, vm.vmid, async () => {
        this.#checkLock(vm, c)
        const digest = c.params.digest as string | undefined
        if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
        const taskCtx = ctx ?? {upid: '', log: () => undefined, signal: new AbortController().signal}
        for (const k of del) {
          const v = vm.config[k]
          if (v === undefined) continue
          if (DISK_KEY_RE.test(k) && !/media=cdrom/.test(v)) {
            let n = 0
            while (vm.config[`unused${n}`] !== undefined) n++
            vm.config[`unused${n}`] = v.split(',')[0]!
          } else if (DISK_KEY_RE.test(k) && /-cloudinit\.qcow2/.test(v)) {
            await this.backend.deleteVolume(c.node.name, v.split(',')[0]!).catch(() => undefined)
          }
          delete vm.config[k]
        }
        const params: RawParams = {}
        for (const k of setKeys) params[k] = c.params[k]!
        await this.#applyConfig(c, vm, params, taskCtx)
        if (setKeys.some((k) => /^(ci|sshkeys|ipconfig|nameserver|searchdomain|name)/.test(k)) && this.spec(c.node.name, vm).cloudInit) {
          await this.backend.regenerateCloudInit(this.spec(c.node.name, vm))
        }
      })
      this.#changed()
    }

    h.vmConfigPost = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      return this.#task(c, 'qmconfig', String(vm.vmid), async (ctx) => update(c, ctx))
    }

    h.vmConfigPut = async (c) => {
      await update(c)
      return null
    }

    h.vmStatusCurrent = async (c) => {
      const vm = this.#vm(c)
      const st = this.backend.status(c.node.name, vm.vmid)
      // Hot path (status polling): read the few keys directly instead of building a full VmSpec.
      const cfg = vm.config
      const spec = {name: cfg.name ?? `VM${vm.vmid}`, cores: Number(cfg.cores ?? 1), sockets: Number(cfg.sockets ?? 1), memoryMb: Number(/^(?:current=)?(\d+)/.exec(cfg.memory ?? '512')?.[1] ?? 512), agent: /^(1|enabled=1)/.test(cfg.agent ?? '')}
      return {
        vmid: vm.vmid,
        name: spec.name,
        status: st.running ? 'running' : 'stopped',
        qmpstatus: st.qmpstatus,
        uptime: st.uptime,
        ...(st.pid ? {pid: st.pid} : {}),
        cpus: spec.cores * spec.sockets,
        cpu: st.cpu,
        maxmem: spec.memoryMb * 2 ** 20,
        mem: st.mem,
        ...(spec.agent ? {agent: 1} : {}),
        ...(vm.config.lock ? {lock: vm.config.lock} : {}),
        ...(vm.config.tags ? {tags: vm.config.tags} : {}),
        ...(vm.config.template === '1' ? {template: 1} : {}),
        ha: {managed: 0},
      }
    }

    h.vmStart = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      if (vm.config.template === '1') throw new HttpError(500, `you can't start a vm if it's a template`)
      if (this.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} already running`)
      return this.#task(c, 'qmstart', String(vm.vmid), async (ctx) => this.#startVm(c, vm, ctx))
    }

    h.vmShutdown = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      return this.#task(c, 'qmshutdown', String(vm.vmid), async (ctx) => {
        if (!this.backend.status(c.node.name, vm.vmid).running) throw new Error(`VM ${vm.vmid} not running`)
        const timeoutS = c.params.timeout === undefined ? 180 : Number(c.params.timeout)
        await this.backend.shutdown(this.spec(c.node.name, vm), {timeoutS, forceStop: parseBool(c.params.forceStop) ?? false}, ctx)
      })
    }

    h.vmStop = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      return this.#task(c, 'qmstop', String(vm.vmid), async (ctx) => {
        await this.backend.stop(c.node.name, vm.vmid, ctx)
      })
    }

    h.vmResize = async (c) => {
      const vm = this.#vm(c)
      const key = String(c.params.disk)
      const cur = vm.config[key]
      if (!cur) throw new HttpError(500, `disk '${key}' does not exist`)
      this.#checkLock(vm, c)
      const digest = c.params.digest as string | undefined
      if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
      const p = parsePropertyString(cur, DISK_PARAM_KEYS_ALL)
      if (p.media === 'cdrom') throw new HttpError(500, `you can't resize a cdrom`)
      const info = await this.backend.volumeInfo(c.node.name, p.file!)
      const curSize = info?.size ?? (p.size ? parseSize(p.size, 'B') : 0)
      const sizeText = String(c.params.size)
      const newSize = sizeText.startsWith('+') ? curSize + parseSize(sizeText.slice(1), 'B') : parseSize(sizeText, 'B')
      if (newSize < curSize) throw new HttpError(500, `shrinking disks is not supported`)
      return this.#task(c, 'resize', String(vm.vmid), async (ctx) => {
        await this.#withConfigLock(c, vm.vmid, async () => {
          if (newSize === curSize) {
            ctx.log(`disk '${key}' already has the requested size`)
            return
          }
          await this.backend.resizeDisk(this.spec(c.node.name, vm), key, newSize, ctx)
          vm.config[key] = cur.replace(/(,|^)size=[^,]*/, '') + `,size=${formatSize(newSize)}`
          vm.config[key] = vm.config[key].replace(/^,/, '')
        })
      })
    }

    h.vmMoveDisk = async (c) => {
      const vm = this.#vm(c)
      const key = String(c.params.disk)
      const cur = vm.config[key]
      if (!cur) throw new HttpError(500, `disk '${key}' does not exist`)
      this.#checkLock(vm, c)
      if (!c.params.storage) throw new ParamError({storage: 'parameter is missing and it is not optional'})
      const storage = String(c.params.storage)
      this.#storage(storage, 'images')
      this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
      const digest = c.params.digest as string | undefined
      if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
      const p = parsePropertyString(cur, DISK_PARAM_KEYS_ALL)
      if (Object.keys(vm.snapshots).length > 0 && parseBool(c.params.delete)) throw new HttpError(500, `you can't move a disk with snapshots and delete the source`)
      vm.config.lock = 'disk'
      return this.#task(c, 'qmmove', String(vm.vmid), async (ctx) => {
        try {
          const fmt = ((c.params.format as string) ?? (p.file!.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
          const vol = await this.backend.copyDisk(c.node.name, p.file!, vm.vmid, storage, fmt, ctx)
          vm.config[key] = cur.replace(p.file!, vol.volid)
          if (parseBool(c.params.delete)) await this.backend.deleteVolume(c.node.name, p.file!, ctx)
          else {
            let n = 0
            while (vm.config[`unused${n}`] !== undefined) n++
            vm.config[`unused${n}`] = p.file!
          }
        } finally {
          delete vm.config.lock
        }
      }, () => delete vm.config.lock)
    }

    h.snapList = async (c) => {
      const vm = this.#vm(c)
      const out: Record<string, unknown>[] = Object.entries(vm.snapshots).map(([name, s]) => ({name, snaptime: s.snaptime, description: s.description, ...(s.parent ? {parent: s.parent} : {}), vmstate: 0}))
      out.push({name: 'current', digest: configDigest(vm.config), running: this.backend.status(c.node.name, vm.vmid).running ? 1 : 0, description: 'You are here!', ...(vm.config.parent ? {parent: vm.config.parent} : {})})
      return out
    }

    h.snapCreate = async (c) => {
      const vm = this.#vm(c)
      const name = String(c.params.snapname)
      if (name === 'current') throw new ParamError({snapname: 'invalid snapshot name'})
      if (parseBool(c.params.vmstate)) throw new HttpError(500, 'the lab does not save RAM state (vmstate=1 is not supported)')
      this.#checkLock(vm, c)
      if (vm.snapshots[name]) throw new HttpError(500, `snapshot name '${name}' already used`)
      vm.config.lock = 'snapshot'
      return this.#task(c, 'qmsnapshot', String(vm.vmid), async (ctx) => {
        try {
          await this.backend.snapshotCreate(this.spec(c.node.name, vm), name, ctx)
          const {lock: _l, ...cfg} = vm.config
          vm.snapshots[name] = {config: cfg, snaptime: Math.floor(Date.now() / 1000), description: String(c.params.description ?? ''), parent: vm.config.parent}
          vm.config.parent = name
        } finally {
          delete vm.config.lock
        }
      }, () => delete vm.config.lock)
    }

    h.snapDelete = async (c) => {
      const vm = this.#vm(c)
      const name = String(c.params.snapname)
      if (!vm.snapshots[name]) throw new HttpError(500, `snapshot '${name}' does not exist`)
      this.#checkLock(vm, c)
      vm.config.lock = 'snapshot-delete'
      return this.#task(c, 'qmdelsnapshot', String(vm.vmid), async (ctx) => {
        try {
          await this.backend.snapshotDelete(this.spec(c.node.name, vm), name, ctx)
          const parent = vm.snapshots[name]!.parent
          for (const s of Object.values(vm.snapshots)) if (s.parent === name) s.parent = parent
          if (vm.config.parent === name) {
            if (parent) vm.config.parent = parent
            else delete vm.config.parent
          }
          delete vm.snapshots[name]
        } finally {
          delete vm.config.lock
        }
      }, () => delete vm.config.lock)
    }

    h.snapRollback = async (c) => {
      const vm = this.#vm(c)
      const name = String(c.params.snapname)
      const snap = vm.snapshots[name]
      if (!snap) throw new HttpError(500, `snapshot '${name}' does not exist`)
      this.#checkLock(vm, c)
      vm.config.lock = 'rollback'
      return this.#task(c, 'qmrollback', String(vm.vmid), async (ctx) => {
        try {
          if (this.backend.status(c.node.name, vm.vmid).running) await this.backend.stop(c.node.name, vm.vmid, ctx)
          await this.backend.snapshotRollback(this.spec(c.node.name, vm), name, ctx)
          vm.config = {...snap.config, parent: name}
        } finally {
          delete vm.config.lock
        }
        if (parseBool(c.params.start)) await this.#startVm(c, vm, ctx)
      }, () => delete vm.config.lock)
    }

    h.cloudinitUpdate = async (c) => {
      const vm = this.#vm(c)
      this.#checkLock(vm, c)
      const spec = this.spec(c.node.name, vm)
      if (!spec.cloudInit) throw new HttpError(500, `no cloudinit drive found for VM ${vm.vmid}`)
      await this.#withConfigLock(c, vm.vmid, () => this.backend.regenerateCloudInit(spec))
      return null
    }

    // ---- guest agent ----
    const agentVm = (c: Ctx): VmRecord => {
      const vm = this.#vm(c)
      if (!this.spec(c.node.name, vm).agent) throw new HttpError(500, 'No QEMU guest agent configured')
      if (!this.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} is not running`)
      return vm
    }
    const agentCall = async <T>(fn: () => Promise<T>): Promise<T> => {
      try {
        return await fn()
      } catch (e) {
        if (e instanceof BackendError) throw new HttpError(e.status, e.message)
        throw e
      }
    }
    h.agentPing = async (c) => {
      const vm = agentVm(c)
      await agentCall(() => this.backend.agent.ping(c.node.name, vm.vmid, 10_000))
      return {result: {}}
    }
    h.agentNetwork = async (c) => {
      const vm = agentVm(c)
      return {result: await agentCall(() => this.backend.agent.networkGetInterfaces(c.node.name, vm.vmid, 10_000))}
    }
    h.agentFsinfo = async (c) => {
      const vm = agentVm(c)
      return {result: await agentCall(() => this.backend.agent.getFsinfo(c.node.name, vm.vmid, 10_000))}
    }
    h.agentExec = async (c) => {
      const vm = agentVm(c)
      const cmd = c.params.command
      const command = Array.isArray(cmd) ? cmd : [String(cmd)]
      if (command.length === 0 || command[0] === '') throw new ParamError({command: 'no command specified'})
      return agentCall(() => this.backend.agent.exec(c.node.name, vm.vmid, command, c.params['input-data'] as string | undefined, 10_000))
    }
    h.agentExecStatus = async (c) => {
      const vm = agentVm(c)
      return agentCall(() => this.backend.agent.execStatus(c.node.name, vm.vmid, Number(c.params.pid), 10_000))
    }
    h.agentFileWrite = async (c) => {
      const vm = agentVm(c)
      const encode = parseBool(c.params.encode) ?? true
      // encode=1 (default): the API receives plain text and base64-encodes it for the agent.
      const content = encode ? Buffer.from(String(c.params.content)) : Buffer.from(String(c.params.content), 'base64')
      await agentCall(() => this.backend.agent.fileWrite(c.node.name, vm.vmid, String(c.params.file), content, 30_000))
      return null
    }
    h.agentFileRead = async (c) => {
      const vm = agentVm(c)
      const r = await agentCall(() => this.backend.agent.fileRead(c.node.name, vm.vmid, String(c.params.file), 30_000))
      return {content: r.content.toString('utf8'), ...(r.truncated ? {truncated: true} : {})}
    }

    // ---- storage ----
    h.storageIndex = async (c) => {
      const want = c.params.content ? splitList(String(c.params.content)) : undefined
      const out: Record<string, unknown>[] = []
      for (const s of this.#storages.values()) {
        if (c.params.storage && c.params.storage !== s.id) continue
        if (want && !want.some((w) => s.content.includes(w as never))) continue
        if (!this.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit') && !this.access.has(c.principal, `/storage/${s.id}`, 'Datastore.AllocateSpace')) continue
        const {used} = await this.backend.storageUsage(c.node.name, s.id)
        out.push({storage: s.id, type: s.type, content: s.content.join(','), active: 1, enabled: 1, shared: 0, total: s.totalBytes, used, avail: s.totalBytes - used, used_fraction: used / s.totalBytes})
      }
      return out
    }
    h.storageStatus = async (c) => {
      const s = this.#storage(String(c.params.storage))
      const {used} = await this.backend.storageUsage(c.node.name, s.id)
      return {type: s.type, content: s.content.join(','), active: 1, enabled: 1, shared: 0, total: s.totalBytes, used, avail: s.totalBytes - used}
    }
    h.storageContent = async (c) => {
      const s = this.#storage(String(c.params.storage))
      const vols = await this.backend.listVolumes(c.node.name, s.id, c.params.content as never)
      return vols
        .filter((v) => c.params.vmid === undefined || v.vmid === Number(c.params.vmid))
        .filter((v) => v.vmid === undefined || this.access.has(c.principal, `/vms/${v.vmid}`, 'VM.Audit') || this.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Allocate'))
        .map((v) => ({volid: v.volid, content: v.content, format: v.format, size: v.size, ...(v.used !== undefined ? {used: v.used} : {}), ...(v.vmid !== undefined ? {vmid: v.vmid} : {}), ctime: v.ctime}))
    }
    h.storageDelete = async (c) => {
      const volume = String(c.params.volume)
      const volid = volume.includes(':') ? volume : `${c.params.storage}:${volume}`
      const storage = volid.split(':')[0]!
      this.#storage(storage)
      const info = await this.backend.volumeInfo(c.node.name, volid)
      if (!info) throw new HttpError(500, `volume '${volid}' does not exist`)
      if (info.vmid !== undefined) {
        this.access.check(c.principal, `/vms/${info.vmid}`, ['VM.Config.Disk'])
        for (const vm of c.node.vms.values()) {
          if (Object.values(vm.config).some((v) => v.split(',')[0] === volid)) throw new HttpError(500, `unable to delete '${volid}' - volume is still in use (VM ${vm.vmid})`)
        }
      } else this.access.check(c.principal, `/storage/${storage}`, ['Datastore.Allocate'])
      return this.#task(c, 'imgdel', volid, async (ctx) => this.backend.deleteVolume(c.node.name, volid, ctx))
    }
    return h
  }

  async #startVm(c: Ctx, vm: VmRecord, ctx: Parameters<VmBackend['start']>[1]): Promise<void> {
    const spec = this.spec(c.node.name, vm)
    if (spec.cloudInit) await this.backend.regenerateCloudInit(spec)
    await this.backend.start(spec, ctx)
  }

  /** Storage upload/download: the server has the file in `tmpPath` (checksum verified). */
  importUploaded(c: Ctx, tmpPath: string, type: 'imgcopy' | 'download'): string {
    const storage = String(c.params.storage)
    const content = String(c.params.content)
    this.#storage(storage, content)
    const filename = String(c.params.filename).replace(/[^a-zA-Z0-9_.\-]/g, '_')
    if (content === 'import' && !/\.(qcow2|raw|vmdk|img|ova)$/.test(filename)) throw new ParamError({filename: `invalid filename or wrong extension`})
    if (content === 'iso' && !/\.(iso|img)$/.test(filename)) throw new ParamError({filename: `wrong file extension`})
    return this.#task(c, type, '', async (ctx) => {
      ctx.log(`target node: ${c.node.name}`)
      ctx.log(`target file: ${this.#storages.get(storage)!.path(c.node.name)}/${content}/${filename}`)
      await this.backend.importFile(c.node.name, storage, content as never, filename, tmpPath, ctx)
      ctx.log(`file size is: ${c.upload?.size ?? 0}`)
    })
  }

  /** Checks one value of a VM config param (used by tests). */
  static checkConfigValue(key: string, value: string): string | undefined {
    const def = VM_CONFIG_PARAMS[key] ?? VM_CONFIG_PARAMS[key.replace(/\d+$/, '')]
    return def ? checkParam(def, value) : 'unknown'
  }
}

/** Disk property-string keys incl. those only some buses have (for parsing stored values). */
const DISK_PARAM_KEYS_ALL = {...DISK_PARAM_KEYS, ...VM_CONFIG_PARAMS.scsi!.keys!}

/**
 * cipassword as PVE stores it: a SHA-512 crypt hash. Node has no crypt(3), so `openssl passwd -6`
 * computes it; the password goes on stdin, never on the command line.
 */
async function hashPassword(pw: string): Promise<string> {
  if (/^\$(5|6)\$/.test(pw)) return pw // already hashed (PVE keeps hashes as given)
  const r = await run('openssl', ['passwd', '-6', '-stdin'], {input: pw + '\n'})
  return r.stdout.trim()
}
