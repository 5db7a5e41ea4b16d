/**
 * Staging: getting the verified image onto a node's import storage once, however many
 * establishments on that node are deployed at the same time (one promise per hypervisor/node).
 */
import {ErrorCode, UsageError, UserError} from '../errors.js'
import type {Io} from '../io.js'
import type {Hypervisor} from '../inventory/types.js'
import type {PveApi} from '../proxmox/types.js'
import {importVolid, type DeployImage} from './images.js'

export interface StageOptions {
  io: Io
  /** Pull from this URL (`download-url` with checksum) instead of uploading; `{file}` is replaced by the image file name. */
  imageUrl?: string
  /** Upload rate cap, KiB/s (uploads only: a node's download-url follows its datacenter's `bwlimit: download=`). */
  bwlimitKiB?: number
  /** Progress of one staging (bytes sent). */
  onProgress?: (key: string, text: string) => void
}

export type StageOutcome = 'already-there' | 'uploaded' | 'downloaded'

export class Stager {
  private readonly inflight = new Map<string, Promise<StageOutcome>>()
  constructor(private readonly opts: StageOptions) {
    if (opts.imageUrl && opts.bwlimitKiB) {
      throw new UsageError('--bwlimit limits uploads from this machine; with --image-url each node downloads the image itself', {
        suggestions: ["Drop --bwlimit, and cap the nodes' downloads in Proxmox VE instead (Datacenter → Options → Bandwidth limits: `bwlimit: download=KiB/s` in datacenter.cfg).", 'Or drop --image-url to upload from here with --bwlimit.'],
      })
    }
  }

  /**
   * Make sure `image` is on `node`'s import storage. Concurrent callers for the same node and image
   * share one staging; a failed staging is not cached (the next caller tries again).
   */
  stage(api: PveApi, hv: Hypervisor, node: string, image: DeployImage): Promise<StageOutcome> {
    const key = `${hv.name}/${node}/${image.file}`
    let p = this.inflight.get(key)
    if (!p) {
      p = this.doStage(api, hv, node, image, key)
      this.inflight.set(key, p)
      p.catch(() => this.inflight.delete(key))
    }
    return p
  }

  private async doStage(api: PveApi, hv: Hypervisor, node: string, image: DeployImage, key: string): Promise<StageOutcome> {
    const storage = hv.storage.import
    const volid = importVolid(hv, image)
    const existing = (await api.storageContent(node, storage, 'import')).find((c) => c.volid === volid)
    if (existing && existing.size === image.size) {
      this.opts.io.debug(`stage: ${volid} already on ${hv.name}/${node}`, {size: existing.size})
      return 'already-there'
    }
    if (existing) this.opts.io.warn(`stage: ${volid} on ${hv.name}/${node} has ${existing.size} bytes, expected ${image.size}: replacing it`)
    if (this.opts.imageUrl) {
      const url = this.opts.imageUrl.replace('{file}', encodeURIComponent(image.file))
      await api.downloadUrl(node, storage, {url, filename: image.file, content: 'import', sha256: image.sha256}, {timeoutMs: 6 * 3600_000})
      await this.check(api, hv, node, image)
      return 'downloaded'
    }
    let last = 0
    await api.uploadFile(
      node,
      storage,
      image.path,
      {
        filename: image.file,
        content: 'import',
        sha256: image.sha256,
        bwlimitKiB: this.opts.bwlimitKiB,
        onProgress: (sent, total) => {
          const pct = Math.floor((sent / Math.max(total, 1)) * 100)
          if (pct >= last + 5 || sent === total) {
            last = pct
            this.opts.onProgress?.(key, `uploading ${image.file}: ${pct}%`)
          }
        },
      },
      {timeoutMs: 6 * 3600_000},
    )
    await this.check(api, hv, node, image)
    return 'uploaded'
  }

  /** PVE verified the checksum on arrival; check the stored file's size too before anyone imports it. */
  private async check(api: PveApi, hv: Hypervisor, node: string, image: DeployImage): Promise<void> {
    const volid = importVolid(hv, image)
    const got = (await api.storageContent(node, hv.storage.import, 'import')).find((c) => c.volid === volid)
    if (!got || got.size !== image.size) {
      throw new UserError(ErrorCode.IMAGE_INVALID, `after staging, ${volid} on ${node} ${got ? `has ${got.size} bytes, expected ${image.size}` : 'is missing'}`, {
        where: {hypervisor: hv.name, node},
        suggestions: ['Check free space on the import storage, then run deploy again.'],
      })
    }
  }
}
