import {existsSync, readdirSync} from 'node:fs'
import {copyFile, mkdir, readdir, rename, rm, stat} from 'node:fs/promises'
import {basename, dirname, join, relative} from 'node:path'

import {run} from '../exec.js'
import {BackendError, type DiskAllocation, type StorageContent, type StorageDef, type TaskContext, type VmSpec, type VolumeInfo} from './backend.js'

/**
 * The qemu backend's storages (src/lab/qemu-backend.ts): Proxmox VE's directory storage layout,
 * under each storage's path:
 *   images/<vmid>/vm-<vmid>-disk-<n>.<fmt>   disks (volid `<storage>:<vmid>/vm-…`)
 *   images/<vmid>/base-<vmid>-disk-<n>.<fmt> template disks
 *   images/<vmid>/vm-<vmid>-cloudinit.qcow2  the NoCloud seed (an ISO 9660 image, stored as qcow2)
 *   import/, template/iso/, snippets/, dump/ staged files (volid `<storage>:<content>/<file>`)
 * A linked clone's volid is `<storage>:base-<b>-disk-<n>.qcow2/<vmid>/vm-<vmid>-disk-<m>.qcow2`,
 * its file a qcow2 whose backing file is `../<b>/base-<b>-disk-<n>.qcow2`, as PVE makes them.
 * Volumes of stopped VMs only: what touches a running VM (resize, snapshots) stays in the backend.
 */

const CONTENT_DIRS: Record<Exclude<StorageContent, 'images' | 'rootdir'>, string> = {
  import: 'import',
  iso: join('template', 'iso'),
  vztmpl: join('template', 'cache'),
  snippets: 'snippets',
  backup: 'dump',
}

export interface ParsedVolid {
  storage: StorageDef
  /** Content type. */
  content: StorageContent
  /** Absolute file path. */
  path: string
  /** Owner VMID for images. */
  vmid?: number
  volid: string
}

export interface ImgInfo {
  'virtual-size': number
  'actual-size'?: number
  format: string
  'backing-filename'?: string
  snapshots?: {name: string}[]
}

export class QemuStorages {
  readonly #storages: StorageDef[]
  /** absolute path → {mtimeMs, info} */
  readonly #infoCache = new Map<string, {mtimeMs: number; size: number; info: ImgInfo}>()

  constructor(storages: StorageDef[]) {
    this.#storages = storages
  }

  /** Forgets what qemu-img said about a file (it changed). */
  forget(path: string): void {
    this.#infoCache.delete(path)
  }

  storage(id: string): StorageDef {
    const s = this.#storages.find((x) => x.id === id)
    if (!s) throw new BackendError(`storage '${id}' does not exist`)
    return s
  }

  parse(node: string, volid: string): ParsedVolid {
    const i = volid.indexOf(':')
    if (i < 0) throw new BackendError(`unable to parse volume ID '${volid}'`)
    const storage = this.storage(volid.slice(0, i))
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

  async imgInfo(path: string): Promise<ImgInfo> {
    const st = await stat(path)
    const c = this.#infoCache.get(path)
    if (c && c.mtimeMs === st.mtimeMs && c.size === st.size) return c.info
    const r = await run('qemu-img', ['info', '--output=json', '-U', path], {timeoutMs: 20_000})
    const info = JSON.parse(r.stdout) as ImgInfo
    this.#infoCache.set(path, {mtimeMs: st.mtimeMs, size: st.size, info})
    return info
  }

  async volumeFromPath(p: ParsedVolid): Promise<VolumeInfo | undefined> {
    let st
    try {
      st = await stat(p.path)
    } catch {
      return undefined
    }
    const ctime = Math.floor(st.ctimeMs / 1000)
    if (p.content === 'images') {
      const info = await this.imgInfo(p.path)
      return {volid: p.volid, content: 'images', format: info.format, size: info['virtual-size'], used: info['actual-size'] ?? st.blocks * 512, vmid: p.vmid, ctime}
    }
    const ext = /\.([a-z0-9]+)$/i.exec(p.path)?.[1]?.toLowerCase()
    let format = ext === 'img' ? 'raw' : ext ?? 'raw'
    if (p.content === 'import' && (ext === 'qcow2' || ext === 'raw' || ext === 'img' || ext === 'vmdk')) format = ext === 'img' ? 'raw' : ext
    return {volid: p.volid, content: p.content, format, size: st.size, used: st.blocks * 512, ctime}
  }

  async listVolumes(node: string, storage: string, content?: StorageContent): Promise<VolumeInfo[]> {
    const s = this.storage(storage)
    const root = s.path(node)
    const out: VolumeInfo[] = []
    const wants = (c: StorageContent) => (!content || content === c) && s.content.includes(c)
    if (wants('images') || (content === 'rootdir' && s.content.includes('rootdir'))) {
      const imgRoot = join(root, 'images')
      for (const vmidDir of existsSync(imgRoot) ? await readdir(imgRoot) : []) {
        if (!/^\d+$/.test(vmidDir)) continue
        for (const f of await readdir(join(imgRoot, vmidDir))) {
          if (!/^(vm|base)-\d+-(disk-\d+|cloudinit)\.(qcow2|raw)$/.test(f)) continue
          const volid = await this.volidOfImage(storage, join(imgRoot, vmidDir, f), vmidDir, f)
          const v = await this.volumeFromPath({storage: s, content: 'images', path: join(imgRoot, vmidDir, f), vmid: Number(vmidDir), volid}).catch(() => undefined)
          if (v) out.push(v)
        }
      }
    }
    for (const [c, sub] of Object.entries(CONTENT_DIRS) as [keyof typeof CONTENT_DIRS, string][]) {
      if (!wants(c)) continue
      const d = join(root, sub)
      for (const f of existsSync(d) ? await readdir(d) : []) {
        if (f.startsWith('.')) continue
        const v = await this.volumeFromPath({storage: s, content: c, path: join(d, f), volid: `${storage}:${c}/${f}`})
        if (v) out.push(v)
      }
    }
    return out.sort((a, b) => a.volid.localeCompare(b.volid))
  }

  /** The volid of an image file: a linked clone's names its base. */
  async volidOfImage(storage: string, path: string, vmid: string, file: string): Promise<string> {
    if (file.startsWith('vm-') && file.endsWith('.qcow2') && !file.includes('cloudinit')) {
      const info = await this.imgInfo(path).catch(() => undefined)
      const b = info?.['backing-filename']
      const m = b ? /^\.\.\/(\d+)\/(base-\1-disk-\d+\.qcow2)$/.exec(b) : null
      if (m) return `${storage}:${m[2]}/${vmid}/${file}`
    }
    return `${storage}:${vmid}/${file}`
  }

  async storageUsage(node: string, storage: string): Promise<{used: number}> {
    const root = this.storage(storage).path(node)
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
    const p = this.parse(node, `${storage}:${content}/${filename}`)
    await mkdir(dirname(p.path), {recursive: true})
    try {
      await rename(srcPath, p.path)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error
      await copyFile(srcPath, p.path)
      await rm(srcPath, {force: true})
    }
    const v = await this.volumeFromPath(p)
    if (!v) throw new BackendError(`import of '${filename}' failed`)
    ctx.log(`target file: ${p.path}`)
    ctx.log(`file size is: ${v.size}`)
    return v
  }

  async deleteVolume(node: string, volid: string, ctx?: TaskContext): Promise<void> {
    const p = this.parse(node, volid)
    if (!existsSync(p.path)) throw new BackendError(`volume '${volid}' does not exist`)
    await rm(p.path, {force: true})
    this.#infoCache.delete(p.path)
    ctx?.log(`removed volume '${volid}'`)
  }

  async volumeInfo(node: string, volid: string): Promise<VolumeInfo | undefined> {
    let p: ParsedVolid
    try {
      p = this.parse(node, volid)
    } catch {
      return undefined
    }
    return this.volumeFromPath(p)
  }

  /** Lowest free `vm-<vmid>-disk-<n>.<fmt>` on `storage` (base- names count as taken). */
  newDisk(node: string, storage: string, vmid: number, fmt: string): ParsedVolid {
    const s = this.storage(storage)
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
    const target = this.newDisk(node, alloc.storage, vmid, alloc.format)
    await mkdir(dirname(target.path), {recursive: true})
    if (alloc.importFrom) {
      const src = this.parse(node, alloc.importFrom)
      if (!existsSync(src.path)) throw new BackendError(`unable to find volume '${alloc.importFrom}'`)
      const info = await this.imgInfo(src.path)
      if (info['backing-filename']) throw new BackendError('refusing to import image with backing file')
      ctx.log(`importing disk '${alloc.importFrom}' to VM ${vmid} ...`)
      ctx.log(`transferring ${info['virtual-size']} bytes (${info.format} → ${alloc.format})`)
      await this.convert(src.path, info.format, target.path, alloc.format, ctx)
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
    const v = await this.volumeFromPath(target)
    if (!v) throw new BackendError(`allocation of '${target.volid}' failed`)
    return v
  }

  async convert(src: string, srcFmt: string, dst: string, dstFmt: string, ctx: TaskContext, snapshot?: string): Promise<void> {
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
    const s = this.storage(storage)
    const file = `vm-${vmid}-cloudinit.qcow2`
    const p: ParsedVolid = {storage: s, content: 'images', path: join(s.path(node), 'images', String(vmid), file), vmid, volid: `${storage}:${vmid}/${file}`}
    await mkdir(dirname(p.path), {recursive: true})
    if (!existsSync(p.path)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', p.path, String(4 * 1024 * 1024)], {timeoutMs: 30_000})
    ctx?.log(`Formatting '${p.path}', fmt=qcow2 size=4194304`)
    const v = await this.volumeFromPath(p)
    if (!v) throw new BackendError(`allocation of '${p.volid}' failed`)
    return v
  }

  async copyDisk(node: string, srcVolid: string, newVmid: number, targetStorage: string, format: 'qcow2' | 'raw', ctx: TaskContext, snapname?: string): Promise<VolumeInfo> {
    const src = this.parse(node, srcVolid)
    if (!existsSync(src.path)) throw new BackendError(`volume '${srcVolid}' does not exist`)
    const info = await this.imgInfo(src.path)
    if (snapname && !(info.snapshots ?? []).some((s) => s.name === snapname)) throw new BackendError(`snapshot '${snapname}' does not exist on '${srcVolid}'`)
    const target = this.newDisk(node, targetStorage, newVmid, format)
    await mkdir(dirname(target.path), {recursive: true})
    ctx.log(`create full clone of drive (${srcVolid})`)
    await this.convert(src.path, info.format, target.path, format, ctx, snapname)
    ctx.log(`transferred ${info['virtual-size']} bytes: 100.00%`)
    const v = await this.volumeFromPath(target)
    if (!v) throw new BackendError(`copy to '${target.volid}' failed`)
    return v
  }

  async linkDisk(node: string, baseVolid: string, newVmid: number, ctx: TaskContext): Promise<VolumeInfo> {
    const base = this.parse(node, baseVolid)
    const bm = /\/images\/(\d+)\/(base-\1-disk-\d+\.qcow2)$/.exec(base.path)
    if (!bm || !existsSync(base.path)) throw new BackendError(`volume '${baseVolid}' does not exist or is not a base image`)
    const t = this.newDisk(node, base.storage.id, newVmid, 'qcow2')
    await mkdir(dirname(t.path), {recursive: true})
    const backing = relative(dirname(t.path), base.path)
    ctx.log(`create linked clone of drive (${baseVolid})`)
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, t.path], {cwd: dirname(t.path), timeoutMs: 60_000})
    const volid = `${base.storage.id}:${bm[2]}/${newVmid}/${basename(t.path)}`
    const v = await this.volumeFromPath({...t, volid})
    if (!v) throw new BackendError(`linked clone '${volid}' failed`)
    return v
  }

  async convertToTemplate(spec: VmSpec, ctx: TaskContext): Promise<Record<string, string>> {
    const map: Record<string, string> = {}
    for (const d of spec.disks) {
      if (d.cloudinit || d.media === 'cdrom') continue
      const p = this.parse(spec.node, d.volid)
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
}
