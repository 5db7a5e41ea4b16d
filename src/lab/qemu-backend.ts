import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {copyFile, mkdir, readdir, rename, rm, stat} from 'node:fs/promises'
import {basename, dirname, join, relative} from 'node:path'

import {run} from '../exec.js'
import {decideAccel, type AccelDecision} from '../qemu/accel.js'
import {seedFiles, writeSeedImage, type SeedSpec} from '../qemu/cloudinit.js'
import {QgaError, type QgaClient} from '../qemu/qga.js'
import {sleep} from '../sleep.js'
import {QemuVm, userNetFor, type PortForward, type UserNetSpec, type VmDiskSpec} from '../qemu/vm.js'
import {
  BackendError,
  type AgentExecStatus,
  type AgentInfo,
  type AgentOsInfo,
  type AgentFsInfo,
  type AgentNetworkInterface,
  type BackendInit,
  type DiskAllocation,
  type GuestAgent,
  type StorageContent,
  type StorageDef,
  type TaskContext,
  type VmAccess,
  type VmBackend,
  type VmDisk,
  type VmRuntimeStatus,
  type VmSpec,
  type VolumeInfo,
} from './backend.js'

/**
 * The qemu backend of the lab: every VM is a real QEMU process (src/qemu/vm.ts).
 *
 * Storage follows Proxmox VE's directory storage layout, under each storage's path:
 *   images/<vmid>/vm-<vmid>-disk-<n>.<fmt>   disks (volid `<storage>:<vmid>/vm-…`)
 *   images/<vmid>/base-<vmid>-disk-<n>.<fmt> template disks
 *   images/<vmid>/vm-<vmid>-cloudinit.qcow2  the NoCloud seed (an ISO 9660 image, stored as qcow2)
 *   import/, template/iso/, snippets/, dump/ staged files (volid `<storage>:<content>/<file>`)
 * A linked clone's volid is `<storage>:base-<b>-disk-<n>.qcow2/<vmid>/vm-<vmid>-disk-<m>.qcow2`,
 * its file a qcow2 whose backing file is `../<b>/base-<b>-disk-<n>.qcow2`, as PVE makes them.
 *
 * Networking: each VM's net0 is QEMU user-mode networking whose subnet and gateway are the
 * guest's own static address and gateway from `ipconfig0`, so the inventory's address works
 * inside the guest unchanged; ssh/web/https/jsonrpc/postgresql are forwarded to ephemeral ports on
 * 127.0.0.1 only (reported by `access()` for `pgi lab status`). Guest-agent calls go to the real
 * qemu-guest-agent over the VM's virtio-serial socket. Runtime files (sockets, serial log) live
 * in `<backend dir>/<node>/<vmid>/`.
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

const CONTENT_DIRS: Record<Exclude<StorageContent, 'images' | 'rootdir'>, string> = {
  import: 'import',
  iso: join('template', 'iso'),
  vztmpl: join('template', 'cache'),
  snippets: 'snippets',
  backup: 'dump',
}

export interface QemuBackendOptions {
  /** Force an accelerator (tests); default: decideAccel() (PGI_QEMU_ACCEL, probe, cache). */
  accel?: AccelDecision
  /** Grace period for the clean shutdown at close() before QEMU is ended (ms, default 3000). */
  closeGraceMs?: number
  /** Accepted for symmetry with the simulated backend: a real guest decides its own health. */
  guestUnhealthy?: (node: string, vmid: number) => boolean
  /** How long a disk unplug waits for the guest to release the device (ms, default 60 000). */
  unplugTimeoutMs?: number
}

interface ParsedVolid {
  storage: StorageDef
  /** Content type. */
  content: StorageContent
  /** Absolute file path. */
  path: string
  /** Owner VMID for images. */
  vmid?: number
  volid: string
}

interface ImgInfo {
  'virtual-size': number
  'actual-size'?: number
  format: string
  'backing-filename'?: string
  snapshots?: {name: string}[]
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
}


export class QemuBackend implements VmBackend {
  readonly kind = 'qemu'
  #init!: BackendInit
  #accel: AccelDecision | undefined
  readonly #opts: QemuBackendOptions
  /** "node/vmid" → QEMU process */
  readonly #vms = new Map<string, RunningVm>()
  /** absolute path → {mtimeMs, info} */
  readonly #infoCache = new Map<string, {mtimeMs: number; size: number; info: ImgInfo}>()

  constructor(opts: QemuBackendOptions = {}) {
    this.#opts = opts
    this.#accel = opts.accel
  }

  async init(init: BackendInit): Promise<void> {
    this.#init = init
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
  }

  async #accelDecision(): Promise<AccelDecision> {
    // The probe's cache and scratch files stay inside the lab dir (a lab leaves nothing outside it).
    this.#accel ??= await decideAccel({cacheFile: join(this.#init.dir, 'accel.json'), workDir: this.#init.dir})
    return this.#accel
  }

  // ---- volumes --------------------------------------------------------------------------------

  #storage(id: string): StorageDef {
    const s = this.#init.storages.find((x) => x.id === id)
    if (!s) throw new BackendError(`storage '${id}' does not exist`)
    return s
  }

  #parse(node: string, volid: string): ParsedVolid {
    const i = volid.indexOf(':')
    if (i < 0) throw new BackendError(`unable to parse volume ID '${volid}'`)
    const storage = this.#storage(volid.slice(0, i))
    const rest = volid.slice(i + 1)
    const root = storage.path(node)
    let m = /^(\d+)\/((?:vm|base)-\1-(?:disk-\d+|cloudinit)\.(?:qcow2|raw))$/.exec(rest)
    if (m) return {storage, content: 'images', path: join(root, 'images', m[1], m[2]), vmid: Number(m[1]), volid}
    m = /^base-(\d+)-disk-\d+\.qcow2\/(\d+)\/(vm-\2-disk-\d+\.qcow2)$/.exec(rest)
    if (m) return {storage, content: 'images', path: join(root, 'images', m[2], m[3]), vmid: Number(m[2]), volid}
    m = /^(import|iso|vztmpl|snippets|backup)\/([^/]+)$/.exec(rest)
    if (m && !m[2].startsWith('.')) {
      const content = m[1] as keyof typeof CONTENT_DIRS
      return {storage, content, path: join(root, CONTENT_DIRS[content], m[2]), volid}
    }
    throw new BackendError(`unable to parse volume ID '${volid}'`)
  }

  async #imgInfo(path: string): Promise<ImgInfo> {
    const st = await stat(path)
    const c = this.#infoCache.get(path)
    if (c && c.mtimeMs === st.mtimeMs && c.size === st.size) return c.info
    const r = await run('qemu-img', ['info', '--output=json', '-U', path], {timeoutMs: 20_000})
    const info = JSON.parse(r.stdout) as ImgInfo
    this.#infoCache.set(path, {mtimeMs: st.mtimeMs, size: st.size, info})
    return info
  }

  async #volumeFromPath(p: ParsedVolid): Promise<VolumeInfo | undefined> {
    let st
    try {
      st = await stat(p.path)
    } catch {
      return undefined
    }
    const ctime = Math.floor(st.ctimeMs / 1000)
    if (p.content === 'images') {
      const info = await this.#imgInfo(p.path)
      return {volid: p.volid, content: 'images', format: info.format, size: info['virtual-size'], used: info['actual-size'] ?? st.blocks * 512, vmid: p.vmid, ctime}
    }
    const ext = /\.([a-z0-9]+)$/i.exec(p.path)?.[1]?.toLowerCase()
    let format = ext === 'img' ? 'raw' : ext ?? 'raw'
    if (p.content === 'import' && (ext === 'qcow2' || ext === 'raw' || ext === 'img' || ext === 'vmdk')) format = ext === 'img' ? 'raw' : ext
    return {volid: p.volid, content: p.content, format, size: st.size, used: st.blocks * 512, ctime}
  }

  async listVolumes(node: string, storage: string, content?: StorageContent): Promise<VolumeInfo[]> {
    const s = this.#storage(storage)
    const root = s.path(node)
    const out: VolumeInfo[] = []
    const wants = (c: StorageContent) => (!content || content === c) && s.content.includes(c)
    if (wants('images') || (content === 'rootdir' && s.content.includes('rootdir'))) {
      const imgRoot = join(root, 'images')
      for (const vmidDir of existsSync(imgRoot) ? await readdir(imgRoot) : []) {
        if (!/^\d+$/.test(vmidDir)) continue
        for (const f of await readdir(join(imgRoot, vmidDir))) {
          if (!/^(vm|base)-\d+-(disk-\d+|cloudinit)\.(qcow2|raw)$/.test(f)) continue
          const volid = await this.#volidOfImage(storage, join(imgRoot, vmidDir, f), vmidDir, f)
          const v = await this.#volumeFromPath({storage: s, content: 'images', path: join(imgRoot, vmidDir, f), vmid: Number(vmidDir), volid}).catch(() => undefined)
          if (v) out.push(v)
        }
      }
    }
    for (const [c, sub] of Object.entries(CONTENT_DIRS) as [keyof typeof CONTENT_DIRS, string][]) {
      if (!wants(c)) continue
      const d = join(root, sub)
      for (const f of existsSync(d) ? await readdir(d) : []) {
        if (f.startsWith('.')) continue
        const v = await this.#volumeFromPath({storage: s, content: c, path: join(d, f), volid: `${storage}:${c}/${f}`})
        if (v) out.push(v)
      }
    }
    return out.sort((a, b) => a.volid.localeCompare(b.volid))
  }

  /** The volid of an image file: a linked clone's names its base. */
  async #volidOfImage(storage: string, path: string, vmid: string, file: string): Promise<string> {
    if (file.startsWith('vm-') && file.endsWith('.qcow2') && !file.includes('cloudinit')) {
      const info = await this.#imgInfo(path).catch(() => undefined)
      const b = info?.['backing-filename']
      const m = b ? /^\.\.\/(\d+)\/(base-\1-disk-\d+\.qcow2)$/.exec(b) : null
      if (m) return `${storage}:${m[2]}/${vmid}/${file}`
    }
    return `${storage}:${vmid}/${file}`
  }

  async storageUsage(node: string, storage: string): Promise<{used: number}> {
    const root = this.#storage(storage).path(node)
    let used = 0
    const walk = async (d: string): Promise<void> => {
      for (const e of await readdir(d, {withFileTypes: true}).catch(() => [])) {
        const p = join(d, e.name)
        if (e.isDirectory()) await walk(p)
        else if (e.isFile()) used += (await stat(p)).blocks * 512
      }
    }
    await walk(root)
    return {used}
  }

  async importFile(node: string, storage: string, content: StorageContent, filename: string, srcPath: string, ctx: TaskContext): Promise<VolumeInfo> {
    const p = this.#parse(node, `${storage}:${content}/${filename}`)
    await mkdir(dirname(p.path), {recursive: true})
    try {
      await rename(srcPath, p.path)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error
      await copyFile(srcPath, p.path)
      await rm(srcPath, {force: true})
    }
    const v = await this.#volumeFromPath(p)
    if (!v) throw new BackendError(`import of '${filename}' failed`)
    ctx.log(`target file: ${p.path}`)
    ctx.log(`file size is: ${v.size}`)
    return v
  }

  async deleteVolume(node: string, volid: string, ctx?: TaskContext): Promise<void> {
    const p = this.#parse(node, volid)
    if (!existsSync(p.path)) throw new BackendError(`volume '${volid}' does not exist`)
    await rm(p.path, {force: true})
    this.#infoCache.delete(p.path)
    ctx?.log(`removed volume '${volid}'`)
  }

  async volumeInfo(node: string, volid: string): Promise<VolumeInfo | undefined> {
    let p: ParsedVolid
    try {
      p = this.#parse(node, volid)
    } catch {
      return undefined
    }
    return this.#volumeFromPath(p)
  }

  // ---- disks ----------------------------------------------------------------------------------

  /** Lowest free `vm-<vmid>-disk-<n>.<fmt>` on `storage` (base- names count as taken). */
  #newDisk(node: string, storage: string, vmid: number, fmt: string): ParsedVolid {
    const s = this.#storage(storage)
    if (!s.content.includes('images')) throw new BackendError(`storage '${storage}' does not support content-type 'images'`)
    const dir = join(s.path(node), 'images', String(vmid))
    const taken = new Set(existsSync(dir) ? readdirSync(dir).map((f) => f.replace(/^base-/, 'vm-').replace(/\.(qcow2|raw)$/, '')) : [])
    for (let n = 0; ; n++) {
      if (!taken.has(`vm-${vmid}-disk-${n}`)) {
        const file = `vm-${vmid}-disk-${n}.${fmt}`
        return {storage: s, content: 'images', path: join(dir, file), vmid, volid: `${storage}:${vmid}/${file}`}
      }
    }
  }

  async allocateDisk(node: string, vmid: number, alloc: DiskAllocation, ctx: TaskContext): Promise<VolumeInfo> {
    const target = this.#newDisk(node, alloc.storage, vmid, alloc.format)
    await mkdir(dirname(target.path), {recursive: true})
    if (alloc.importFrom) {
      const src = this.#parse(node, alloc.importFrom)
      if (!existsSync(src.path)) throw new BackendError(`unable to find volume '${alloc.importFrom}'`)
      const info = await this.#imgInfo(src.path)
      if (info['backing-filename']) throw new BackendError('refusing to import image with backing file')
      ctx.log(`importing disk '${alloc.importFrom}' to VM ${vmid} ...`)
      ctx.log(`transferring ${info['virtual-size']} bytes (${info.format} → ${alloc.format})`)
      await this.#convert(src.path, info.format, target.path, alloc.format, ctx)
      if (alloc.sizeBytes && alloc.sizeBytes > info['virtual-size']) {
        await run('qemu-img', ['resize', '-f', alloc.format, target.path, String(alloc.sizeBytes)], {timeoutMs: 60_000})
        ctx.log(`resized to ${alloc.sizeBytes} bytes`)
      }
      ctx.log(`transferred ${info['virtual-size']} bytes: 100.00%`)
      ctx.log(`Successfully imported disk as '${target.volid}'`)
    } else {
      const size = alloc.sizeBytes ?? 0
      ctx.log(`Formatting '${target.path}', fmt=${alloc.format} size=${size}`)
      await run('qemu-img', ['create', '-q', '-f', alloc.format, ...(alloc.format === 'qcow2' ? ['-o', 'preallocation=metadata,lazy_refcounts=on'] : []), target.path, String(size)], {timeoutMs: 120_000})
    }
    const v = await this.#volumeFromPath(target)
    if (!v) throw new BackendError(`allocation of '${target.volid}' failed`)
    return v
  }

  async #convert(src: string, srcFmt: string, dst: string, dstFmt: string, ctx: TaskContext, snapshot?: string): Promise<void> {
    const tmp = `${dst}.partial`
    try {
      await run(
        'qemu-img',
        ['convert', '-p', '-U', '-f', srcFmt, '-O', dstFmt, ...(snapshot ? ['-l', `snapshot.name=${snapshot}`] : []), src, tmp],
        {timeoutMs: 60 * 60_000, signal: ctx.signal},
      )
      await rename(tmp, dst)
    } catch (error) {
      await rm(tmp, {force: true})
      throw new BackendError(`disk import failed: ${(error as Error).message}`)
    }
  }

  async allocateCloudInit(node: string, vmid: number, storage: string, ctx?: TaskContext): Promise<VolumeInfo> {
    const s = this.#storage(storage)
    const file = `vm-${vmid}-cloudinit.qcow2`
    const p: ParsedVolid = {storage: s, content: 'images', path: join(s.path(node), 'images', String(vmid), file), vmid, volid: `${storage}:${vmid}/${file}`}
    await mkdir(dirname(p.path), {recursive: true})
    if (!existsSync(p.path)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', p.path, String(4 * 1024 * 1024)], {timeoutMs: 30_000})
    ctx?.log(`Formatting '${p.path}', fmt=qcow2 size=4194304`)
    const v = await this.#volumeFromPath(p)
    if (!v) throw new BackendError(`allocation of '${p.volid}' failed`)
    return v
  }

  /** The NoCloud seed content of a VM spec (exported for tests). */
  static seedSpec(spec: VmSpec): SeedSpec {
    const ci = spec.cloudInit
    if (!ci) throw new BackendError(`VM ${spec.vmid} has no cloud-init settings`)
    return {
      hostname: ci.hostname,
      user: ci.user,
      passwordHash: ci.passwordHash,
      sshKeys: ci.sshKeys,
      nameservers: ci.nameservers,
      searchdomain: ci.searchdomain,
      packageUpgrade: ci.upgrade,
      nics: spec.nics.map((nic, i) => ({name: `eth${i}`, mac: nic.macaddr, ipconfig: ci.ipconfig[nic.key] ?? {ip: 'dhcp'}})),
    }
  }

  async regenerateCloudInit(spec: VmSpec): Promise<void> {
    const drive = spec.disks.find((d) => d.cloudinit)
    if (!drive || !spec.cloudInit) return
    if (spec.cloudInit.type !== 'nocloud') throw new BackendError(`lab qemu backend: citype '${spec.cloudInit.type}' is not supported (use nocloud)`)
    const p = this.#parse(spec.node, drive.volid)
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
    this.#infoCache.delete(p.path)
  }

  async copyDisk(node: string, srcVolid: string, newVmid: number, targetStorage: string, format: 'qcow2' | 'raw', ctx: TaskContext, snapname?: string): Promise<VolumeInfo> {
    const src = this.#parse(node, srcVolid)
    if (!existsSync(src.path)) throw new BackendError(`volume '${srcVolid}' does not exist`)
    const info = await this.#imgInfo(src.path)
    if (snapname && !(info.snapshots ?? []).some((s) => s.name === snapname)) throw new BackendError(`snapshot '${snapname}' does not exist on '${srcVolid}'`)
    const target = this.#newDisk(node, targetStorage, newVmid, format)
    await mkdir(dirname(target.path), {recursive: true})
    ctx.log(`create full clone of drive (${srcVolid})`)
    await this.#convert(src.path, info.format, target.path, format, ctx, snapname)
    ctx.log(`transferred ${info['virtual-size']} bytes: 100.00%`)
    const v = await this.#volumeFromPath(target)
    if (!v) throw new BackendError(`copy to '${target.volid}' failed`)
    return v
  }

  async linkDisk(node: string, baseVolid: string, newVmid: number, ctx: TaskContext): Promise<VolumeInfo> {
    const base = this.#parse(node, baseVolid)
    const bm = /\/images\/(\d+)\/(base-\1-disk-\d+\.qcow2)$/.exec(base.path)
    if (!bm || !existsSync(base.path)) throw new BackendError(`volume '${baseVolid}' does not exist or is not a base image`)
    const t = this.#newDisk(node, base.storage.id, newVmid, 'qcow2')
    await mkdir(dirname(t.path), {recursive: true})
    const backing = relative(dirname(t.path), base.path)
    ctx.log(`create linked clone of drive (${baseVolid})`)
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, t.path], {cwd: dirname(t.path), timeoutMs: 60_000})
    const volid = `${base.storage.id}:${bm[2]}/${newVmid}/${basename(t.path)}`
    const v = await this.#volumeFromPath({...t, volid})
    if (!v) throw new BackendError(`linked clone '${volid}' failed`)
    return v
  }

  async resizeDisk(spec: VmSpec, diskKey: string, newSizeBytes: number, ctx: TaskContext): Promise<void> {
    const d = spec.disks.find((x) => x.key === diskKey)
    if (!d) throw new BackendError(`no such disk '${diskKey}'`)
    const p = this.#parse(spec.node, d.volid)
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
      const info = await this.#imgInfo(p.path)
      await run('qemu-img', ['resize', '-f', info.format, p.path, String(newSizeBytes)], {timeoutMs: 60_000})
    }
    this.#infoCache.delete(p.path)
    ctx.log(`Image resized to ${newSizeBytes} bytes`)
  }

  async convertToTemplate(spec: VmSpec, ctx: TaskContext): Promise<Record<string, string>> {
    const map: Record<string, string> = {}
    for (const d of spec.disks) {
      if (d.cloudinit || d.media === 'cdrom') continue
      const p = this.#parse(spec.node, d.volid)
      const m = /^(.*\/)vm-(\d+)-disk-(\d+\.(?:qcow2|raw))$/.exec(p.path)
      if (!m || !/^[^:]+:\d+\//.test(d.volid)) continue
      const newPath = `${m[1]}base-${m[2]}-disk-${m[3]}`
      await rename(p.path, newPath)
      this.#infoCache.delete(p.path)
      const nv = `${p.storage.id}:${m[2]}/base-${m[2]}-disk-${m[3]}`
      map[d.volid] = nv
      ctx.log(`renamed ${basename(p.path)} to ${basename(newPath)}`)
    }
    return map
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
      const p = this.#parse(spec.node, d.volid)
      if (!existsSync(p.path)) throw new BackendError(`start failed: volume '${d.volid}' does not exist`)
      const fmt = p.content === 'images' ? ((await this.#imgInfo(p.path)).format as 'qcow2' | 'raw') : 'raw'
      const ide = /^ide(\d)$/.exec(d.key)
      if (d.media === 'cdrom' || ide) {
        if (!ide) {
          ctx.log(`warning: ${d.key}: CD-ROMs are attached on IDE only in the lab; skipped`)
          continue
        }
        disks.push({file: p.path, format: fmt, bus: 'ide', ideIndex: Number(ide[1]), media: d.media, id: d.key, readonly: d.media === 'cdrom'})
        continue
      }
      // scsi/sata disks are presented as virtio-blk (the lab has one disk controller model)
      disks.push({file: p.path, format: fmt, bus: 'virtio', id: d.key, serial: d.serial, ...(d.key === boot ? {bootIndex: 100} : {})})
    }
    if (!disks.some((d) => d.bootIndex !== undefined)) {
      const first = disks.find((d) => d.bus === 'virtio')
      if (first) first.bootIndex = 100
    }
    const net = QemuBackend.networkFor(spec)
    if (spec.nics.length > 1) ctx.log(`warning: only net0 is connected in the lab (${spec.nics.length} NICs configured)`)
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
        uuid,
        guestAgent: true,
      })
    } catch (error) {
      throw new BackendError(`start failed: ${(error as Error).message}`)
    }
    this.#vms.set(`${spec.node}/${spec.vmid}`, {vm, spec, net})
    ctx.log(`VM ${spec.vmid} started (pid ${vm.pid})`)
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
    const p = this.#parse(spec.node, disk.volid)
    if (!existsSync(p.path)) throw new BackendError(`volume '${disk.volid}' does not exist`)
    const format = p.content === 'images' ? (await this.#imgInfo(p.path)).format : 'raw'
    if (disk.serial !== undefined && !/^[A-Za-z0-9_.-]{1,20}$/.test(disk.serial)) throw new BackendError(`${disk.key}: disk serial "${disk.serial}" must be 1–20 characters [A-Za-z0-9_.-]`)
    const node = `drive-${disk.key}`
    const q = await r.vm.qmp()
    try {
      // the same block settings as a disk given at start (src/qemu/vm.ts): writeback cache, discard unmap
      await q.execute('blockdev-add', {'node-name': node, driver: format, discard: 'unmap', cache: {direct: false, 'no-flush': false}, file: {driver: 'file', filename: p.path, discard: 'unmap'}}, 30_000)
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
    this.#infoCache.delete(p.path)
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
    return {
      endpoints,
      note: n
        ? `QEMU user-mode network ${n.net}: guest ${n.guestAddress}, gateway ${n.host}; only the listed ports reach the guest, on loopback`
        : 'no network interface',
    }
  }

  async destroyVm(node: string, vmid: number, volids: string[], ctx: TaskContext): Promise<void> {
    const r = this.#vms.get(`${node}/${vmid}`)
    if (r) {
      await r.vm.stop()
      this.#vms.delete(`${node}/${vmid}`)
    }
    for (const volid of volids) {
      try {
        const p = this.#parse(node, volid)
        if (existsSync(p.path)) {
          await rm(p.path, {force: true})
          ctx.log(`Removing image: 100% complete...done.`)
        }
        this.#infoCache.delete(p.path)
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
      .map((d) => ({key: d.key, volid: d.volid, path: this.#parse(spec.node, d.volid).path, attached: !d.firmware}))
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
      this.#infoCache.delete(d.path)
    }
  }

  async snapshotRollback(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    if (this.#running(spec.node, spec.vmid)) throw new BackendError(`VM ${spec.vmid} is running - rollback needs it stopped`)
    for (const d of this.#snapDisks(spec)) {
      const info = await this.#imgInfo(d.path)
      if (!(info.snapshots ?? []).some((s) => s.name === name)) throw new BackendError(`snapshot '${name}' does not exist on '${d.volid}'`)
    }
    for (const d of this.#snapDisks(spec)) {
      ctx.log(`rollback '${d.key}' to '${name}'`)
      await run('qemu-img', ['snapshot', '-a', name, d.path], {timeoutMs: 120_000})
      this.#infoCache.delete(d.path)
    }
  }

  async snapshotDelete(spec: VmSpec, name: string, ctx: TaskContext): Promise<void> {
    const r = this.#running(spec.node, spec.vmid)
    for (const d of this.#snapDisks(spec)) {
      const info = await this.#imgInfo(d.path)
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
      this.#infoCache.delete(d.path)
    }
  }

  // ---- guest agent: the real qemu-guest-agent -------------------------------------------------

  #qga(node: string, vmid: number): QgaClient {
    const r = this.#running(node, vmid)
    if (!r) throw new BackendError(`VM ${vmid} is not running`)
    return r.vm.qga()
  }

  /** Maps guest-agent failures to the texts PVE answers with. */
  async #agent<T>(node: string, vmid: number, command: string, f: (q: QgaClient) => Promise<T>): Promise<T> {
    const q = this.#qga(node, vmid)
    try {
      return await f(q)
    } catch (error) {
      if (error instanceof QgaError) {
        if (error.reason === 'unavailable') throw new BackendError('QEMU guest agent is not running')
        if (error.reason === 'timeout') throw new BackendError(`VM ${vmid} qmp command '${command}' failed - got timeout`)
        throw new BackendError(`Agent error: ${error.message.replace(/^guest agent command '[^']+' failed: /, '')}`)
      }
      throw error
    }
  }

  readonly agent: GuestAgent = {
    ping: (node, vmid, timeoutMs) => this.#agent(node, vmid, 'guest-ping', (q) => q.ping(timeoutMs)),
    networkGetInterfaces: (node, vmid, timeoutMs) =>
      this.#agent(node, vmid, 'guest-network-get-interfaces', (q) => q.networkGetInterfaces(timeoutMs)) as Promise<AgentNetworkInterface[]>,
    getFsinfo: (node, vmid, timeoutMs) => this.#agent(node, vmid, 'guest-get-fsinfo', (q) => q.getFsinfo(timeoutMs)) as Promise<AgentFsInfo[]>,
    exec: (node, vmid, command, inputData, timeoutMs) => {
      if (command.length === 0) return Promise.reject(new BackendError("parameter verification failed: 'command' is empty"))
      return this.#agent(node, vmid, 'guest-exec', (q) => q.exec(command[0], command.slice(1), {input: inputData, timeoutMs}))
    },
    execStatus: (node, vmid, pid, timeoutMs) =>
      this.#agent(node, vmid, 'guest-exec-status', async (q): Promise<AgentExecStatus> => {
        const r = await q.execStatusRaw(pid, timeoutMs)
        const out: AgentExecStatus = {exited: r.exited}
        if (r.exitcode !== undefined) out.exitcode = r.exitcode
        if (r.signal !== undefined) out.signal = r.signal
        if (r['out-data'] !== undefined) out['out-data'] = Buffer.from(r['out-data'], 'base64').toString('utf8')
        if (r['err-data'] !== undefined) out['err-data'] = Buffer.from(r['err-data'], 'base64').toString('utf8')
        if (r['out-truncated']) out['out-truncated'] = true
        if (r['err-truncated']) out['err-truncated'] = true
        return out
      }),
    fileWrite: (node, vmid, file, content, timeoutMs) => this.#agent(node, vmid, 'guest-file-write', (q) => q.fileWrite(file, content, timeoutMs)),
    fileRead: (node, vmid, file, timeoutMs, range = {}) => this.#agent(node, vmid, 'guest-file-read', (q) => readGuestFile(q, file, range.offset ?? 0, Math.min(range.count ?? MAX_READ, MAX_READ), timeoutMs)),
    info: (node, vmid, timeoutMs) => this.#agent(node, vmid, 'guest-info', (q) => q.execute<AgentInfo>('guest-info', undefined, timeoutMs)),
    getOsinfo: (node, vmid, timeoutMs) => this.#agent(node, vmid, 'guest-get-osinfo', (q) => q.execute<AgentOsInfo>('guest-get-osinfo', undefined, timeoutMs)),
    getHostName: (node, vmid, timeoutMs) => this.#agent(node, vmid, 'guest-get-host-name', (q) => q.execute<{'host-name': string}>('guest-get-host-name', undefined, timeoutMs)),
  }

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

/** PVE's file-read limit. */
const MAX_READ = 16 * 1024 * 1024

/**
 * qemu-server's file-read: open, seek to `offset`, read up to `count` bytes in 1 MiB chunks,
 * close; `truncated` when the end of the file was not reached.
 */
async function readGuestFile(q: QgaClient, file: string, offset: number, count: number, timeoutMs: number): Promise<{content: Buffer; truncated: boolean}> {
  const handle = await q.execute<number>('guest-file-open', {path: file, mode: 'r'}, timeoutMs)
  const parts: Buffer[] = []
  let read = 0
  let eof = false
  try {
    if (offset > 0) await q.execute('guest-file-seek', {handle, offset, whence: 'set'}, timeoutMs)
    while (read < count && !eof) {
      const r = await q.execute<{count: number; 'buf-b64': string; eof: boolean}>('guest-file-read', {handle, count: Math.min(count - read, 1024 * 1024)}, timeoutMs)
      const b = Buffer.from(r['buf-b64'] ?? '', 'base64')
      parts.push(b)
      read += b.length
      eof = r.eof || b.length === 0
    }
  } finally {
    await q.execute('guest-file-close', {handle}, timeoutMs).catch(() => undefined)
  }
  return {content: Buffer.concat(parts), truncated: !eof}
}

export default QemuBackend
