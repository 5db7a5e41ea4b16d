import type {IncomingHttpHeaders} from 'node:http'
import {isIP} from 'node:net'
import https from 'node:https'
import {Readable, type Duplex} from 'node:stream'
import {pipeline} from 'node:stream/promises'
import tls from 'node:tls'

import {MAX_CA_FILE_BYTES, readRegularFileSync} from '../bounded-read.js'
import {armDeadline, DeadlineExceeded} from '../deadline.js'
import {ErrorCode, PgiError, UnreachableError, UserError} from '../errors.js'

/**
 * TLS for the Proxmox API: every connection is verified, either
 *  - against a pinned SHA-256 fingerprint of the node certificate (PVE's self-signed
 *    pve-ssl.pem): the handshake completes, the peer certificate's fingerprint is compared with
 *    the pin, and on mismatch the socket is destroyed before a single request byte is written;
 *  - or against a CA file (normal chain and host name verification);
 *  - or, with neither, against the system's CA store (e.g. an ACME certificate).
 * There is no "insecure" mode, and NODE_TLS_REJECT_UNAUTHORIZED is never used.
 */

/** What the client sends: its API requests (query or form) and its streamed uploads. */
export interface HttpInit {
  method?: string
  headers?: Record<string, string>
  body?: string | Uint8Array | AsyncIterable<Uint8Array> | null
  signal?: AbortSignal | null
  /** Accepted for WHATWG-fetch compatibility (streamed bodies); has no effect here. */
  duplex?: 'half'
  /** Called when the answer starts (status line and headers received), before its body. */
  onResponse?: () => void
  /** Longest pause (ms) while the answer's body arrives before the request fails (default: none). */
  idleTimeoutMs?: number
  /**
   * Deadline (ms) until the answer starts, honoured only by a fetch marked `honoursDeadline` (the
   * trusted one): the request then fails with DeadlineExceeded, the deadline being extended once
   * when this process was short of CPU (src/deadline.ts). Others get an abort signal instead.
   */
  deadlineMs?: number
}

/** What the client reads of an answer. A WHATWG `Response` has all of it (tests inject such fetches). */
export interface HttpAnswer {
  readonly status: number
  readonly statusText: string
  readonly headers: {get(name: string): string | null}
  text(): Promise<string>
  json(): Promise<unknown>
}

/**
 * The transport the Proxmox client runs on: a fetch-shaped function (URL + init → answer). The
 * trusted one (below) is node:https on a keep-alive agent; tests may pass any WHATWG fetch.
 */
export type FetchFn = ((input: string | URL, init?: HttpInit) => Promise<HttpAnswer>) & {
  /**
   * Set on a fetch that bounds each request by `init.deadlineMs` itself. The client then sends no
   * abort signal: an AbortController, its listeners and a race per request were a fifth of pgi's
   * own CPU per request on a fleet's status (bench/status, marginal CPU). Any other fetch (tests
   * inject WHATWG ones) is bounded through `init.signal`.
   */
  readonly honoursDeadline?: boolean
}

export interface TlsTrust {
  /** "AA:BB:…" (32 bytes hex, colons optional, any case). */
  fingerprint?: string
  /** PEM file of the CA that signed the node certificates. */
  caFile?: string
  /** PEM text of the CA (instead of caFile). */
  ca?: string
}

export interface PinnedFetch {
  fetch: FetchFn
  close(): Promise<void>
}

/** "aa:bb…" / "AABB…" → "AA:BB:…"; undefined if it is not 32 bytes of hex. */
export function normalizeFingerprint(fp: string): string | undefined {
  const hex = fp.trim().replace(/^sha256[:/]*/i, '').replace(/[:\s-]/g, '').toUpperCase()
  if (!/^[0-9A-F]{64}$/.test(hex)) return undefined
  return hex.match(/../g)!.join(':')
}

function hostPort(host: string, port: string | number | undefined, protocol = 'https:'): string {
  const p = port === undefined || port === '' ? (protocol === 'https:' ? 443 : 80) : port
  return `${isIP(host) === 6 ? `[${host}]` : host}:${p}`
}

export class TlsMismatchError extends UnreachableError {
  constructor(hostport: string, expected: string, got: string) {
    super(ErrorCode.TLS_MISMATCH, `TLS certificate of ${hostport} does not match the pinned fingerprint:\n  expected ${expected}\n  got      ${got}`, {
      details: {host: hostport, expected, got},
      suggestions: [
        'If the hypervisor\'s certificate was renewed on purpose, check the new one and pin it: pgi inventory trust <hypervisor> --write',
        'If nobody renewed it, something may be intercepting the connection: do not trust it before checking on the hypervisor (pvenode cert info).',
      ],
    })
  }
}

/** Error code of a connection that did not open (TCP + TLS handshake) within its time: nothing was sent. */
export const CONNECT_TIMEOUT = 'PGI_CONNECT_TIMEOUT'

/** Connection-level codes for which the request was certainly not sent (safe to retry). */
export const NOT_SENT_CODES = new Set([
  CONNECT_TIMEOUT,
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
])

/** Errors raised by our fetch: the request may or may not have reached the server. */
export class NetworkError extends UnreachableError {
  /** True when the connection failed before any request byte was sent. */
  readonly notSent: boolean
  readonly errno?: string
  constructor(hostport: string, errno: string | undefined, detail: string, notSent: boolean, cause?: unknown) {
    super(ErrorCode.UNREACHABLE, `cannot reach ${hostport}: ${detail}`, {
      cause,
      details: {host: hostport, ...(errno ? {errno} : {})},
      suggestions: [
        `Check that ${hostport} is reachable from here (network, VPN, firewall; the PVE API listens on port 8006).`,
        ...(errno && /CERT|SIGNATURE|ALTNAME|ISSUER/.test(errno)
          ? ['The certificate did not verify against the CA: check tls.ca_file in the inventory, or pin its fingerprint with `pgi inventory trust`.']
          : []),
      ],
    })
    this.notSent = notSent
    this.errno = errno
  }
}

/** Any failure thrown by a fetch → NetworkError (PgiErrors in the cause chain are returned as they are). */
export function toNetworkError(err: unknown, hostport: string): PgiError {
  const pgi = findPgiError(err)
  if (pgi) return pgi
  const {code, message} = errnoOf(err)
  return new NetworkError(hostport, code, code ? `${code} (${message})` : message, code !== undefined && NOT_SENT_CODES.has(code), err)
}

function errnoOf(err: unknown): {code?: string; message: string} {
  let e: unknown = err
  for (let i = 0; i < 5 && e; i++) {
    const c = (e as {code?: unknown}).code
    if (typeof c === 'string') return {code: c, message: (e as Error).message}
    const next = (e as {cause?: unknown}).cause
    if (!next) return {code: typeof c === 'string' ? c : undefined, message: (e as Error).message ?? String(e)}
    e = next
  }
  return {message: String(err)}
}

function findPgiError(err: unknown): PgiError | undefined {
  let e: unknown = err
  for (let i = 0; i < 5 && e; i++) {
    if (e instanceof PgiError) return e
    e = (e as {cause?: unknown}).cause
  }
  return undefined
}

/** Error code of an answer whose body paused longer than `idleTimeoutMs`. */
export const BODY_TIMEOUT = 'PGI_BODY_TIMEOUT'

/**
 * The connection pool: node:https's keep-alive Agent, whose connections are opened by
 * `createConnection` below so that the pin is checked after the handshake and before the socket
 * is handed to the HTTP layer (the callback form of createConnection: the request is written only
 * once the callback gives the socket, so a mismatching server never receives a request byte).
 * Why node:https and not undici (used before): on a fleet-wide `pgi status` the marginal CPU per
 * API request was 0.50–0.70 ms through undici's dispatcher (its HTTP parser runs as WebAssembly)
 * and is ~0.3 ms through node's native parser (bench/status, docs/performance.md).
 */
class TrustedAgent extends https.Agent {
  constructor(
    private readonly pin: string | undefined,
    private readonly context: tls.SecureContext,
    private readonly connectTimeoutMs: number,
  ) {
    // keep-alive: a fleet run makes thousands of requests to each hypervisor; 8 connections per
    // hypervisor at most; an idle connection is closed after 10 s (or the server's Keep-Alive hint)
    super({keepAlive: true, maxSockets: 8, maxFreeSockets: 8, timeout: 10_000, scheduling: 'lifo'})
  }

  override createConnection(options: https.RequestOptions, cb?: (err: Error | null, stream: Duplex) => void): Duplex | undefined {
    const host = String(options.hostname ?? options.host ?? 'localhost').replace(/^\[|\]$/g, '')
    const port = Number(options.port ?? 443)
    const socket = tls.connect({
      host,
      port,
      ...(isIP(host) ? {} : {servername: host}),
      secureContext: this.context,
      // with a pin the chain is not checked (PVE's node certificates are self-signed by the
      // cluster CA): the pin replaces it, checked below; without one, chain and host name
      rejectUnauthorized: this.pin === undefined,
    })
    const hp = hostPort(host, port)
    const timer = setTimeout(() => {
      socket.destroy()
      done(Object.assign(new Error(`no connection within ${this.connectTimeoutMs} ms`), {code: CONNECT_TIMEOUT}))
    }, this.connectTimeoutMs)
    let settled = false
    const done = (err: Error | null) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.removeListener('error', done)
      if (err) {
        socket.destroy()
        cb?.(err, socket)
      } else cb?.(null, socket)
    }
    socket.once('error', done)
    socket.once('secureConnect', () => {
      if (this.pin !== undefined) {
        const cert = socket.getPeerCertificate()
        const got = cert?.fingerprint256 ? normalizeFingerprint(cert.fingerprint256) ?? cert.fingerprint256 : '(no certificate)'
        if (got !== this.pin) return done(new TlsMismatchError(hp, this.pin, got))
      }
      done(null)
    })
    return undefined
  }
}

/**
 * A fetch whose TLS is verified by the pin or the CA (see the module comment). Network failures
 * become NetworkError (PGI_UNREACHABLE, with host:port) and a pin mismatch TlsMismatchError
 * (PGI_TLS_MISMATCH); an abort (timeout) is passed through unchanged for the caller to report.
 */
export function createTrustedFetch(trust: TlsTrust, opts: {connectTimeoutMs?: number} = {}): PinnedFetch {
  const timeout = opts.connectTimeoutMs ?? 10_000
  let agent: TrustedAgent
  if (trust.fingerprint) {
    const pin = normalizeFingerprint(trust.fingerprint)
    if (!pin) {
      throw new UserError(ErrorCode.INVENTORY_INVALID, `TLS fingerprint "${trust.fingerprint}" is not a SHA-256 fingerprint (32 bytes of hex, e.g. AA:BB:…)`, {
        suggestions: ['Get the right value with: pgi inventory trust <hypervisor>'],
      })
    }
    // No TLS session is ever resumed (the agent's session cache is bypassed): a resumed session
    // would skip the certificate, hence the pin check.
    agent = new TrustedAgent(pin, secureContextFor(undefined), timeout)
  } else {
    // Normal verification: chain against the CA (or the system store) and host name.
    agent = new TrustedAgent(undefined, secureContextFor(trust.ca ?? (trust.caFile ? readCa(trust.caFile) : undefined)), timeout)
  }
  const fetch = async (input: string | URL, init?: HttpInit): Promise<HttpAnswer> => {
    const target = targetOf(input)
    try {
      return await send(agent, target, init ?? {})
    } catch (err) {
      if ((err as Error)?.name === 'AbortError' || (err as Error)?.name === 'TimeoutError') throw err
      throw toNetworkError(err, hostPort(target.hostname, target.port, target.protocol))
    }
  }
  return {
    fetch: Object.assign(fetch, {honoursDeadline: true}),
    // nothing should be in flight at the end of a run; every socket is closed so that nothing of
    // the pool keeps the process alive after its last output
    close: async () => agent.destroy(),
  }
}

/**
 * One request, the answer read whole (PVE answers are small JSON), with the HTTP reason phrase
 * (PVE puts its error messages there). Redirects are never followed: the PVE API does not send
 * them, and following one could re-send a request elsewhere; a 3xx comes back as an answer.
 */
/** Where a request goes: the origin's parts and the path with its query (never a fragment). */
interface Target {
  protocol: string
  hostname: string
  port: string
  path: string
}

/**
 * The request's target. A client sends thousands of requests to the same origin: the origin is
 * parsed once (a WHATWG URL) and kept; each request's URL is only cut at its path (a URL object per
 * request was a measurable share of the CPU per request, bench/status).
 */
const ORIGINS = new Map<string, Omit<Target, 'path'>>()
function targetOf(input: string | URL): Target {
  if (typeof input !== 'string') return {protocol: input.protocol, hostname: input.hostname.replace(/^\[|\]$/g, ''), port: input.port, path: input.pathname + input.search}
  const scheme = input.indexOf('://')
  const slash = scheme === -1 ? -1 : input.indexOf('/', scheme + 3)
  if (slash === -1) return targetOf(new URL(input))
  const originText = input.slice(0, slash)
  let origin = ORIGINS.get(originText)
  if (!origin) {
    const u = new URL(originText)
    origin = {protocol: u.protocol, hostname: u.hostname.replace(/^\[|\]$/g, ''), port: u.port}
    if (ORIGINS.size < 1000) ORIGINS.set(originText, origin)
  }
  const hash = input.indexOf('#', slash)
  return {...origin, path: hash === -1 ? input.slice(slash) : input.slice(slash, hash)}
}

function send(agent: https.Agent, url: Target, init: HttpInit): Promise<HttpAnswer> {
  const signal = init.signal ?? undefined
  if (signal?.aborted) return Promise.reject(signal.reason)
  return new Promise<HttpAnswer>((resolve, reject) => {
    let done = false
    let idle: NodeJS.Timeout | undefined
    let cancelDeadline: (() => void) | undefined
    const finish = (err: unknown, answer?: HttpAnswer) => {
      if (done) return
      done = true
      if (idle) clearTimeout(idle)
      cancelDeadline?.()
      signal?.removeEventListener('abort', onAbort)
      if (answer) resolve(answer)
      else reject(err)
    }
    const req = https.request({
      agent,
      protocol: url.protocol,
      hostname: url.hostname,
      port: url.port || 443,
      path: url.path,
      method: init.method ?? 'GET',
      headers: init.headers,
    })
    const onAbort = () => {
      finish(signal!.reason)
      req.destroy()
    }
    signal?.addEventListener('abort', onAbort, {once: true})
    const deadlineMs = init.deadlineMs
    if (deadlineMs !== undefined) {
      cancelDeadline = armDeadline(deadlineMs, () => {
        finish(new DeadlineExceeded(deadlineMs))
        req.destroy()
      })
    }
    req.on('error', (err) => finish(err))
    req.on('response', (res) => {
      // the deadline ends when the answer starts; its body's pauses are bounded by idleTimeoutMs
      cancelDeadline?.()
      init.onResponse?.()
      const chunks: Buffer[] = []
      if (init.idleTimeoutMs) {
        const ms = init.idleTimeoutMs
        idle = setTimeout(() => {
          const err = Object.assign(new Error(`the answer paused for more than ${ms} ms`), {code: BODY_TIMEOUT})
          finish(err)
          req.destroy()
        }, ms)
      }
      res.on('data', (chunk: Buffer) => {
        chunks.push(chunk)
        idle?.refresh()
      })
      res.on('end', () => finish(undefined, answerOf(res.statusCode ?? 0, res.statusMessage ?? '', res.headers, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks))))
      res.on('error', (err) => finish(err))
      res.on('aborted', () => finish(Object.assign(new Error('the answer was cut'), {code: 'ECONNRESET'})))
    })
    const body = init.body
    if (body === undefined || body === null) req.end()
    else if (typeof body === 'string' || body instanceof Uint8Array) req.end(body)
    else {
      // a streamed body (an image upload): backpressure through pipeline; a failing source ends
      // the request with its error
      pipeline(Readable.from(body, {objectMode: false}), req).catch((err: unknown) => {
        finish(err)
        req.destroy()
      })
    }
  })
}

function answerOf(status: number, statusText: string, headers: IncomingHttpHeaders, body: Buffer): HttpAnswer {
  const text = body.toString('utf8')
  return {
    status,
    statusText,
    headers: {
      get(name) {
        const v = headers[name.toLowerCase()]
        return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v
      },
    },
    text: async () => text,
    json: async () => JSON.parse(text) as unknown,
  }
}

/**
 * One TLS context per CA (the system store when none), shared by every connection: Node builds a
 * new one per connection otherwise (parsing the whole CA store each time), which a fleet-wide run
 * opening a hundred connections pays for a hundred times. The context only holds the trust
 * settings; each connection still does its own handshake and verification (pin or chain).
 */
const SECURE_CONTEXTS = new Map<string, tls.SecureContext>()
function secureContextFor(ca: string | undefined): tls.SecureContext {
  let c = SECURE_CONTEXTS.get(ca ?? '')
  if (!c) SECURE_CONTEXTS.set(ca ?? '', (c = tls.createSecureContext(ca ? {ca} : {})))
  return c
}

/** The CA file, read as the inventory checked it: a regular file, bounded (src/bounded-read.ts). */
function readCa(file: string): string {
  const r = readRegularFileSync(file, MAX_CA_FILE_BYTES, 'a CA file')
  if (r.ok) return r.data.toString('utf8')
  throw new UserError(ErrorCode.INVENTORY_INVALID, `the CA file ${file} ${r.problem.message}`, {
    where: {file},
    suggestions: ['Fix tls.ca_file in the inventory (a path relative to the YAML file), or pin the fingerprint instead: pgi inventory trust <hypervisor>'],
  })
}

export interface CertificateInfo {
  host: string
  port: number
  subject: Record<string, string | string[]>
  issuer: Record<string, string | string[]>
  subjectAltName?: string
  validFrom: string
  validTo: string
  /** True when now is outside [validFrom, validTo]. */
  expired: boolean
  serialNumber: string
  /** "AA:BB:…" */
  fingerprint256: string
  selfSigned: boolean
  /** Whether the certificate verifies against the given CA / the system store (for information). */
  chainVerified: boolean
  chainError?: string
}

/**
 * Connects to `url`, completes the TLS handshake without trusting the certificate, and returns
 * what an operator needs to decide whether to trust it. Sends no HTTP request.
 */
export async function inspectCertificate(url: string, opts: {timeoutMs?: number; ca?: string} = {}): Promise<CertificateInfo> {
  const u = new URL(url)
  const host = u.hostname.replace(/^\[|\]$/g, '')
  const port = u.port ? Number(u.port) : 443
  const hp = hostPort(host, port)
  return new Promise<CertificateInfo>((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      ...(isIP(host) ? {} : {servername: host}),
      rejectUnauthorized: false,
      ...(opts.ca ? {ca: opts.ca} : {}),
    })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new NetworkError(hp, 'ETIMEDOUT', `no TLS handshake within ${opts.timeoutMs ?? 10_000} ms`, true))
    }, opts.timeoutMs ?? 10_000)
    socket.once('secureConnect', () => {
      clearTimeout(timer)
      const c = socket.getPeerCertificate(false)
      const now = Date.now()
      const info: CertificateInfo = {
        host,
        port,
        subject: {...(c.subject as unknown as Record<string, string>)},
        issuer: {...(c.issuer as unknown as Record<string, string>)},
        subjectAltName: c.subjectaltname,
        validFrom: new Date(c.valid_from).toISOString(),
        validTo: new Date(c.valid_to).toISOString(),
        expired: now < Date.parse(c.valid_from) || now > Date.parse(c.valid_to),
        serialNumber: c.serialNumber,
        fingerprint256: normalizeFingerprint(c.fingerprint256) ?? c.fingerprint256,
        selfSigned: JSON.stringify(c.subject) === JSON.stringify(c.issuer),
        chainVerified: socket.authorized,
        ...(socket.authorized ? {} : {chainError: String(socket.authorizationError)}),
      }
      socket.destroy()
      resolve(info)
    })
    socket.once('error', (err) => {
      clearTimeout(timer)
      const {code, message} = errnoOf(err)
      reject(new NetworkError(hp, code, code ? `${code} (${message})` : message, true, err))
    })
  })
}
