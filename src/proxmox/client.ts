import {randomBytes} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {stat} from 'node:fs/promises'
import {dirname, isAbsolute, resolve as resolvePath} from 'node:path'

import {BugError, ErrorCode, PgiError, TimeoutError, UnreachableError, UserError} from '../errors.js'
import {sleep} from '../sleep.js'
import {MemoryIo, type Io} from '../io.js'
import type {Hypervisor} from '../inventory/types.js'
import type {Secret} from '../secret.js'
import {armDeadline, DeadlineExceeded} from '../deadline.js'
import {HypervisorDownError, isLockError, PveApiError, PveTaskError, type PveWhere} from './errors.js'
import {CONNECT_TIMEOUT, createTrustedFetch, NetworkError, toNetworkError, type FetchFn, type HttpAnswer, type HttpInit, type PinnedFetch} from './tls.js'
import type {
  AgentExecResult,
  AgentNetworkInterface,
  PveApi,
  PveCloneOptions,
  PveNodeInfo,
  PveParams,
  PveResource,
  PveStorageContent,
  PveTaskStatus,
  PveTaskSummary,
  PveVersion,
  PveVmConfig,
  PveVmStatus,
  WaitOptions,
} from './types.js'
import {parseUpid, tryParseUpid} from './upid.js'

/**
 * The one module that speaks the Proxmox VE API: API-token auth, query or form parameters with
 * booleans as 1/0, the `{data}` envelope (see `exchange` for why no client library does that
 * part), and:
 *
 * - TLS verified by pin or CA (src/proxmox/tls.ts), passed in as `fetch`;
 * - typed errors (PveApiError with status, PVE message, per-parameter errors; PveTaskError);
 * - a deadline on every request (src/deadline.ts) and a breaker: a hypervisor that answers
 *   nothing for a whole deadline (or refuses the TLS pin, or the token) is out of reach for the
 *   rest of the run, and every later request to it fails at once with the same error. This is
 *   the one per-hypervisor time bound of every fleet read and write (status, deploy, rollout,
 *   credentials, destroy), since they all go through one client per hypervisor;
 * - waits and bounded retries with back-off and jitter on "VM is locked (…)" and
 *   "can't lock file … got timeout", and on server faults (a 5xx that names no PVE reason);
 * - no blind re-send of a non-idempotent request: a GET is
 *   retried, a POST/DELETE whose fate is unknown after a network error or a server fault is
 *   *reconciled* by re-reading the state (the task it may have started, the VM, its status) and
 *   sent again only when that shows it was not applied;
 * - a task waiter with per-type default timeouts and the log tail on failure;
 * - multipart upload, streamed, with progress;
 * - guest-agent calls unwrapped (`{data:{result:…}}`), agent exec polled to completion.
 *
 * Paths are built here, each segment percent-encoded (a UPID segment must be fully encoded):
 * typed proxies of the API (proxmox-api's `pve.nodes.$(n).qemu…`) model an older PVE schema,
 * reject the config keys pgi sends (virtio0, ipconfig0, import-from…) and escape only "/".
 */

/** Default task timeouts by task type (ms). Full clones and image copies are long on slow disks. */
export const DEFAULT_TASK_TIMEOUTS_MS: Record<string, number> = {
  qmclone: 2 * 60 * 60_000,
  qmcreate: 60 * 60_000, // may import a disk image (import-from)
  imgcopy: 60 * 60_000, // upload → storage
  download: 4 * 60 * 60_000, // download-url over a slow link
  qmmove: 2 * 60 * 60_000,
  qmtemplate: 30 * 60_000,
  qmsnapshot: 30 * 60_000,
  qmrollback: 30 * 60_000,
  qmdelsnapshot: 30 * 60_000,
  qmdestroy: 20 * 60_000,
  qmresize: 10 * 60_000,
  qmconfig: 30 * 60_000,
  qmstart: 5 * 60_000,
  qmstop: 3 * 60_000,
  qmshutdown: 5 * 60_000, // plus the shutdown timeout asked for
  qmreboot: 5 * 60_000,
}
export const DEFAULT_TASK_TIMEOUT_MS = 15 * 60_000

/**
 * Deadline of one API read until its answer starts (ms): PVE answers a read in milliseconds, so a
 * hypervisor silent for this long is out of reach (the status service uses the same bound).
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 5_000
/** Deadline of one API write (POST/PUT/DELETE: a synchronous config change may take PVE a while). */
export const DEFAULT_WRITE_TIMEOUT_MS = 60_000
/** Deadline of one guest-agent request: PVE itself waits for the agent a few seconds before answering. */
export const DEFAULT_AGENT_REQUEST_TIMEOUT_MS = 30_000
/** After this long (ms), a hypervisor found out of reach is tried again (a run of hours, a node back up). */
export const DEFAULT_BREAKER_COOLDOWN_MS = 5 * 60_000

export interface RetryPolicy {
  /** How long to keep retrying while the VM is locked (ms). Default 10 min. */
  lockTimeoutMs: number
  /** Retries of a request that failed at network level and is safe to repeat. Default 4. */
  networkRetries: number
  /**
   * Retries of a request that got a server fault (a 5xx naming no PVE reason): reads and idempotent
   * writes are sent again; other writes only after re-reading the state shows they were not
   * applied. Default 6: a hypervisor failing one request in five still gets through (one in
   * 78,000 requests fails seven times), at worst ~40 s of back-off for one request.
   */
  serverRetries: number
  /** First back-off delay (ms); doubles each attempt, with ±50 % jitter. Default 1000. */
  baseDelayMs: number
  /** Cap of one back-off delay (ms). Default 15000. */
  maxDelayMs: number
}

export interface ConnectOptions {
  tokenSecret: Secret
  io?: Io
  /** A fetch to use instead of the trusted one built from `hv.tls` (tests, labs). */
  fetch?: FetchFn
  /** Deadline of one API read, until its answer starts (ms). Default DEFAULT_REQUEST_TIMEOUT_MS (5 s). */
  requestTimeoutMs?: number
  /** Deadline of one API write (ms). Default 60 s (never less than requestTimeoutMs). */
  writeTimeoutMs?: number
  /** Deadline of one guest-agent request (ms). Default 30 s (never less than requestTimeoutMs). */
  agentRequestTimeoutMs?: number
  /** How long a hypervisor found out of reach is not asked again (ms). Default 5 min. */
  breakerCooldownMs?: number
  retry?: Partial<RetryPolicy>
  /** Per task-type timeouts overriding DEFAULT_TASK_TIMEOUTS_MS. */
  taskTimeoutsMs?: Record<string, number>
  /** Task status polling: first and largest interval (ms). Default 500 / 5000. */
  poll?: {initialMs?: number; maxMs?: number}
  /** Injectable clock and sleep (tests). */
  now?: () => number
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>
  random?: () => number
}

interface RecordedResponse {
  status: number
  statusText: string
  bodyText?: string
}

interface CallCtx {
  res?: RecordedResponse
  wantBody: boolean
  /** Deadline of this request until its answer starts (ms). */
  timeoutMs: number
  /** The failure of the transport (a network error, the deadline), typed by toTyped. */
  fetchError?: unknown
}

type Params = Record<string, unknown>

/** Sent with every request (PVE's access log shows it). */
const USER_AGENT = 'pgi (Proxmox VE API client)'

/** What a reconcile found after a request whose outcome is unknown. */
type Reconciled = {applied: true; upid?: string} | {applied: false}

interface RequestOptions {
  where: PveWhere
  /** Safe to send again after a network error (GET always is). */
  idempotent?: boolean
  /** Re-reads the state after an ambiguous network error of a non-idempotent request. */
  reconcile?: () => Promise<Reconciled>
  wantBody?: boolean
  /** Do not retry on lock errors (the caller does it around a whole task). */
  noLockRetry?: boolean
}


/** PVE's `urlencoded` format: what sshkeys must look like (PVE::JSONSchema, pve-urlencoded). */
const URLENCODED_RE = /^[-%a-zA-Z0-9_.!~*'()]*$/
/** Config keys PVE declares with `format: urlencoded`: sent percent-encoded, spaces as %20. */
const URLENCODED_KEYS = new Set(['sshkeys'])

/**
 * Turns PveParams into request params: booleans 1/0, undefined dropped, sshkeys percent-encoded.
 * Form encoding of the whole body (`;`, `=`, `&`, `+` → %3B %3D %26 %2B) is formEncode's
 * URLSearchParams.
 */
export function encodeParams(params: Params): Params {
  const out: Params = {}
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue
    if (typeof v === 'boolean') out[k] = v ? 1 : 0
    else if (URLENCODED_KEYS.has(k) && typeof v === 'string') out[k] = URLENCODED_RE.test(v) && !/\s/.test(v) ? v : encodeURIComponent(v)
    else out[k] = v
  }
  return out
}

function seg(s: string | number): string {
  return encodeURIComponent(String(s))
}

const TOKEN_ID_RE = /^[^@\s]+@[^!\s]+![A-Za-z][A-Za-z0-9._-]*$/
const TOKEN_SECRET_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export interface PveClientInit {
  /** Inventory name of the hypervisor. */
  name: string
  url: string
  tokenId: string
  /** Trusted fetch (built from the inventory's TLS settings) or an injected one. */
  fetch: FetchFn
  /** Called by close() (the trusted fetch's connection pool). */
  onClose?: () => Promise<void>
}

export class PveClient implements PveApi {
  readonly hypervisor: string
  readonly baseUrl: URL
  private readonly io: Io
  /** `https://host:port/api2/json`: every API path is appended to it. */
  private readonly apiBase: string
  /** The headers of every API request (the token), and of a form request. */
  private readonly headers: Record<string, string>
  private readonly formHeaders: Record<string, string>
  private readonly baseFetch: FetchFn
  private readonly tokenId: string
  private readonly tokenSecret: Secret
  private readonly requestTimeoutMs: number
  private readonly writeTimeoutMs: number
  private readonly agentRequestTimeoutMs: number
  private readonly breakerCooldownMs: number
  private readonly retry: RetryPolicy
  private readonly taskTimeouts: Record<string, number>
  private readonly pollInitial: number
  private readonly pollMax: number
  private readonly now: () => number
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>
  private readonly random: () => number
  private readonly onClose?: () => Promise<void>
  /** HTTP answers received from this hypervisor so far (any status): tells a silent hypervisor from a slow request. */
  private answers = 0
  /**
   * Tasks this client started or followed: a task found when re-reading the state after a lost
   * request is that request's only if it is none of these (an earlier start of the same VM a few
   * seconds before is not the one a failed start made).
   */
  private readonly knownTasks = new Set<string>()
  /** Set when the hypervisor was found out of reach (the breaker is open): later requests fail at once with it. */
  private down?: {error: PgiError; at: number}
  /**
   * Aborted when the breaker opens or the client is closed: every wait between retries or polls
   * ends then (its next request fails at once), so no sleeping retry outlives the run's last output.
   */
  private wake = new AbortController()
  private closed = false

  constructor(init: PveClientInit, opts: ConnectOptions) {
    this.hypervisor = init.name
    this.io = opts.io ?? new MemoryIo('silent')
    this.baseFetch = init.fetch
    this.onClose = init.onClose
    this.tokenId = init.tokenId
    this.tokenSecret = opts.tokenSecret
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.writeTimeoutMs = Math.max(opts.writeTimeoutMs ?? DEFAULT_WRITE_TIMEOUT_MS, this.requestTimeoutMs)
    this.agentRequestTimeoutMs = Math.max(opts.agentRequestTimeoutMs ?? DEFAULT_AGENT_REQUEST_TIMEOUT_MS, this.requestTimeoutMs)
    this.breakerCooldownMs = opts.breakerCooldownMs ?? DEFAULT_BREAKER_COOLDOWN_MS
    this.retry = {lockTimeoutMs: 10 * 60_000, networkRetries: 4, serverRetries: 6, baseDelayMs: 1000, maxDelayMs: 15_000, ...opts.retry}
    this.taskTimeouts = {...DEFAULT_TASK_TIMEOUTS_MS, ...opts.taskTimeoutsMs}
    this.pollInitial = opts.poll?.initialMs ?? 500
    this.pollMax = opts.poll?.maxMs ?? 5000
    this.now = opts.now ?? Date.now
    this.sleep = opts.sleep ?? sleep
    this.random = opts.random ?? Math.random

    let url: URL
    try {
      url = new URL(init.url)
    } catch {
      throw new UserError(ErrorCode.INVENTORY_INVALID, `hypervisor ${init.name}: API URL "${init.url}" is not a URL`, {where: {hypervisor: init.name}})
    }
    if (url.protocol !== 'https:') {
      throw new UserError(ErrorCode.INVENTORY_INVALID, `hypervisor ${init.name}: API URL must be https:// (got ${init.url})`, {where: {hypervisor: init.name}})
    }
    this.baseUrl = url
    // Validate here: a malformed token would only show as a 401 from every request.
    if (!TOKEN_ID_RE.test(init.tokenId)) {
      throw new UserError(ErrorCode.PVE_AUTH, `hypervisor ${init.name}: API token id "${init.tokenId}" is not USER@REALM!TOKENID`, {
        where: {hypervisor: init.name},
        suggestions: ['Write the token id as shown by `pveum user token list`, e.g. pgi@pve!deploy.'],
      })
    }
    if (!TOKEN_SECRET_RE.test(opts.tokenSecret.reveal())) {
      throw new UserError(ErrorCode.PVE_AUTH, `hypervisor ${init.name}: the API token secret is not a PVE token secret (a lower-case UUID)`, {
        where: {hypervisor: init.name},
        suggestions: ['Store the secret printed by `pveum user token add` (once, at creation) — not the token id.'],
      })
    }
    this.apiBase = `${url.origin}/api2/json`
    this.headers = {Authorization: `PVEAPIToken=${init.tokenId}=${opts.tokenSecret.reveal()}`, Accept: 'application/json', 'User-Agent': USER_AGENT}
    this.formHeaders = {...this.headers, 'Content-Type': 'application/x-www-form-urlencoded'}
  }

  /** Closes the connection pool and ends every wait in progress (lets the process exit promptly). */
  async close(): Promise<void> {
    this.closed = true
    // an explicit reason: abort() without one builds a DOMException with its stack trace, which a
    // fleet-wide run closing a client per hypervisor pays for each of them
    this.wake.abort(CLIENT_CLOSED)
    await this.onClose?.()
  }

  /**
   * Waits `ms` between two attempts or polls, or less: until the breaker opens or the client is
   * closed (the next request then fails at once), or `signal` aborts (its reason is thrown).
   */
  private async pause(ms: number, signal?: AbortSignal): Promise<void> {
    const ac = new AbortController()
    const wake = this.wake.signal
    const onAbort = () => ac.abort()
    if (wake.aborted || signal?.aborted) ac.abort()
    wake.addEventListener('abort', onAbort, {once: true})
    signal?.addEventListener('abort', onAbort, {once: true})
    try {
      await this.sleep(ms, ac.signal)
    } catch {
      if (signal?.aborted) throw signal.reason
    } finally {
      wake.removeEventListener('abort', onAbort)
      signal?.removeEventListener('abort', onAbort)
    }
  }

  // ---------------------------------------------------------------------------------------------
  // transport

  /**
   * One HTTP exchange with the API: the request (query string for GET/DELETE, form body for
   * POST/PUT, as PVE takes them), its deadline until the answer starts (the trusted fetch bounds
   * the body's idle time itself), and the answer recorded in `ctx` (status, reason phrase, and the
   * body for errors or when asked) so that failures are typed without parsing any Error text.
   *
   * Written here rather than left to a generic client library (proxmox-api's engine did it
   * before): it built a URL object, an AbortController and a timer of its own per request on top
   * of ours, a third of pgi's CPU per request on a fleet's status (bench/status, marginal CPU).
   * PVE's API is plain: a token header, form or query parameters, a JSON envelope `{"data": …}`.
   */
  private async exchange(method: string, path: string, params: Params | undefined, ctx: CallCtx): Promise<unknown> {
    let url = this.apiBase + path
    let body: string | undefined
    const form = method === 'POST' || method === 'PUT'
    if (params) {
      const q = formEncode(params)
      if (q && form) body = q
      else if (q) url += (url.includes('?') ? '&' : '?') + q
    }
    const ac = new AbortController()
    const timeoutMs = ctx.timeoutMs
    const cancel = armDeadline(timeoutMs, () => ac.abort(new DeadlineExceeded(timeoutMs)))
    let res: HttpAnswer
    let bodyText: string
    try {
      res = await untilAborted(
        this.baseFetch(url, {
          method,
          headers: body !== undefined ? {...this.formHeaders, 'Content-Length': String(body.length)} : this.headers,
          body: body ?? null,
          signal: ac.signal,
          idleTimeoutMs: Math.max(timeoutMs, DEFAULT_AGENT_REQUEST_TIMEOUT_MS),
          onResponse: cancel,
        }),
        ac.signal,
      )
      cancel()
      // the deadline ended when the answer started; the body's pauses are bounded by the
      // transport (idleTimeoutMs), so no second race with the signal here
      bodyText = await res.text()
    } catch (err) {
      ctx.fetchError = err
      throw err
    } finally {
      cancel()
    }
    this.answers++
    if (res.status !== 200) {
      ctx.res = {status: res.status, statusText: decodeReason(res.statusText), bodyText}
      throw new Error(`HTTP ${res.status}`)
    }
    ctx.res = ctx.wantBody ? {status: 200, statusText: res.statusText, bodyText} : {status: 200, statusText: res.statusText}
    const ct = res.headers.get('content-type')
    // an answer without a body type carries no data (PVE sends none for some empty answers)
    if (!ct) return null
    if (!/^application\/json/i.test(ct)) throw new Error(`unexpected content type "${ct}"`)
    let envelope: unknown
    try {
      envelope = JSON.parse(bodyText)
    } catch {
      throw new Error('the answer is not JSON')
    }
    return envelope && typeof envelope === 'object' ? ((envelope as {data?: unknown}).data ?? null) : null
  }

  private backoff(attempt: number): number {
    const d = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** attempt)
    return Math.round(d * (0.5 + this.random() * 0.5))
  }

  /** The deadline of one request: guest-agent calls, reads, writes. */
  private deadlineFor(method: string, path: string): number {
    if (/\/agent\//.test(path)) return this.agentRequestTimeoutMs
    return method === 'GET' ? this.requestTimeoutMs : this.writeTimeoutMs
  }

  /** One request, no retry. Returns the envelope's data (and the raw body when asked). */
  private async once<T>(method: string, path: string, params: Params | undefined, o: RequestOptions): Promise<{data: T; body?: unknown}> {
    const ctx: CallCtx = {wantBody: Boolean(o.wantBody), timeoutMs: this.deadlineFor(method, path)}
    const started = this.now()
    try {
      const data = (await this.exchange(method, path, params ? encodeParams(params) : undefined, ctx)) as T
      this.io.debug(`PVE ${method} ${path} → ${ctx.res?.status ?? '?'}`, {hypervisor: this.hypervisor, ms: this.now() - started})
      let body: unknown
      if (o.wantBody && ctx.res?.bodyText) body = safeJson(ctx.res.bodyText)
      return {data, body}
    } catch (err) {
      throw this.toTyped(ctx.fetchError ?? err, ctx, method, path, o.where)
    }
  }

  private toTyped(err: unknown, ctx: CallCtx, method: string, path: string, where: PveWhere): PgiError {
    const res = ctx.res
    if (res && res.status !== 200) {
      const body = res.bodyText ? safeJson(res.bodyText) : undefined
      const errors = body && typeof body === 'object' && 'errors' in body ? (body as {errors: unknown}).errors : undefined
      const parameterErrors: Record<string, string> = {}
      if (errors && typeof errors === 'object') for (const [k, v] of Object.entries(errors)) parameterErrors[k] = String(v)
      // The full message is in the body's "message" when there is one (the reason phrase is a
      // single header line), else in the reason phrase; a body without JSON may be plain text.
      const bodyMsg = body && typeof body === 'object' && typeof (body as {message?: unknown}).message === 'string' ? (body as {message: string}).message.trim() : ''
      const pveMessage = bodyMsg || res.statusText || (typeof body === 'string' ? body.trim() : '') || `HTTP ${res.status}`
      const e = new PveApiError({status: res.status, pveMessage: pveMessage.trim(), method, path, parameterErrors, where, cause: err})
      this.io.debug(`PVE ${method} ${path} → ${res.status} ${pveMessage}`, {hypervisor: this.hypervisor})
      return e
    }
    // A transport failure may wrap ours as its cause.
    let c: unknown = err
    for (let i = 0; i < 4 && c; i++) {
      if (c instanceof PgiError) return withWhere(c, where)
      if ((c as Error).name === 'AbortError' || (c as Error).name === 'TimeoutError') {
        const ms = c instanceof DeadlineExceeded ? c.timeoutMs : ctx.timeoutMs
        const e = new NetworkError(this.hostport(), 'ETIMEDOUT', `no answer to ${method} ${path} within ${ms} ms`, false, err)
        ;(e as {details?: Record<string, unknown>}).details = {...e.details, timeoutMs: ms}
        return withWhere(e, where)
      }
      c = (c as {cause?: unknown}).cause
    }
    if (res && res.status === 200) {
      return new PveApiError({status: 200, pveMessage: `unexpected answer: ${(err as Error).message}`, method, path, where, cause: err})
    }
    // Anything else thrown by an injected fetch (e.g. undici's "fetch failed"): classify its errno.
    return withWhere(toNetworkError((err as {cause?: unknown})?.cause ?? err, this.hostport()), where)
  }

  private hostport(): string {
    return `${this.baseUrl.hostname}:${this.baseUrl.port || 443}`
  }

  /** Fails at once when the breaker is open (the hypervisor was found out of reach in this run). */
  private checkDown(where: PveWhere): void {
    if (this.closed) throw new UnreachableError(ErrorCode.UNREACHABLE, `the connection to ${this.hypervisor} was closed at the end of the run`, {where})
    if (!this.down) return
    if (this.now() - this.down.at < this.breakerCooldownMs) throw new HypervisorDownError(this.down.error, where)
    this.io.debug(`hypervisor ${this.hypervisor}: trying again after it was found out of reach`, {since: new Date(this.down.at).toISOString()})
    this.down = undefined
  }

  /** Opens the breaker: the hypervisor is out of reach for this run (see the module comment). */
  private trip(err: PgiError): void {
    if (this.down) return
    this.down = {error: err, at: this.now()}
    this.wake.abort(CLIENT_CLOSED)
    this.wake = new AbortController()
    this.io.debug(`hypervisor ${this.hypervisor} out of reach: not asking it again in this run`, {code: err.code, cause: err.message})
  }

  /**
   * A request with the retry policy: lock errors are waited out (bounded, back-off + jitter);
   * network errors are retried only when the request certainly was not sent or is idempotent;
   * otherwise the state is re-read (`reconcile`) instead of sending it again. Server faults (a 5xx
   * naming no PVE reason) are retried for idempotent requests, and for others only once a re-read
   * shows they were not applied. A hypervisor that answers nothing for a whole deadline, refuses
   * the pinned certificate or the token opens the breaker.
   */
  private async request<T>(method: string, path: string, params: Params | undefined, o: RequestOptions): Promise<{data: T; body?: unknown; reconciled?: Reconciled}> {
    const idempotent = method === 'GET' || o.idempotent === true
    const lockStart = this.now()
    const started = this.now()
    const answersAtStart = this.answers
    let netAttempt = 0
    let lockAttempt = 0
    let serverAttempt = 0
    for (;;) {
      this.checkDown(o.where)
      const answersBefore = this.answers
      try {
        return await this.once<T>(method, path, params, o)
      } catch (err) {
        if (err instanceof HypervisorDownError) throw err
        if (err instanceof PgiError && (err.code === ErrorCode.TLS_MISMATCH || err.code === ErrorCode.PVE_AUTH)) {
          this.trip(err)
          throw err
        }
        if (err instanceof NetworkError && err.code === ErrorCode.UNREACHABLE) {
          // silent for a whole deadline (no connection, or no answer to a read nor to any other
          // request meanwhile), or refusing connections for as long: out of reach for this run, not
          // asked again. A write may take PVE long (a synchronous config change importing a disk):
          // its own timeout says nothing of the hypervisor.
          const silentTimeout = (err.errno === CONNECT_TIMEOUT || (err.errno === 'ETIMEDOUT' && method === 'GET')) && this.answers === answersBefore
          const silentTooLong = this.answers === answersAtStart && this.now() - started + this.backoff(netAttempt) >= this.requestTimeoutMs
          if (silentTimeout || (err.notSent && silentTooLong)) {
            this.trip(err)
            if (!idempotent && !err.notSent) throw this.outcomeUnknown(method, path, err, o.where)
            throw err
          }
          if ((err.notSent || idempotent) && netAttempt < this.retry.networkRetries) {
            const d = this.backoff(netAttempt++)
            this.io.warn(`${err.message}; retrying in ${(d / 1000).toFixed(1)} s`, {hypervisor: this.hypervisor})
            await this.pause(d)
            continue
          }
          if (!err.notSent && !idempotent) {
            if (!o.reconcile) throw this.outcomeUnknown(method, path, err, o.where)
            this.io.warn(`${method} ${path}: connection lost after sending; re-reading the state instead of sending it again`, {hypervisor: this.hypervisor, ...o.where})
            // Give a request still in flight on the server time to register its task first.
            await this.pause(this.retry.baseDelayMs)
            const r = await o.reconcile()
            if (r.applied) return {data: (r.upid ?? null) as T, reconciled: r}
            throw new UnreachableError(ErrorCode.UNREACHABLE, `${method} ${path}: the connection failed, and re-reading the state shows the request was not applied (${err.message})`, {
              where: o.where,
              cause: err,
              suggestions: ['Nothing was changed: run the command again once the hypervisor is reachable.'],
            })
          }
          if (this.answers === answersAtStart) this.trip(err)
          throw err
        }
        if (err instanceof PveApiError && err.isServerFault) {
          if (serverAttempt < this.retry.serverRetries && (idempotent || o.reconcile)) {
            const d = this.backoff(serverAttempt++)
            this.io.debug(`${method} ${path}: ${err.status} ${err.pveMessage}; ${idempotent ? 'sending it again' : 're-reading the state'} in ${(d / 1000).toFixed(1)} s`, {hypervisor: this.hypervisor, ...o.where})
            await this.pause(d)
            if (!idempotent) {
              // never sent again blindly: what the hypervisor holds says whether it was applied
              const r = await o.reconcile!()
              if (r.applied) return {data: (r.upid ?? null) as T, reconciled: r}
              this.io.debug(`${method} ${path}: not applied (re-read): sending it again`, {hypervisor: this.hypervisor, ...o.where})
            }
            continue
          }
          throw serverAttempt > 0 ? err.withAttempts(serverAttempt + 1) : err
        }
        if (!o.noLockRetry && isLockError(err) && this.now() - lockStart < this.retry.lockTimeoutMs) {
          const d = this.backoff(lockAttempt++)
          this.io.info(`${(err as PveApiError).pveMessage}: waiting ${(d / 1000).toFixed(1)} s before trying again`, {hypervisor: this.hypervisor, ...o.where})
          await this.pause(d)
          continue
        }
        if (isLockError(err)) throw lockGaveUp(err as PgiError, this.now() - lockStart)
        throw err
      }
    }
  }

  /** A write that may or may not have been applied, with no state to re-read. */
  private outcomeUnknown(method: string, path: string, err: PgiError, where: PveWhere): UnreachableError {
    return new UnreachableError(ErrorCode.UNREACHABLE, `${method} ${path}: the connection failed and pgi cannot tell whether the hypervisor applied the request (${err.message})`, {
      where,
      cause: err,
      suggestions: ['Check the state on the hypervisor (Tasks panel), then run the command again.'],
    })
  }

  private get<T>(path: string, params: Params | undefined, where: PveWhere): Promise<T> {
    return this.request<T>('GET', path, params, {where}).then((r) => r.data)
  }

  private where(node?: string, vmid?: number): PveWhere {
    return {hypervisor: this.hypervisor, ...(node ? {node} : {}), ...(vmid !== undefined ? {vmid} : {})}
  }

  // ---------------------------------------------------------------------------------------------
  // tasks

  private taskTimeout(type: string): number {
    return this.taskTimeouts[type] ?? DEFAULT_TASK_TIMEOUT_MS
  }

  async waitTask(node: string, upid: string, wait: WaitOptions = {}): Promise<PveTaskStatus> {
    let u
    try {
      u = parseUpid(upid)
    } catch (err) {
      throw new PveApiError({status: 200, pveMessage: `expected a task id, got ${JSON.stringify(upid)}`, method: 'GET', path: `/nodes/${node}/tasks`, where: this.where(node), cause: err})
    }
    const vmid = /^\d+$/.test(u.id) ? Number(u.id) : undefined
    const where = this.where(u.node || node, vmid)
    this.rememberTask(upid)
    const timeout = wait.timeoutMs ?? this.taskTimeout(u.type)
    const start = this.now()
    let delay = this.pollInitial
    const path = `/nodes/${seg(u.node || node)}/tasks/${seg(upid)}/status`
    for (;;) {
      if (wait.signal?.aborted) throw wait.signal.reason
      const st = await this.get<PveTaskStatus>(path, undefined, where).catch((err: unknown) => {
        throw this.taskUnknown(err, u.type, upid, where)
      })
      if (st.status === 'stopped') {
        const exit = st.exitstatus ?? ''
        if (exit === 'OK' || /^WARNINGS: \d+$/.test(exit)) {
          if (exit !== 'OK') {
            const tail = await this.taskLogTail(u.node || node, upid, 10).catch(() => [])
            this.io.warn(`task ${u.type} ended with ${exit}`, {...where, log: tail.join(' | ')})
          }
          return {...st, upid, node: u.node || node, type: st.type ?? u.type, starttime: st.starttime ?? u.starttime}
        }
        const logTail = await this.taskLogTail(u.node || node, upid, 20).catch(() => [])
        throw new PveTaskError({upid, taskType: u.type, exitstatus: exit || '(no exit status)', logTail, where})
      }
      const elapsed = this.now() - start
      if (elapsed >= timeout) {
        throw new TimeoutError(`task ${u.type} still running after ${Math.round(elapsed / 1000)} s (limit ${Math.round(timeout / 1000)} s)`, {
          where,
          details: {upid, taskType: u.type, timeoutMs: timeout},
          suggestions: [
            'The task goes on running on the hypervisor: check it in its Tasks panel before doing anything else with this VM.',
            `Allow more time for ${u.type} tasks if the storage or link is slow (task timeout option).`,
          ],
        })
      }
      wait.onProgress?.(`${u.type} running (${Math.round(elapsed / 1000)} s)`)
      await this.pause(Math.min(delay, Math.max(0, timeout - elapsed)), wait.signal)
      delay = Math.min(this.pollMax, Math.round(delay * 1.5))
    }
  }

  /**
   * The status of a started task could not be read (after the retries of `get`): the task itself
   * may have succeeded, so the failure is named for what it is. An unreachable hypervisor is left
   * as it is (its own code and exit status say what happened).
   */
  private taskUnknown(err: unknown, type: string, upid: string, where: PveWhere): unknown {
    if (!(err instanceof PgiError) || err.code === ErrorCode.UNREACHABLE || err.code === ErrorCode.TLS_MISMATCH) return err
    return new UserError(ErrorCode.PVE_TASK_UNKNOWN, `task ${type} was started, but its status could not be read: ${err.message}`, {
      where,
      cause: err,
      exitCode: err.exitCode,
      details: {upid, taskType: type},
      suggestions: [
        'The task may have finished on the hypervisor: run the command again, it carries on from what the hypervisor holds.',
        `Or look at the task there: pvenode task status ${upid}`,
      ],
    })
  }

  async taskLog(node: string, upid: string, opts: {start?: number; limit?: number} = {}): Promise<string[]> {
    const u = tryParseUpid(upid)
    const lines = await this.get<{n: number; t: string}[]>(`/nodes/${seg(u?.node ?? node)}/tasks/${seg(upid)}/log`, {start: opts.start ?? 0, limit: opts.limit ?? 500}, this.where(node))
    return (lines ?? []).map((l) => l.t)
  }

  /** The last `n` lines of a task log (PVE gives the line count as `total` beside `data`). */
  async taskLogTail(node: string, upid: string, n: number): Promise<string[]> {
    const u = tryParseUpid(upid)
    const path = `/nodes/${seg(u?.node ?? node)}/tasks/${seg(upid)}/log`
    const first = await this.request<{n: number; t: string}[]>('GET', path, {start: 0, limit: n}, {where: this.where(node), wantBody: true})
    const total = typeof (first.body as {total?: unknown})?.total === 'number' ? (first.body as {total: number}).total : (first.data ?? []).length
    let lines = first.data ?? []
    if (total > n) lines = (await this.request<{n: number; t: string}[]>('GET', path, {start: total - n, limit: n}, {where: this.where(node)})).data ?? []
    return lines.map((l) => l.t).filter((t) => t !== 'no content')
  }

  /** Recent tasks on a node (newest first), e.g. to find the task a lost request started. */
  async listTasks(node: string, filter: {vmid?: number; type?: string; since?: number; limit?: number} = {}): Promise<PveTaskSummary[]> {
    const rows = await this.get<PveTaskSummary[]>(
      `/nodes/${seg(node)}/tasks`,
      {vmid: filter.vmid, typefilter: filter.type, since: filter.since, limit: filter.limit ?? 50, source: 'all'},
      this.where(node, filter.vmid),
    )
    return rows ?? []
  }

  private rememberTask(upid: string): void {
    this.knownTasks.add(upid)
    if (this.knownTasks.size > 10_000) this.knownTasks.delete(this.knownTasks.values().next().value!)
  }

  /**
   * Finds a task of `type` (our token's, started since `sinceMs`, give or take 5 s of clock skew)
   * that an unanswered request may have started: not one this client already knows.
   */
  private async findStartedTask(node: string, type: string, id: number | string | undefined, sinceMs: number): Promise<string | undefined> {
    const tasks = await this.listTasks(node, {type, vmid: typeof id === 'number' ? id : undefined, since: Math.floor(sinceMs / 1000) - 5})
    const user = this.tokenId.split('!')[0]
    const mine = tasks.filter((t) => t.type === type && (id === undefined || String(t.id) === String(id)) && (t.user === this.tokenId || t.user === user) && t.starttime * 1000 >= sinceMs - 5000 && !this.knownTasks.has(t.upid))
    return mine.sort((a, b) => b.starttime - a.starttime)[0]?.upid
  }

  /**
   * POST/DELETE that returns a UPID, then wait for the task. Lock errors (from the call or the
   * task) are retried within the lock budget; after an ambiguous network error, `state` and the
   * node's task list say whether the request was applied.
   */
  private async runTask(
    method: 'POST' | 'DELETE' | 'PUT',
    node: string,
    path: string,
    params: Params | undefined,
    o: {where: PveWhere; type: string; taskId?: number | string; state?: () => Promise<boolean>; wait?: WaitOptions; idempotent?: boolean},
  ): Promise<void> {
    const lockStart = this.now()
    let attempt = 0
    for (;;) {
      if (o.wait?.signal?.aborted) throw o.wait.signal.reason
      const sent = this.now()
      const reconcile = async (): Promise<Reconciled> => {
        const upid = await this.findStartedTask(node, o.type, o.taskId, sent)
        if (upid) return {applied: true, upid}
        if (o.state && (await o.state())) return {applied: true}
        return {applied: false}
      }
      try {
        const r = await this.request<unknown>(method, path, params, {where: o.where, reconcile, idempotent: o.idempotent})
        const upid = r.data
        if (typeof upid === 'string') this.rememberTask(upid)
        if (typeof upid === 'string' && tryParseUpid(upid)) await this.waitTask(node, upid, o.wait)
        else if (r.reconciled === undefined && upid !== null && upid !== undefined) {
          this.io.debug(`PVE ${method} ${path} returned no task id`, {data: upid})
        }
        return
      } catch (err) {
        if (err instanceof PveTaskError && err.isLocked && this.now() - lockStart < this.retry.lockTimeoutMs) {
          const d = this.backoff(attempt++)
          this.io.info(`${o.type}: ${err.exitstatus}; trying again in ${(d / 1000).toFixed(1)} s`, o.where)
          await this.pause(d, o.wait?.signal)
          continue
        }
        if (err instanceof PveTaskError && err.isLocked) throw lockGaveUp(err, this.now() - lockStart)
        throw err
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // cluster, nodes

  version(): Promise<PveVersion> {
    return this.get<PveVersion>('/version', undefined, this.where())
  }

  async nodes(): Promise<PveNodeInfo[]> {
    return (await this.get<PveNodeInfo[]>('/nodes', undefined, this.where())) ?? []
  }

  async clusterResources(type?: 'vm' | 'storage' | 'node'): Promise<PveResource[]> {
    return (await this.get<PveResource[]>('/cluster/resources', {type}, this.where())) ?? []
  }

  async nextVmid(): Promise<number> {
    const v = await this.get<string | number>('/cluster/nextid', undefined, this.where())
    const n = Number(v)
    if (!Number.isInteger(n)) throw new PveApiError({status: 200, pveMessage: `unexpected next id ${JSON.stringify(v)}`, method: 'GET', path: '/cluster/nextid', where: this.where()})
    return n
  }

  // ---------------------------------------------------------------------------------------------
  // VMs

  private vmPath(node: string, vmid: number, rest = ''): string {
    return `/nodes/${seg(node)}/qemu/${seg(vmid)}${rest}`
  }

  async vmConfig(node: string, vmid: number): Promise<PveVmConfig | undefined> {
    try {
      return await this.get<PveVmConfig>(this.vmPath(node, vmid, '/config'), undefined, this.where(node, vmid))
    } catch (err) {
      if (isNoSuchVm(err)) return undefined
      throw err
    }
  }

  async vmStatus(node: string, vmid: number): Promise<PveVmStatus | undefined> {
    try {
      return await this.get<PveVmStatus>(this.vmPath(node, vmid, '/status/current'), undefined, this.where(node, vmid))
    } catch (err) {
      if (isNoSuchVm(err)) return undefined
      throw err
    }
  }

  /** Waits until the VM carries no lock (after a create/clone whose task we could not follow). */
  private async waitUnlocked(node: string, vmid: number, type: string): Promise<boolean> {
    const start = this.now()
    let d = this.pollInitial
    for (;;) {
      const st = await this.vmStatus(node, vmid)
      if (!st) return false
      if (!st.lock) return true
      if (this.now() - start > this.taskTimeout(type)) {
        throw new TimeoutError(`VM ${vmid} still locked (${st.lock}) after ${Math.round((this.now() - start) / 1000)} s`, {where: this.where(node, vmid)})
      }
      await this.pause(d)
      d = Math.min(this.pollMax, Math.round(d * 1.5))
    }
  }

  async createVm(node: string, vmid: number, params: PveParams, wait?: WaitOptions): Promise<void> {
    const where = this.where(node, vmid)
    await this.runTask('POST', node, `/nodes/${seg(node)}/qemu`, {...params, vmid}, {
      where,
      type: 'qmcreate',
      taskId: vmid,
      wait,
      state: async () => ((await this.vmConfig(node, vmid)) ? this.waitUnlocked(node, vmid, 'qmcreate') : false),
    })
  }

  async cloneVm(node: string, vmid: number, newid: number, opts: PveCloneOptions = {}, wait?: WaitOptions): Promise<void> {
    const where = this.where(node, newid)
    await this.runTask('POST', node, this.vmPath(node, vmid, '/clone'), {newid, name: opts.name, full: opts.full, storage: opts.storage, target: opts.target, description: opts.description}, {
      where,
      type: 'qmclone',
      taskId: vmid,
      wait,
      state: async () => ((await this.vmConfig(opts.target ?? node, newid)) ? this.waitUnlocked(opts.target ?? node, newid, 'qmclone') : false),
    })
  }

  async convertToTemplate(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/template'), undefined, {
      where: this.where(node, vmid),
      type: 'qmtemplate',
      taskId: vmid,
      wait,
      state: async () => Number((await this.vmConfig(node, vmid))?.template ?? 0) === 1,
    })
  }

  async updateVmConfig(node: string, vmid: number, params: PveParams & {digest?: string; delete?: string}, wait?: WaitOptions): Promise<void> {
    // PUT …/config is synchronous and idempotent (same values again; with `digest`, a second
    // send after a lost answer fails with "checksum mismatch" instead of applying twice).
    void wait
    await this.request('PUT', this.vmPath(node, vmid, '/config'), params, {where: this.where(node, vmid), idempotent: true})
  }

  async startVm(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    try {
      await this.runTask('POST', node, this.vmPath(node, vmid, '/status/start'), undefined, {
        where: this.where(node, vmid),
        type: 'qmstart',
        taskId: vmid,
        wait,
        state: async () => (await this.vmStatus(node, vmid))?.status === 'running',
      })
    } catch (err) {
      if (err instanceof PveApiError && /already running/.test(err.pveMessage)) return
      throw err
    }
  }

  async shutdownVm(node: string, vmid: number, opts: WaitOptions & {forceStopAfterS?: number} = {}): Promise<void> {
    const timeoutS = opts.forceStopAfterS
    try {
      await this.runTask('POST', node, this.vmPath(node, vmid, '/status/shutdown'), timeoutS === undefined ? undefined : {timeout: timeoutS, forceStop: true}, {
        where: this.where(node, vmid),
        type: 'qmshutdown',
        taskId: vmid,
        wait: {...opts, timeoutMs: opts.timeoutMs ?? this.taskTimeout('qmshutdown') + (timeoutS ?? 0) * 1000},
        state: async () => (await this.vmStatus(node, vmid))?.status === 'stopped',
      })
    } catch (err) {
      if (err instanceof PveApiError && /not running/.test(err.pveMessage)) return
      if (err instanceof PveTaskError && /not running/.test(err.exitstatus)) return
      throw err
    }
  }

  async stopVm(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/status/stop'), undefined, {
      where: this.where(node, vmid),
      type: 'qmstop',
      taskId: vmid,
      wait,
      state: async () => (await this.vmStatus(node, vmid))?.status === 'stopped',
    })
  }

  async deleteVm(node: string, vmid: number, opts: {purge: boolean; destroyUnreferencedDisks: boolean}, wait?: WaitOptions): Promise<void> {
    try {
      await this.runTask('DELETE', node, this.vmPath(node, vmid), {purge: opts.purge, 'destroy-unreferenced-disks': opts.destroyUnreferencedDisks}, {
        where: this.where(node, vmid),
        type: 'qmdestroy',
        taskId: vmid,
        wait,
        state: async () => (await this.vmConfig(node, vmid)) === undefined,
      })
    } catch (err) {
      if (isNoSuchVm(err)) return // already gone: what was asked is so
      throw err
    }
  }

  async resizeDisk(node: string, vmid: number, disk: string, size: string, wait?: WaitOptions): Promise<void> {
    // PVE ≥ 7.4 returns a task (qmresize); an absolute size is idempotent, "+NG" is not.
    await this.runTask('PUT', node, this.vmPath(node, vmid, '/resize'), {disk, size}, {
      where: this.where(node, vmid),
      type: 'qmresize',
      taskId: vmid,
      wait,
      idempotent: !size.startsWith('+'),
    })
  }

  async snapshot(node: string, vmid: number, name: string, description?: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/snapshot'), {snapname: name, description}, {
      where: this.where(node, vmid),
      type: 'qmsnapshot',
      taskId: vmid,
      wait,
      state: async () => (await this.listSnapshots(node, vmid)).some((s) => s.name === name),
    })
  }

  async rollbackSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, `/snapshot/${seg(name)}/rollback`), undefined, {
      where: this.where(node, vmid),
      type: 'qmrollback',
      taskId: vmid,
      wait,
    })
  }

  async deleteSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('DELETE', node, this.vmPath(node, vmid, `/snapshot/${seg(name)}`), undefined, {
      where: this.where(node, vmid),
      type: 'qmdelsnapshot',
      taskId: vmid,
      wait,
      state: async () => !(await this.listSnapshots(node, vmid)).some((s) => s.name === name),
    })
  }

  async listSnapshots(node: string, vmid: number): Promise<{name: string; snaptime?: number; description?: string}[]> {
    const rows = await this.get<{name: string; snaptime?: number; description?: string}[]>(this.vmPath(node, vmid, '/snapshot'), undefined, this.where(node, vmid))
    return (rows ?? []).filter((r) => r.name !== 'current')
  }

  async regenerateCloudinit(node: string, vmid: number): Promise<void> {
    await this.request('PUT', this.vmPath(node, vmid, '/cloudinit'), undefined, {where: this.where(node, vmid), idempotent: true})
  }

  // ---------------------------------------------------------------------------------------------
  // guest agent

  private async agent<T>(method: 'GET' | 'POST', node: string, vmid: number, cmd: string, params?: Params, idempotent = true): Promise<T> {
    const r = await this.request<unknown>(method, this.vmPath(node, vmid, `/agent/${cmd}`), params, {where: this.where(node, vmid), idempotent})
    const d = r.data
    return (d && typeof d === 'object' && 'result' in d ? (d as {result: unknown}).result : d) as T
  }

  async agentPing(node: string, vmid: number): Promise<boolean> {
    try {
      await this.agent('POST', node, vmid, 'ping')
      return true
    } catch (err) {
      if (err instanceof PveApiError && err.status === 500 && /agent|not running|timeout|got timeout|No QMP/i.test(err.pveMessage)) return false
      throw err
    }
  }

  async agentNetworkInterfaces(node: string, vmid: number): Promise<AgentNetworkInterface[]> {
    return (await this.agent<AgentNetworkInterface[]>('GET', node, vmid, 'network-get-interfaces')) ?? []
  }

  async agentFsInfo(node: string, vmid: number): Promise<unknown[]> {
    return (await this.agent<unknown[]>('GET', node, vmid, 'get-fsinfo')) ?? []
  }

  async agentExec(node: string, vmid: number, command: string[], opts: {inputData?: string; timeoutMs?: number; idempotent?: boolean} = {}): Promise<AgentExecResult> {
    if (command.length === 0) throw new UserError(ErrorCode.USAGE, 'agentExec: empty command')
    if (opts.inputData !== undefined && /[^\x00-\x7e]/.test(opts.inputData)) {
      // PVE base64-encodes input-data as bytes: non-ASCII text would be mangled or refused.
      throw new BugError('agentExec: inputData must be ASCII (PVE re-encodes it); send JSON made with asciiJson()')
    }
    // Unless the caller says the command may run twice (a read-only check, a convergent
    // configuration), a command whose start was not confirmed is not sent again: it may run.
    const started = await this.agent<{pid: number}>('POST', node, vmid, 'exec', {command, 'input-data': opts.inputData}, opts.idempotent === true)
    const pid = started?.pid
    if (typeof pid !== 'number') throw new PveApiError({status: 200, pveMessage: `agent exec returned no pid (${JSON.stringify(started)})`, method: 'POST', path: this.vmPath(node, vmid, '/agent/exec'), where: this.where(node, vmid)})
    const timeout = opts.timeoutMs ?? 5 * 60_000
    const start = this.now()
    let d = Math.min(this.pollInitial, 250)
    for (;;) {
      const st = await this.agent<{exited: number | boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string; 'out-truncated'?: number | boolean; 'err-truncated'?: number | boolean}>('GET', node, vmid, 'exec-status', {pid})
      if (st && (st.exited === 1 || st.exited === true)) {
        return {
          exitcode: st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : -1),
          stdout: decodeReason(st['out-data'] ?? ''),
          stderr: decodeReason(st['err-data'] ?? ''),
          truncated: Boolean(st['out-truncated']) || Boolean(st['err-truncated']),
        }
      }
      if (this.now() - start > timeout) {
        throw new TimeoutError(`guest command ${command[0]} (pid ${pid}) still running after ${Math.round(timeout / 1000)} s`, {
          where: this.where(node, vmid),
          suggestions: ['The command goes on in the guest; check it there before running it again.'],
        })
      }
      await this.pause(d)
      d = Math.min(this.pollMax, Math.round(d * 1.5))
    }
  }

  async agentFileWrite(node: string, vmid: number, file: string, content: string): Promise<void> {
    // Encoded here (encode=0): PVE's own base64 step works on bytes and would mangle or refuse
    // non-ASCII text. Writing the same content twice is harmless (idempotent).
    const b64 = Buffer.from(content, 'utf8').toString('base64')
    if (b64.length > 61_440) {
      throw new UserError(ErrorCode.USAGE, `agentFileWrite: ${file} is too large for the guest agent (${Buffer.byteLength(content)} bytes; PVE takes at most 45 KiB)`, {where: this.where(node, vmid)})
    }
    await this.agent('POST', node, vmid, 'file-write', {file, content: b64, encode: false}, true)
  }

  async agentFileRead(node: string, vmid: number, file: string): Promise<string> {
    const r = await this.agent<{content: string; truncated?: number | boolean}>('GET', node, vmid, 'file-read', {file})
    if (r?.truncated) this.io.warn(`guest file ${file} was truncated by the agent (16 MiB limit)`, this.where(node, vmid))
    return decodeReason(r?.content ?? '')
  }

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

/**
 * Text whose UTF-8 bytes were read as latin1 characters, back to what was meant: HTTP reason
 * phrases (PVE's are UTF-8), and guest-agent output, which PVE base64-decodes to bytes and then
 * serialises as if each byte were a character. Text that is not such mojibake is returned as is.
 */
export function decodeReason(text: string): string {
  if (!/[\x80-\xff]/.test(text) || /[^\x00-\xff]/.test(text)) return text
  const utf8 = Buffer.from(text, 'latin1').toString('utf8')
  return utf8.includes('\ufffd') ? text : utf8
}

/**
 * JSON for a guest command's stdin (`agentExec` inputData): PVE base64-encodes input-data as
 * bytes and fails on characters beyond latin1, so every non-ASCII character is escaped (\uXXXX),
 * which any JSON reader turns back into the same text.
 */
export function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/**
 * Parameters as PVE reads them (application/x-www-form-urlencoded, for a query string or a form
 * body): booleans as 1/0 (encodeParams did it), a list as the same key repeated.
 */
function formEncode(params: Params): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue
    if (Array.isArray(v)) for (const e of v) q.append(k, String(e))
    else q.set(k, String(v))
  }
  return q.toString()
}

/** `p`, or a rejection with the signal's reason as soon as it aborts (whatever `p` does then). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => undefined)
    return Promise.reject(signal.reason)
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, {once: true})
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

function withWhere(e: PgiError, where: PveWhere): PgiError {
  if (!e.where) (e as {where?: PveWhere}).where = where
  return e
}

function isNoSuchVm(err: unknown): boolean {
  // PVE: "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"
  return err instanceof PveApiError && err.status === 500 && /Configuration file '[^']*qemu-server\/\d+\.conf' does not exist/.test(err.pveMessage)
}

function lockGaveUp(err: PgiError, elapsedMs: number): PgiError {
  const msg = err instanceof PveApiError ? err.pveMessage : err instanceof PveTaskError ? err.exitstatus : err.message
  return new UserError(ErrorCode.PVE_LOCKED, `still locked after ${Math.round(elapsedMs / 1000)} s of retries: ${msg}`, {
    where: err.where,
    cause: err,
    details: err.details,
    suggestions: [
      'Another operation holds the VM lock: let it finish (Tasks panel of the hypervisor) and run the command again.',
      'If no task is running, the lock may be stale: check, then `qm unlock <vmid>` on the node.',
    ],
  })
}

/** The reason the client's waits are woken with (see close and trip); never thrown to callers. */
const CLIENT_CLOSED = Object.freeze({name: 'ClientClosed', message: 'the client was closed or its hypervisor found out of reach'})

/**
 * Opens a client for one inventory hypervisor: TLS pinned to `hv.tls.fingerprint`, or verified
 * against `hv.tls.caFile` (relative to the hypervisor's YAML file), or against the system CAs.
 */
export function connectHypervisor(hv: Hypervisor, opts: ConnectOptions): PveClient {
  let fetch = opts.fetch
  let pool: PinnedFetch | undefined
  if (!fetch) {
    const caFile = hv.tls.caFile && !isAbsolute(hv.tls.caFile) && hv.source?.file ? resolvePath(dirname(hv.source.file), hv.tls.caFile) : hv.tls.caFile
    try {
      // a connection that does not even open within a read's deadline is a silent hypervisor
      pool = createTrustedFetch({fingerprint: hv.tls.fingerprint, caFile}, {connectTimeoutMs: Math.min(10_000, opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS)})
    } catch (err) {
      throw withWhere(err instanceof PgiError ? err : new UserError(ErrorCode.INVENTORY_INVALID, String(err)), {hypervisor: hv.name})
    }
    fetch = pool.fetch
  }
  return new PveClient({name: hv.name, url: hv.url, tokenId: hv.token.id, fetch, onClose: pool ? () => pool!.close() : undefined}, opts)
}
