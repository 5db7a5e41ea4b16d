import {createReadStream} from 'node:fs'
import {stat} from 'node:fs/promises'
import {createServer, type IncomingMessage, type Server, type ServerResponse} from 'node:http'
import type {AddressInfo} from 'node:net'
import {resolve, sep} from 'node:path'

/**
 * The lab's stand-in for the Région's static web server: serves one directory (a chunk store
 * written by `pgi image publish`) read-only over plain HTTP on 127.0.0.1, for lab guests that
 * reach it through the link simulator (src/lab/link-sim.ts). Production uses the Région's own
 * server (nginx, an object store, a CDN: docs/delivery.md); pgi runs no server there.
 *
 * What casync's HTTP helper and a resuming client need, and nothing more: GET and HEAD of regular
 * files, one byte range (`Range: bytes=a-b`, `a-`, `-n` → 206, or 416), Content-Length,
 * Last-Modified; no directory listings, no path outside the directory (a `..` or an encoded one
 * is refused), nothing written. Written here (≈ 80 lines of node:http) because no static-file
 * package is among the project's dependencies and the lab must not pull one in for a test server.
 */
export interface StaticStore {
  /** host:port on loopback. */
  host: string
  port: number
  /** Requests answered, by status (tests and `link-sim.json`). */
  requests: Record<string, number>
  close(): Promise<void>
}

export async function serveDirectory(dir: string): Promise<StaticStore> {
  const root = resolve(dir)
  const requests: Record<string, number> = {}
  const answer = (res: ServerResponse, status: number, headers: Record<string, string | number> = {}, body?: string) => {
    requests[status] = (requests[status] ?? 0) + 1
    res.writeHead(status, {'Content-Length': body ? Buffer.byteLength(body) : 0, ...headers})
    res.end(body)
  }
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return answer(res, 405, {Allow: 'GET, HEAD'}, 'method not allowed\n')
    let path: string
    try {
      path = decodeURIComponent(new URL(req.url ?? '/', 'http://store').pathname)
    } catch {
      return answer(res, 400, {}, 'bad path\n')
    }
    const file = resolve(root, `.${path}`)
    if (path.includes('\0') || path.split('/').includes('..') || (file !== root && !file.startsWith(root + sep))) return answer(res, 403, {}, 'forbidden\n')
    const st = await stat(file).catch(() => undefined)
    if (!st?.isFile()) return answer(res, 404, {}, 'not found\n')
    const common = {'Content-Type': 'application/octet-stream', 'Accept-Ranges': 'bytes', 'Last-Modified': st.mtime.toUTCString()}
    let start = 0
    let end = st.size - 1
    let status = 200
    const range = req.headers.range
    if (range !== undefined) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim())
      if (!m || (m[1] === '' && m[2] === '')) return answer(res, 416, {'Content-Range': `bytes */${st.size}`})
      if (m[1] === '') start = Math.max(0, st.size - Number(m[2]))
      else {
        start = Number(m[1])
        if (m[2] !== '') end = Math.min(end, Number(m[2]))
      }
      if (start >= st.size || start > end) return answer(res, 416, {'Content-Range': `bytes */${st.size}`})
      status = 206
    }
    const length = st.size === 0 ? 0 : end - start + 1
    requests[status] = (requests[status] ?? 0) + 1
    res.writeHead(status, {...common, 'Content-Length': length, ...(status === 206 ? {'Content-Range': `bytes ${start}-${end}/${st.size}`} : {})})
    if (req.method === 'HEAD' || length === 0) return res.end()
    const stream = createReadStream(file, {start, end})
    stream.on('error', () => res.destroy())
    stream.pipe(res)
  }
  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy())
  })
  await new Promise<void>((ok, fail) => {
    server.once('error', fail)
    server.listen(0, '127.0.0.1', () => ok())
  })
  const a = server.address() as AddressInfo
  return {
    host: '127.0.0.1',
    port: a.port,
    requests,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok())
        server.closeAllConnections()
      }),
  }
}
