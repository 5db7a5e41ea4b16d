import {randomBytes} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {stat} from 'node:fs/promises'

import {ErrorCode, UserError} from '../errors.js'
import {sleep} from '../sleep.js'
import {PveApiError} from './errors.js'
import {NetworkError, type HttpAnswer} from './tls.js'
import type {PveStorageContent, WaitOptions} from './types.js'
import {tryParseUpid} from './upid.js'
import {seg, safeJson} from './encoding.js'
import {PveAgentCalls} from './agent.js'

/** Proxmox VE storages: content, status, downloads by URL and the streamed multipart upload with progress. */
export class PveStorage extends PveAgentCalls {
  // ---------------------------------------------------------------------------------------------
  // storage

  async storageContent(node: string, storage: string, content?: string): Promise<PveStorageContent[]> {
    return (await this.get<PveStorageContent[]>(`/nodes/${seg(node)}/storage/${seg(storage)}/content`, {content}, this.where(node))) ?? []
  }

  async storageStatus(node: string, storage: string): Promise<{total: number; used: number; avail: number; content: string; type: string}> {
    return this.get(`/nodes/${seg(node)}/storage/${seg(storage)}/status`, undefined, this.where(node))
  }

  async downloadUrl(node: string, storage: string, opts: {url: string; filename: string; content: 'import' | 'iso' | 'vztmpl'; sha256: string}, wait?: WaitOptions): Promise<void> {
    const volid = `${storage}:${opts.content}/${opts.filename}`
    await this.runTask('POST', node, `/nodes/${seg(node)}/storage/${seg(storage)}/download-url`, {url: opts.url, filename: opts.filename, content: opts.content, checksum: opts.sha256, 'checksum-algorithm': 'sha256', 'verify-certificates': true}, {
      where: this.where(node),
      type: 'download',
      taskId: undefined,
      wait,
      state: async () => (await this.storageContent(node, storage, opts.content)).some((c) => c.volid === volid),
    })
  }

  /**
   * Multipart upload of a local file to `POST /nodes/{node}/storage/{storage}/upload`, sent by
   * hand: API requests are form-encoded (exchange). Hand-written multipart (rather
   * than FormData) so that the body is streamed from disk with an exact Content-Length
   * (pveproxy does not take chunked uploads) and progress can be reported.
   */
  async uploadFile(
    node: string,
    storage: string,
    file: string,
    opts: {filename: string; content: 'import' | 'iso' | 'vztmpl'; sha256?: string; onProgress?: (sent: number, total: number) => void; bwlimitKiB?: number},
    wait?: WaitOptions,
  ): Promise<void> {
    const where = this.where(node)
    const limit = opts.bwlimitKiB && opts.bwlimitKiB > 0 ? opts.bwlimitKiB * 1024 : undefined
    if (!/^[\w.+-]+$/.test(opts.filename)) throw new UserError(ErrorCode.USAGE, `upload file name "${opts.filename}" may only hold letters, digits, . _ + -`, {where})
    const total = (await stat(file)).size
    const boundary = `----pgi${randomBytes(16).toString('hex')}`
    const field = (name: string, value: string): string => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`
    let head = field('content', opts.content)
    if (opts.sha256) head += field('checksum-algorithm', 'sha256') + field('checksum', opts.sha256.toLowerCase())
    head += `--${boundary}\r\nContent-Disposition: form-data; name="filename"; filename="${opts.filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`
    const tail = `\r\n--${boundary}--\r\n`
    const headB = Buffer.from(head, 'utf8')
    const tailB = Buffer.from(tail, 'utf8')
    const length = headB.length + total + tailB.length
    const path = `/nodes/${seg(node)}/storage/${seg(storage)}/upload`
    const url = new URL(`/api2/json${path}`, this.baseUrl)
    const volid = `${storage}:${opts.content}/${opts.filename}`
    const sentAt = this.now()

    async function* body(): AsyncGenerator<Uint8Array> {
      yield headB
      let sent = 0
      opts.onProgress?.(0, total)
      const started = performance.now()
      // with a bandwidth limit: small chunks (about 1/8 s of the allowed rate), each sent no earlier
      // than the limit allows since the start (a school link shared with classes is not flooded)
      const chunkSize = limit ? Math.max(16 << 10, Math.min(1 << 20, Math.floor(limit / 8))) : 1 << 20
      for await (const chunk of createReadStream(file, {highWaterMark: chunkSize})) {
        if (limit) {
          const due = started + (sent / limit) * 1000
          const wait = due - performance.now()
          if (wait > 1) await sleep(wait)
        }
        sent += (chunk as Buffer).length
        yield chunk as Buffer
        opts.onProgress?.(sent, total)
      }
      yield tailB
    }

    // What the node holds after an upload whose answer was lost or a server fault: the copy task
    // it started, else the volume itself (complete when its size is the file's).
    const reconcile = async (): Promise<'applied' | 'not-applied'> => {
      const upid = await this.findStartedTask(node, 'imgcopy', undefined, sentAt)
      if (upid) {
        await this.waitTask(node, upid, wait)
        return 'applied'
      }
      const have = (await this.storageContent(node, storage, opts.content)).find((c) => c.volid === volid)
      return have && have.size === total ? 'applied' : 'not-applied'
    }
    for (let attempt = 0; ; attempt++) {
      this.checkDown(where)
      let res: HttpAnswer
      try {
        res = await this.baseFetch(url, {
          method: 'POST',
          headers: {
            Authorization: `PVEAPIToken=${this.tokenId}=${this.tokenSecret.reveal()}`,
            'Content-Type': `multipart/form-data; boundary=${boundary}`,
            'Content-Length': String(length),
            Accept: 'application/json',
          },
          body: body(),
          duplex: 'half',
        })
      } catch (err) {
        const e = this.toTyped(err, {wantBody: false, timeoutMs: this.writeTimeoutMs}, 'POST', path, where)
        if (e instanceof NetworkError && !e.notSent) {
          // The file may have arrived: look for the copy task, then for the volume.
          this.io.warn(`upload of ${opts.filename}: connection lost; checking whether the hypervisor received it`, where)
          if ((await reconcile()) === 'applied') return
        }
        if (e.code === ErrorCode.TLS_MISMATCH || (e instanceof NetworkError && e.notSent)) this.trip(e)
        throw e
      }
      this.answers++
      const text = await res.text()
      if (res.status !== 200) {
        const e = this.toTyped(new Error(`HTTP ${res.status}`), {wantBody: true, timeoutMs: this.writeTimeoutMs, res: {status: res.status, statusText: res.statusText, bodyText: text}}, 'POST', path, where)
        if (e instanceof PveApiError && e.isServerFault && attempt < this.retry.serverRetries) {
          // a server fault: sent again only once the node shows it did not take this one
          await this.pause(this.backoff(attempt))
          if ((await reconcile()) === 'applied') return
          this.io.warn(`upload of ${opts.filename}: ${e.status} ${e.pveMessage}; the node does not have it: sending it again`, where)
          continue
        }
        if (e.code === ErrorCode.PVE_AUTH) this.trip(e)
        throw e instanceof PveApiError && attempt > 0 ? e.withAttempts(attempt + 1) : e
      }
      const upid = (safeJson(text) as {data?: unknown})?.data
      if (typeof upid === 'string' && tryParseUpid(upid)) await this.waitTask(node, upid, wait)
      return
    }
  }
}
