import {createHash, randomBytes} from 'node:crypto'
import {appendFileSync, createWriteStream} from 'node:fs'
import {mkdir, rm} from 'node:fs/promises'
import {createServer, type Server} from 'node:https'
import type {IncomingMessage, ServerResponse} from 'node:http'
import type {AddressInfo, Socket} from 'node:net'
import {join} from 'node:path'

import Busboy from 'busboy'

import {cjsExports} from '../interop.js'
import {AuthError, PermissionError, type Principal} from './access.js'
import {HttpError, LabApi, type Ctx, type Handler} from './api.js'
import {BackendError} from './backend.js'
import {LAB_ROUTES, type RouteDef} from './params.js'
import {labHandlers} from './routes/index.js'
import {ParamError, validateParams, type RawParams} from './validate.js'
import {sleep} from '../sleep.js'

/**
 * The lab's HTTPS front: one listener per lab node (127.0.0.1 only, its own certificate), PVE's
 * URL layout (`/api2/json/…`), envelopes (`{"data": …}`), errors (400 with `errors`, 401 after a
 * delay, 403 permission texts, 500 with the message as reason phrase), authentication (API token
 * header, or ticket cookie + CSRF header on writes), fault injection and a JSONL request log.
 */

/** Parameters whose VALUES never reach the request log (only their names do). */
export const SECRET_PARAMS = new Set(['password', 'cipassword', 'content', 'input-data', 'sshkeys', 'new-format'])

export interface RequestLogEntry {
  time: string
  node: string
  method: string
  path: string
  /** Parameter names (never values). */
  params: string[]
  status: number
  ms: number
  user?: string
}

export interface ServerOptions {
  api: LabApi
  /** node name → PEM key + cert. */
  certs: Record<string, {key: string; cert: string}>
  /** Fixed ports per node (0 or absent = any free port). */
  ports?: Record<string, number>
  /** Delay before answering 401 (PVE: 3000 ms). */
  authFailDelayMs?: number
  /** JSONL request log file (append). */
  requestLog?: string
  /** Where uploads are spooled (inside the lab dir). */
  tmpDir: string
  /** Max upload size (bytes). */
  maxUploadBytes?: number
}

interface Compiled {
  route: RouteDef
  re: RegExp
  names: string[]
}

function compile(routes: RouteDef[]): Compiled[] {
  return routes.map((route) => {
    const names: string[] = []
    const re = new RegExp('^' + route.path.replace(/\{(\w+)\}/g, (_, n: string) => (names.push(n), '([^/]+)')) + '/?$')
    return {route, re, names}
  })
}

const COMPILED = compile(LAB_ROUTES)
/** The routes by number of path segments: a request is matched against those of its depth only. */
const BY_DEPTH = new Map<number, Compiled[]>()
for (const c of COMPILED) {
  const depth = c.route.path.split('/').length
  BY_DEPTH.set(depth, [...(BY_DEPTH.get(depth) ?? []), c])
}

/** Finds the route for a method + path (path without /api2/json); `pathExists` when another method serves it. */
export function matchRoute(method: string, path: string): {route?: RouteDef; pathParams: Record<string, string>; pathExists: boolean} {
  let pathExists = false
  for (const c of BY_DEPTH.get(path.replace(/\/$/, '').split('/').length) ?? []) {
    const m = c.re.exec(path)
    if (!m) continue
    pathExists = true
    if (c.route.method !== method) continue
    const pathParams: Record<string, string> = {}
    c.names.forEach((n, i) => (pathParams[n] = decodeURIComponent(m[i + 1]!)))
    return {route: c.route, pathParams, pathExists}
  }
  return {pathParams: {}, pathExists}
}

/** Form / query decoding as PVE does: split on & and ;, '+' is a space, repeated keys become arrays. */
export function parseForm(text: string): RawParams {
  const out: RawParams = {}
  for (const part of text.split(/[&;]/)) {
    if (part === '') continue
    const eq = part.indexOf('=')
    const k = decodeURIComponent((eq < 0 ? part : part.slice(0, eq)).replace(/\+/g, ' '))
    const v = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1).replace(/\+/g, ' '))
    const prev = out[k]
    if (prev === undefined) out[k] = v
    else out[k] = Array.isArray(prev) ? [...prev, v] : [prev, v]
  }
  return out
}

function sanitizeReason(msg: string): string {
  // A reason phrase is one latin-1 line.
  return msg.replace(/[\r\n]+/g, ' ').replace(/[^\x20-\x7e\xa0-\xff]/g, '?').slice(0, 500).trim()
}

export class LabServer {
  readonly servers = new Map<string, Server>()
  readonly ports = new Map<string, number>()
  readonly #o: ServerOptions
  /** The route handlers, gathered at the first request (src/lab/routes/index.ts). */
  #handlers: Record<string, Handler> | undefined
  readonly #sockets = new Set<Socket>()

  constructor(o: ServerOptions) {
    this.#o = o
  }

  get api(): LabApi {
    return this.#o.api
  }

  async listen(): Promise<Record<string, number>> {
    await mkdir(this.#o.tmpDir, {recursive: true})
    for (const [name] of this.api.nodes) {
      const cert = this.#o.certs[name]
      if (!cert) throw new Error(`no certificate for lab node ${name}`)
      const dead = this.api.faults.nodeDead(name)
      const server = createServer({key: cert.key, cert: cert.cert, keepAliveTimeout: 30_000}, (req, res) => {
        if (dead) return // accepts TCP (and TLS) but never answers: fault injection
        void this.#handle(name, req, res)
      })
      server.on('connection', (s: Socket) => {
        this.#sockets.add(s)
        s.on('close', () => this.#sockets.delete(s))
      })
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(this.#o.ports?.[name] ?? 0, '127.0.0.1', () => resolve())
      })
      this.servers.set(name, server)
      this.ports.set(name, (server.address() as AddressInfo).port)
    }
    return Object.fromEntries(this.ports)
  }

  async close(): Promise<void> {
    this.flushLog()
    for (const s of this.#sockets) s.destroy()
    await Promise.all([...this.servers.values()].map((s) => new Promise<void>((r) => s.close(() => r()))))
    this.servers.clear()
  }

  #logBuf: string[] = []
  #logTimer: NodeJS.Timeout | undefined

  /** Buffered JSONL append (flushed every 50 ms and at close): a sync write per request would cap throughput. */
  #log(e: RequestLogEntry): void {
    if (!this.#o.requestLog) return
    this.#logBuf.push(JSON.stringify(e) + '\n')
    this.#logTimer ??= setTimeout(() => this.flushLog(), 50)
  }

  /** Writes buffered request-log lines now (tests call it before reading the log). */
  flushLog(): void {
    if (this.#logTimer) clearTimeout(this.#logTimer)
    this.#logTimer = undefined
    if (this.#logBuf.length === 0 || !this.#o.requestLog) return
    const text = this.#logBuf.join('')
    this.#logBuf = []
    appendFileSync(this.#o.requestLog, text)
  }

  #send(res: ServerResponse, status: number, body: unknown, reason?: string, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body)
    if (reason) res.statusMessage = sanitizeReason(reason)
    res.writeHead(status, {'Content-Type': 'application/json;charset=UTF-8', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'max-age=0', Pragma: 'no-cache', ...headers})
    res.end(text)
  }

  /** An error as PVE's JSON formatter writes it: `{"data":null,"message":…}` (and `errors` for a 400). */
  #sendError(res: ServerResponse, status: number, message: string, errors?: Record<string, string>): void {
    this.#send(res, status, {data: null, ...(errors ? {errors} : {}), message}, message)
  }

  /** 401 for a request without valid credentials: PVE's HTTP server answers it with no body. */
  #sendUnauthorized(res: ServerResponse, reason: string): void {
    res.statusMessage = sanitizeReason(reason)
    res.writeHead(401, {'Content-Length': 0, 'Cache-Control': 'max-age=0', Pragma: 'no-cache'})
    res.end()
  }

  async #handle(nodeName: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = Date.now()
    const url = new URL(req.url ?? '/', 'https://lab')
    const method = req.method ?? 'GET'
    const fullPath = url.pathname
    let logPath = fullPath
    let paramNames: string[] = []
    let user: string | undefined
    const finish = (status: number) => {
      if (this.#o.requestLog) this.#log({time: new Date(t0).toISOString(), node: nodeName, method, path: logPath, params: paramNames, status, ms: Date.now() - t0, ...(user ? {user} : {})})
    }
    try {
      const lat = this.api.faults.latency(nodeName, fullPath)
      if (lat > 0) await sleep(lat)
      if (!fullPath.startsWith('/api2/json/')) {
        await drain(req)
        res.statusMessage = 'no such uri'
        res.writeHead(501, {'Content-Length': 0})
        res.end()
        return finish(501)
      }
      const path = fullPath.slice('/api2/json'.length)
      logPath = path
      const matched = matchRoute(method, path)
      const {pathParams} = matched
      // A route serves only when the release the lab plays has that method (PVE 8.4 lacks some of 9.1's).
      const route = matched.route && this.api.schema.method(matched.route.method, matched.route.path) ? matched.route : undefined
      const schemaMethod = route ? this.api.schema.method(route.method, route.path)! : undefined
      // ---- authentication: before anything else, unknown paths included (PVE's auth_handler) ----
      let principal: Principal | undefined
      if (!route?.noAuth) {
        try {
          principal = this.#authenticate(req, method !== 'GET')
          user = principal.tokenid ?? principal.user
        } catch (e) {
          await drain(req)
          if (this.#o.authFailDelayMs) await sleep(this.#o.authFailDelayMs)
          this.#sendUnauthorized(res, e instanceof AuthError ? e.message : 'authentication failure')
          return finish(401)
        }
      } else if (/^PVEAPIToken/.test(req.headers.authorization ?? '')) {
        // POST /access/ticket has allowtoken 0
        await drain(req)
        if (this.#o.authFailDelayMs) await sleep(this.#o.authFailDelayMs)
        this.#sendUnauthorized(res, 'API tokens are not allowed for this endpoint')
        return finish(401)
      }

      if (!route || !schemaMethod) {
        // PVE's rest_handler: 501 with the path relative to /api2/json
        await drain(req)
        this.#sendError(res, 501, `Method '${method} ${path.replace(/\/$/, '') || '/'}' not implemented`)
        return finish(501)
      }
      const node = pathParams.node !== undefined ? this.api.nodes.get(pathParams.node) : this.api.nodes.get(nodeName)
      if (pathParams.node !== undefined && (!node || pathParams.node !== nodeName)) {
        await drain(req)
        this.#sendError(res, 500, `hostname lookup '${pathParams.node}' failed - failed to get address info for: ${pathParams.node}: Name or service not known\n`)
        return finish(500)
      }
      if (this.api.faults.http500(nodeName, method, path)) {
        await drain(req)
        this.#sendError(res, 500, 'lab fault injection: internal server error\n')
        return finish(500)
      }

      // ---- parameters ----
      let params: RawParams
      let upload: Ctx['upload']
      const ctype = req.headers['content-type'] ?? ''
      if (method === 'GET' || method === 'DELETE') {
        params = parseForm(url.search.slice(1))
        await drain(req)
      } else if (/^multipart\/form-data/i.test(ctype)) {
        const r = await this.#multipart(req)
        params = r.fields
        if (r.file) upload = r.file
      } else {
        const body = await readBody(req, 1024 * 1024)
        params = /json/i.test(ctype) ? jsonParams(body) : parseForm(body)
        const q = parseForm(url.search.slice(1))
        for (const [k, v] of Object.entries(q)) params[k] ??= v
      }
      delete params._dc // ExtJS's cache buster, which PVE's server drops
      paramNames = Object.keys(params).sort()
      const all: RawParams = {...params, ...pathParams}
      const props = schemaMethod.parameters?.properties ?? {}
      const errors = validateParams(props, all)
      if (schemaMethod.parameters?.additionalProperties) for (const k of Object.keys(errors)) if (errors[k]!.startsWith('property is not defined in schema')) delete errors[k]
      if (Object.keys(errors).length > 0) {
        if (upload) await rm(upload.path, {force: true})
        this.#sendError(res, 400, 'Parameter verification failed.\n', errors)
        return finish(400)
      }

      // ---- privileges: the method's `permissions` from the schema of the release the lab plays ----
      if (principal) this.api.access.checkApi(principal, schemaMethod.permissions, all)

      const ctx: Ctx = {node: node!, params: all, principal: principal ?? {user: 'anonymous'}, upload}
      let data: unknown
      if (route.handler === 'storageUpload') {
        if (!upload) throw new ParamError({filename: 'missing file upload (multipart field "filename" with the file content)'})
        await verifyChecksum(upload.path, all['checksum'] as string | undefined, all['checksum-algorithm'] as string | undefined).catch(async (e) => {
          await rm(upload!.path, {force: true})
          throw e
        })
        data = this.api.importUploaded(ctx, upload.path, 'imgcopy')
      } else if (route.handler === 'storageDownload') {
        data = await this.#download(ctx)
      } else if (route.handler === 'taskStatus' || route.handler === 'taskLog' || route.handler === 'taskList' || route.handler === 'taskIndex') {
        data = this.#tasks(route.handler, ctx)
      } else {
        const h = (this.#handlers ??= labHandlers(this.api))[route.handler]
        if (!h) throw new Error(`lab defect: no handler ${route.handler}`)
        data = await h(ctx)
      }
      if (route.handler === 'ticket') {
        const t = data as {ticket: string}
        this.#send(res, 200, {data}, undefined, {'Set-Cookie': `PVEAuthCookie=${encodeURIComponent(t.ticket)}; path=/; secure; SameSite=Strict`})
        return finish(200)
      }
      this.#send(res, 200, {data: data === undefined ? null : data})
      return finish(200)
    } catch (e) {
      const status = errStatus(e)
      if (status === 400) {
        this.#sendError(res, 400, 'Parameter verification failed.\n', (e as ParamError).errors)
        return finish(400)
      }
      if (status === 401 && this.#o.authFailDelayMs) await sleep(this.#o.authFailDelayMs)
      const msg = e instanceof Error ? e.message : String(e)
      if (!(e instanceof HttpError || e instanceof PermissionError || e instanceof BackendError || e instanceof AuthError)) {
        process.stderr.write(`lab: ${method} ${fullPath}: ${e instanceof Error ? e.stack : msg}\n`)
      }
      // the body carries the message as PVE's die text (with its newline); the reason phrase is one line
      this.#sendError(res, status, msg.endsWith('\n') ? msg : `${msg}\n`)
      return finish(status)
    }
  }

  #authenticate(req: IncomingMessage, write: boolean): Principal {
    const auth = req.headers.authorization
    if (auth && /^PVEAPIToken[= ]/.test(auth)) return this.api.access.verifyToken(auth.replace(/^PVEAPIToken /, 'PVEAPIToken='))
    const cookie = req.headers.cookie ?? ''
    const m = /(?:^|;\s*)PVEAuthCookie=([^;]+)/.exec(cookie)
    if (!m) throw new AuthError('No ticket')
    const csrf = req.headers.csrfpreventiontoken
    return this.api.access.verifyTicket(decodeURIComponent(m[1]!), Array.isArray(csrf) ? csrf[0] : csrf, write)
  }

  #tasks(handler: string, c: Ctx): unknown {
    if (handler === 'taskList') {
      const limit = c.params.limit === undefined ? 50 : Number(c.params.limit)
      const start = Number(c.params.start ?? 0)
      return this.api.tasks
        .list(c.node.name)
        .filter((t) => this.#canSeeTask(c, t.user, c.node.name))
        .filter((t) => c.params.vmid === undefined || t.id === String(c.params.vmid))
        .filter((t) => c.params.errors !== '1' || (t.status === 'stopped' && t.exitstatus !== 'OK'))
        .filter((t) => c.params.typefilter === undefined || t.type === String(c.params.typefilter))
        .filter((t) => c.params.userfilter === undefined || t.user.includes(String(c.params.userfilter)))
        .filter((t) => c.params.since === undefined || t.starttime >= Number(c.params.since))
        .filter((t) => c.params.until === undefined || t.starttime <= Number(c.params.until))
        // source: 'archive' (default in PVE) lists finished tasks, 'active' running ones, 'all' both
        .filter((t) => {
          const source = String(c.params.source ?? 'archive')
          return source === 'all' || (source === 'active' ? t.status === 'running' : t.status === 'stopped')
        })
        .filter((t) => c.params.statusfilter === undefined || String(c.params.statusfilter).split(/[,; ]+/).some((s) => (s === 'ok' ? t.exitstatus === 'OK' : s === 'error' ? t.status === 'stopped' && t.exitstatus !== 'OK' && !String(t.exitstatus).startsWith('WARNINGS') : s === 'warning' ? String(t.exitstatus).startsWith('WARNINGS') : s === 'running' ? t.status === 'running' : false)))
        .slice(start, start + limit)
        .map((t) => ({upid: t.upid, node: t.node, pid: t.pid, pstart: t.pstart, starttime: t.starttime, type: t.type, id: t.id, user: t.user, ...(t.endtime ? {endtime: t.endtime, status: t.exitstatus} : {})}))
    }
    const upid = String(c.params.upid)
    const t = this.api.tasks.get(upid)
    if (!t || t.node !== c.node.name) throw new HttpError(500, `unable to open file - No such file or directory`)
    if (!this.#canSeeTask(c, t.user, c.node.name)) throw new PermissionError(`/nodes/${c.node.name}`, 'Sys.Audit')
    if (handler === 'taskIndex') return [{name: 'log'}, {name: 'status'}]
    if (handler === 'taskStatus') {
      return {upid: t.upid, node: t.node, pid: t.pid, pstart: t.pstart, starttime: t.starttime, type: t.type, id: t.id, user: t.user, status: t.status, ...(t.status === 'stopped' ? {exitstatus: t.exitstatus} : {})}
    }
    const start = Number(c.params.start ?? 0)
    const limit = c.params.limit === undefined ? 50 : Number(c.params.limit)
    return t.log.slice(start, start + limit).map((line, i) => ({n: start + i + 1, t: line}))
  }

  #canSeeTask(c: Ctx, owner: string, node: string): boolean {
    const me = c.principal.tokenid ?? c.principal.user
    // PVE: the owner (a user sees its tokens' tasks too) or Sys.Audit on the node.
    return owner === me || owner.split('!')[0] === c.principal.user && !c.principal.tokenid || this.api.access.has(c.principal, `/nodes/${node}`, 'Sys.Audit')
  }

  async #multipart(req: IncomingMessage): Promise<{fields: RawParams; file?: {path: string; size: number}}> {
    const fields: RawParams = {}
    let file: {path: string; size: number} | undefined
    const max = this.#o.maxUploadBytes ?? 64 * 2 ** 30
    await new Promise<void>((resolve, reject) => {
      const bb = Busboy({headers: req.headers, limits: {fileSize: max, files: 1, fields: 20}})
      const writes: Promise<void>[] = []
      bb.on('field', (name, value) => (fields[name] = value))
      bb.on('file', (name, stream, info) => {
        // PVE's upload form sends the file in the field "filename" (its content) with its name in info.filename.
        if (fields.filename === undefined) fields.filename = info.filename ?? name
        const path = join(this.#o.tmpDir, `pveupload-${randomBytes(8).toString('hex')}`)
        const out = createWriteStream(path, {mode: 0o600})
        let size = 0
        stream.on('data', (d: Buffer) => (size += d.length))
        writes.push(
          new Promise<void>((res, rej) => {
            out.on('finish', () => {
              file = {path, size}
              res()
            })
            out.on('error', rej)
            stream.on('limit', () => rej(new HttpError(413, 'upload too large')))
          }),
        )
        stream.pipe(out)
        void name
      })
      bb.on('close', () => void Promise.all(writes).then(() => resolve(), reject))
      bb.on('error', reject)
      req.pipe(bb)
    })
    return {fields, file}
  }

  async #download(c: Ctx): Promise<string> {
    const url = new URL(String(c.params.url))
    if (!/^127\.\d+\.\d+\.\d+$|^localhost$|^\[::1\]$/.test(url.hostname)) {
      throw new HttpError(500, `the lab only downloads from loopback addresses (got '${url.hostname}')`)
    }
    const tmp = join(this.#o.tmpDir, `download-${randomBytes(8).toString('hex')}`)
    // As PVE: the UPID comes back at once, the transfer and the checksum check run in the task.
    return this.api.importUploaded(c, async (ctx) => {
      const {fetch} = cjsExports(await import('undici'))
      ctx.log(`downloading ${url.href} to ${tmp}`)
      const r = await fetch(url, {signal: AbortSignal.any([AbortSignal.timeout(30 * 60_000), ctx.signal])}).catch((e: Error) => {
        throw new Error(`invalid server response: '${e.message}'`)
      })
      if (!r.ok || !r.body) throw new Error(`invalid server response: '${r.status} ${r.statusText}'`)
      const out = createWriteStream(tmp, {mode: 0o600})
      let size = 0
      try {
        for await (const chunk of r.body as AsyncIterable<Uint8Array>) {
          size += chunk.length
          if (!out.write(chunk)) await new Promise<void>((res) => out.once('drain', () => res()))
        }
        await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())))
        ctx.log(`downloaded ${size} bytes`)
        if (c.params.checksum) ctx.log(`calculating checksum...`)
        await verifyChecksum(tmp, c.params.checksum as string | undefined, c.params['checksum-algorithm'] as string | undefined)
        if (c.params.checksum) ctx.log(`checksum verified`)
      } catch (e) {
        out.destroy()
        await rm(tmp, {force: true})
        throw e
      }
      c.upload = {path: tmp, size}
      return tmp
    }, 'download')
  }
}

function errStatus(e: unknown): number {
  if (e instanceof ParamError) return 400
  if (e instanceof AuthError) return 401
  if (e instanceof PermissionError) return 403
  if (e instanceof HttpError) return e.status
  if (e instanceof BackendError) return e.status
  return 500
}

async function verifyChecksum(path: string, checksum?: string, algo?: string): Promise<void> {
  if (!checksum || !algo) return
  const {createReadStream} = await import('node:fs')
  const h = createHash(algo)
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  const got = h.digest('hex')
  if (got.toLowerCase() !== checksum.toLowerCase()) throw new HttpError(500, `checksum mismatch: got '${got}' != expect '${checksum.toLowerCase()}'`)
}

async function readBody(req: IncomingMessage, max: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of req) {
    size += (c as Buffer).length
    if (size > max) throw new HttpError(413, 'request entity too large')
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

async function drain(req: IncomingMessage): Promise<void> {
  if (req.readableEnded) return
  for await (const _ of req) void _
}

function jsonParams(body: string): RawParams {
  if (body.trim() === '') return {}
  const obj = JSON.parse(body) as Record<string, unknown>
  const out: RawParams = {}
  for (const [k, v] of Object.entries(obj)) {
    if (v === null || v === undefined) continue
    out[k] = Array.isArray(v) ? v.map(String) : typeof v === 'boolean' ? (v ? '1' : '0') : String(v)
  }
  return out
}

/** Reads the JSONL request log (for tests proving "a second deploy changes nothing"). */
export async function readRequestLog(file: string): Promise<RequestLogEntry[]> {
  const {readFile} = await import('node:fs/promises')
  const text = await readFile(file, 'utf8').catch(() => '')
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as RequestLogEntry)
}

export {SECRET_PARAMS as REDACTED_PARAMS}
