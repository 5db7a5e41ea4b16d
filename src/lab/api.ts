import {createHash, randomBytes} from 'node:crypto'

import {run} from '../exec.js'
import {AccessControl, PermissionError, type Principal} from './access.js'
import {BackendError, type CloudInitSpec, type StorageDef, type VmBackend, type VmDisk, type VmNic, type VmSpec} from './backend.js'
import {Faults} from './faults.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from './params.js'
import {ConfigLocks, TaskManager} from './tasks.js'
import {agentRoutes} from './routes/agent.js'
import {clusterRoutes} from './routes/cluster.js'
import {qemuRoutes} from './routes/qemu.js'
import {storageRoutes} from './routes/storage.js'
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

export type Handler = (c: Ctx) => Promise<unknown>

export const DIGEST_MISMATCH = 'detected modified configuration - file changed by other user? Try again.'
export const MASK = '**********'

/** SHA-1 of the config as PVE serialises it (sorted `key: value` lines), like PVE's config digest. */
export function configDigest(config: Record<string, string>): string {
  const text = Object.keys(config)
    .filter((k) => k !== 'digest')
    .sort()
    .map((k) => `${k}: ${config[k]}\n`)
    .join('')
  return createHash('sha1').update(text).digest('hex')
}

export function randomMac(): string {
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

/** Whether a VM config turns the guest agent on (`agent: 1` or `agent: enabled=1,…`). */
export function agentEnabled(cfg: Record<string, string>): boolean {
  return /^(1|enabled=1)/.test(cfg.agent ?? '')
}

export class LabApi {
  readonly nodes = new Map<string, NodeState>()
  readonly tasks = new TaskManager()
  readonly locks: ConfigLocks
  readonly faults: Faults
  readonly handlers: Record<string, Handler>
  readonly #o: LabApiOptions
  readonly storages: Map<string, StorageDef>

  constructor(o: LabApiOptions) {
    this.#o = o
    this.faults = o.faults ?? new Faults()
    this.locks = new ConfigLocks(o.lockTimeoutMs ?? 10_000)
    this.storages = new Map(o.storages.map((s) => [s.id, s]))
    const started = Math.floor(Date.now() / 1000)
    for (const n of o.nodes) this.nodes.set(n, {name: n, vms: new Map(), started})
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
  task(c: Ctx, type: string, id: string, fn: (ctx: Parameters<Parameters<TaskManager['start']>[4]>[0]) => Promise<void>, onFault?: () => void): string {
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
        throw e
      } finally {
        this.changed()
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
        upgrade: cfg.ciupgrade === undefined ? true : /^(1|true|on|yes)$/i.test(String(cfg.ciupgrade)),
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
      agent: agentEnabled(cfg),
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
  async applyConfig(c: Ctx, vm: VmRecord, params: RawParams, ctx: Parameters<VmBackend['allocateDisk']>[3], defaultStorage?: string): Promise<void> {
    const cfg = vm.config
    for (const [k, raw] of Object.entries(params)) {
      if (['node', 'vmid', 'digest', 'delete', 'skiplock', 'start', 'storage', 'pool', 'revert'].includes(k)) continue
      const v = String(raw)
      if (DISK_KEY_RE.test(k)) {
        cfg[k] = await this.diskValue(c, vm.vmid, k, v, ctx, defaultStorage)
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
  async diskValue(c: Ctx, vmid: number, key: string, value: string, ctx: Parameters<VmBackend['allocateDisk']>[3], defaultStorage?: string): Promise<string> {
    const p = parsePropertyString(value, DISK_PARAM_KEYS_ALL)
    const file = p.file ?? ''
    const extra = Object.entries(p).filter(([x]) => !['file', 'import-from', 'size', 'format'].includes(x)).map(([a, b]) => `${a}=${b}`)
    const ci = /^([a-z][a-z0-9\-_.]*):cloudinit$/i.exec(file)
    if (ci) {
      this.storageDef(ci[1]!, 'images')
      const vol = await this.backend.allocateCloudInit(c.node.name, vmid, ci[1]!, ctx)
      return [vol.volid, 'media=cdrom'].join(',')
    }
    const alloc = /^([a-z][a-z0-9\-_.]*):(\d+(?:\.\d+)?)$/i.exec(file)
    if (alloc) {
      const storage = alloc[1]!
      this.storageDef(storage, 'images')
      this.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
      const fmt = (p.format === 'raw' ? 'raw' : 'qcow2') as 'qcow2' | 'raw'
      const src = p['import-from']
      if (src) {
        if (src.startsWith('/')) throw new HttpError(500, `${key}: importing from an absolute path is not supported by the lab; upload it to an 'import' storage`)
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

  volids(vm: VmRecord): string[] {
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

  /**
   * PVE's PVE::Storage::check_volume_access for disk parameters: a filesystem path (as `file` or
   * `import-from`, or a bare size PVE parses as a path) is root@pam's alone, tokens included.
   */
  checkDiskPaths(c: Ctx): void {
    for (const [k, v] of Object.entries(c.params)) {
      if (!DISK_KEY_RE.test(k) || typeof v !== 'string') continue
      const p = parsePropertyString(v, DISK_PARAM_KEYS_ALL)
      const paths = [p.file, p['import-from']].filter((x): x is string => x !== undefined && (x.startsWith('/') || /^\d+$/.test(x)))
      if (paths.length > 0 && !this.access.isRoot(c.principal)) throw new HttpError(500, 'Only root can pass arbitrary filesystem paths.')
    }
  }

  /** Permission check for each config key being set or deleted. */
  checkConfigPerms(c: Ctx, keys: [string, string | undefined][]): void {
    const path = `/vms/${c.params.vmid}`
    for (const [k, v] of keys) this.access.check(c.principal, path, [privForKey(k, v)])
  }

  /** Output form of a config for GET …/config (types per schema, cipassword masked). */
  configOut(vm: VmRecord): Record<string, unknown> {
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


  async startVm(c: Ctx, vm: VmRecord, ctx: Parameters<VmBackend['start']>[1]): Promise<void> {
    const spec = this.spec(c.node.name, vm)
    if (spec.cloudInit) await this.backend.regenerateCloudInit(spec)
    await this.backend.start(spec, ctx)
  }

  /** Storage upload/download: the server has the file in `tmpPath` (checksum verified). */
  importUploaded(c: Ctx, source: string | ((ctx: Parameters<VmBackend['start']>[1]) => Promise<string>), type: 'imgcopy' | 'download'): string {
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

  /** Checks one value of a VM config param (used by tests). */
  static checkConfigValue(key: string, value: string): string | undefined {
    const def = VM_CONFIG_PARAMS[key] ?? VM_CONFIG_PARAMS[key.replace(/\d+$/, '')]
    return def ? checkParam(def, value) : 'unknown'
  }
}

/** Disk property-string keys incl. those only some buses have (for parsing stored values). */
export const DISK_PARAM_KEYS_ALL = {...DISK_PARAM_KEYS, ...VM_CONFIG_PARAMS.scsi!.keys!}

/**
 * cipassword as PVE stores it: a SHA-512 crypt hash. Node has no crypt(3), so `openssl passwd -6`
 * computes it; the password goes on stdin, never on the command line.
 */
async function hashPassword(pw: string): Promise<string> {
  if (/^\$(5|6)\$/.test(pw)) return pw // already hashed (PVE keeps hashes as given)
  const r = await run('openssl', ['passwd', '-6', '-stdin'], {input: pw + '\n'})
  return r.stdout.trim()
}
