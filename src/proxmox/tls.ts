import type {IncomingHttpHeaders} from 'node:http'
import {isIP} from 'node:net'
import {Readable} from 'node:stream'
import tls from 'node:tls'

import {Agent, buildConnector, type Dispatcher} from 'undici'

import {MAX_CA_FILE_BYTES, readRegularFileSync} from '../bounded-read.js'
import {ErrorCode, PgiError, UnreachableError, UserError} from '../errors.js'

/**
 * TLS for the Proxmox API: every connection is verified, either
 *  - against a pinned SHA-256 fingerprint of the node certificate (PVE's self-signed
 *    pve-ssl.pem): the handshake completes, the peer certificate's fingerprint is compared with
 *    the pin, and on mismatch the socket is destroyed before undici writes a single request byte;
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
  /** Longest pause (ms) while the answer's body arrives before the request fails (default undici's 300 s). */
  idleTimeoutMs?: number
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
 * trusted one (below) is undici's dispatcher used directly; tests may pass any WHATWG fetch.
 */
export type FetchFn = (input: string | URL, init?: HttpInit) => Promise<HttpAnswer>

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
  dispatcher: Agent
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

/** Connection-level codes for which the request was certainly not sent (safe to retry). */
export const NOT_SENT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'UND_ERR_CONNECT_TIMEOUT',
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
    if (typeof c === 'string' && c !== 'UND_ERR_SOCKET') return {code: c, message: (e as Error).message}
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

/**
 * A fetch whose TLS is verified by the pin or the CA (see the module comment). Network failures
 * become NetworkError (PGI_UNREACHABLE, with host:port) and a pin mismatch TlsMismatchError
 * (PGI_TLS_MISMATCH); an abort (timeout) is passed through unchanged for the caller to report.
 */
export function createTrustedFetch(trust: TlsTrust, opts: {connectTimeoutMs?: number} = {}): PinnedFetch {
  const timeout = opts.connectTimeoutMs ?? 10_000
  let connect: buildConnector.connector
  if (trust.fingerprint) {
    const pin = normalizeFingerprint(trust.fingerprint)
    if (!pin) {
      throw new UserError(ErrorCode.INVENTORY_INVALID, `TLS fingerprint "${trust.fingerprint}" is not a SHA-256 fingerprint (32 bytes of hex, e.g. AA:BB:…)`, {
        suggestions: ['Get the right value with: pgi inventory trust <hypervisor>'],
      })
    }
    // The chain is not checked (PVE's node certificates are self-signed by the cluster CA):
    // the pin replaces it, and is checked before the socket is handed to undici. No session
    // cache: a resumed session must not skip the check.
    const base = buildConnector({rejectUnauthorized: false, maxCachedSessions: 0, timeout, secureContext: secureContextFor(undefined)})
    connect = (options, callback) => {
      base(options, (err, socket) => {
        if (err || !socket) {
          callback(err ?? new Error('TLS connection failed'), null)
          return
        }
        const cert = (socket as tls.TLSSocket).getPeerCertificate?.()
        const got = cert?.fingerprint256 ? normalizeFingerprint(cert.fingerprint256) ?? cert.fingerprint256 : '(no certificate)'
        if (got !== pin) {
          socket.destroy()
          callback(new TlsMismatchError(hostPort(options.hostname, options.port, options.protocol), pin, got), null)
          return
        }
        callback(null, socket)
      })
    }
  } else {
    // Normal verification: chain against the CA (or the system store) and host name.
    const ca = trust.ca ?? (trust.caFile ? readCa(trust.caFile) : undefined)
    connect = buildConnector({rejectUnauthorized: true, secureContext: secureContextFor(ca), timeout})
  }
  const dispatcher = new Agent({connect, connections: 8, keepAliveTimeout: 10_000})
  const fetch: FetchFn = async (input, init) => {
    const url = typeof input === 'string' ? new URL(input) : input
    try {
      return await send(dispatcher, url, init ?? {})
    } catch (err) {
      if ((err as Error)?.name === 'AbortError' || (err as Error)?.name === 'TimeoutError') throw err
      throw toNetworkError(err, hostPort(url.hostname.replace(/^\[|\]$/g, ''), url.port, url.protocol))
    }
  }
  return {fetch, dispatcher, close: () => closeDispatcher(dispatcher)}
}

/**
 * Closes a connection pool at the end of a run: requests still in flight get a second to finish
 * (nothing should be in flight by then), then every socket is destroyed, so nothing of the pool
 * keeps the process alive after its last output.
 */
async function closeDispatcher(dispatcher: Agent, graceMs = 1000): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const grace = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, graceMs)
  })
  await Promise.race([dispatcher.close().catch(() => undefined), grace])
  clearTimeout(timer)
  await dispatcher.destroy().catch(() => undefined)
}

/**
 * One request through undici's dispatcher, the answer read whole (PVE answers are small JSON).
 * Why not undici's `fetch`: its WHATWG machinery (Request/Response objects, web streams, header
 * guards) cost more CPU than the rest of `pgi status` put together on a 500-VM fleet; and not
 * undici's `request`: it drops the HTTP reason phrase, where PVE puts its error messages.
 * Redirects are never followed (no redirect interceptor): the PVE API does not send them, and
 * following one could re-send a request elsewhere; a 3xx comes back as an answer.
 */
function send(dispatcher: Dispatcher, url: URL, init: HttpInit): Promise<HttpAnswer> {
  const signal = init.signal ?? undefined
  if (signal?.aborted) return Promise.reject(signal.reason)
  return new Promise<HttpAnswer>((resolve, reject) => {
    let status = 0
    let statusText = ''
    let headers: IncomingHttpHeaders = {}
    const chunks: Buffer[] = []
    let controller: Dispatcher.DispatchController | undefined
    let done = false
    const finish = (err: unknown, answer?: HttpAnswer) => {
      if (done) return
      done = true
      signal?.removeEventListener('abort', onAbort)
      if (answer) resolve(answer)
      else reject(err)
    }
    const onAbort = () => {
      controller?.abort(signal!.reason as Error)
      finish(signal!.reason)
    }
    signal?.addEventListener('abort', onAbort, {once: true})
    try {
      dispatcher.dispatch(
        {
          origin: url.origin,
          path: url.pathname + url.search,
          method: (init.method ?? 'GET') as Dispatcher.HttpMethod,
          headers: init.headers,
          body: bodyOf(init.body),
          ...(init.idleTimeoutMs ? {bodyTimeout: init.idleTimeoutMs} : {}),
        },
        {
          onRequestStart(c) {
            controller = c
            if (done) c.abort(new Error('aborted'))
          },
          onResponseStart(_c, statusCode, h, statusMessage) {
            if (statusCode < 200) return // 1xx: the real answer follows
            status = statusCode
            statusText = statusMessage ?? ''
            headers = h
            init.onResponse?.()
          },
          onResponseData(_c, chunk) {
            chunks.push(chunk)
          },
          onResponseEnd() {
            finish(undefined, answerOf(status, statusText, headers, Buffer.concat(chunks)))
          },
          onResponseError(_c, err) {
            finish(err)
          },
        },
      )
    } catch (err) {
      finish(err)
    }
  })
}

function bodyOf(body: HttpInit['body']): string | Uint8Array | Readable | null {
  if (body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array) return body ?? null
  return Readable.from(body, {objectMode: false})
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
