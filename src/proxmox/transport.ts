import {ErrorCode, PgiError, UnreachableError, UserError} from '../errors.js'
import {sleep} from '../sleep.js'
import {MemoryIo, type Io} from '../io.js'
import type {Secret} from '../secret.js'
import {armDeadline, DeadlineExceeded} from '../deadline.js'
import {HypervisorDownError, isLockError, PveApiError, PveTaskError, type PveWhere} from './errors.js'
import {CONNECT_TIMEOUT, NetworkError, toNetworkError, type FetchFn, type HttpAnswer, type HttpInit} from './tls.js'
import {DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_TASK_TIMEOUTS_MS, DEFAULT_WRITE_TIMEOUT_MS, DEFAULT_AGENT_REQUEST_TIMEOUT_MS, DEFAULT_BREAKER_COOLDOWN_MS, type RetryPolicy, type ConnectOptions, type PveClientInit} from './options.js'
import {type Params, encodeParams, decodeReason, formEncode, safeJson} from './encoding.js'

/**
 * The Proxmox VE client's transport (the client is assembled in client.ts): one HTTP exchange
 * with the API, API-token auth, the deadline of every request, the breaker, bounded retries with
 * back-off on locks and server faults, and the typed errors. The tasks, VM, guest-agent and
 * storage calls (tasks.ts, vms.ts, agent.ts, storage.ts) are built on `request`.
 */

export interface RecordedResponse {
  status: number
  statusText: string
  bodyText?: string
}

export interface CallCtx {
  res?: RecordedResponse
  wantBody: boolean
  /** Deadline of this request until its answer starts (ms). */
  timeoutMs: number
  /** The failure of the transport (a network error, the deadline), typed by toTyped. */
  fetchError?: unknown
}

/** What an API token looks like (checked at construction: a malformed one would only show as 401s). */
const TOKEN_ID_RE = /^[^@\s]+@[^!\s]+![A-Za-z][A-Za-z0-9._-]*$/
const TOKEN_SECRET_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** Sent with every request (PVE's access log shows it). */
export const USER_AGENT = 'pgi (Proxmox VE API client)'

/** What a reconcile found after a request whose outcome is unknown. */
export type Reconciled = {applied: true; upid?: string} | {applied: false}

export interface RequestOptions {
  where: PveWhere
  /** Safe to send again after a network error (GET always is). */
  idempotent?: boolean
  /** Re-reads the state after an ambiguous network error of a non-idempotent request. */
  reconcile?: () => Promise<Reconciled>
  wantBody?: boolean
  /** Do not retry on lock errors (the caller does it around a whole task). */
  noLockRetry?: boolean
}

/** `p`, or a rejection with the signal's reason as soon as it aborts (whatever `p` does then). */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
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

export function withWhere(e: PgiError, where: PveWhere): PgiError {
  if (!e.where) (e as {where?: PveWhere}).where = where
  return e
}

export function isNoSuchVm(err: unknown): boolean {
  // PVE: "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"
  return err instanceof PveApiError && err.status === 500 && /Configuration file '[^']*qemu-server\/\d+\.conf' does not exist/.test(err.pveMessage)
}

export function lockGaveUp(err: PgiError, elapsedMs: number): PgiError {
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
export const CLIENT_CLOSED = Object.freeze({name: 'ClientClosed', message: 'the client was closed or its hypervisor found out of reach'})


export class PveTransport {
  readonly hypervisor: string
  readonly baseUrl: URL
  protected readonly io: Io
  /** `https://host:port/api2/json`: every API path is appended to it. */
  protected readonly apiBase: string
  /** The headers of every API request (the token), and of a form request. */
  protected readonly headers: Record<string, string>
  protected readonly formHeaders: Record<string, string>
  protected readonly baseFetch: FetchFn
  protected readonly tokenId: string
  protected readonly tokenSecret: Secret
  protected readonly requestTimeoutMs: number
  protected readonly writeTimeoutMs: number
  protected readonly agentRequestTimeoutMs: number
  protected readonly breakerCooldownMs: number
  protected readonly retry: RetryPolicy
  protected readonly taskTimeouts: Record<string, number>
  protected readonly pollInitial: number
  protected readonly pollMax: number
  protected readonly now: () => number
  protected readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>
  protected readonly random: () => number
  protected readonly onClose?: () => Promise<void>
  /** HTTP answers received from this hypervisor so far (any status): tells a silent hypervisor from a slow request. */
  protected answers = 0
  /**
   * Tasks this client started or followed: a task found when re-reading the state after a lost
   * request is that request's only if it is none of these (an earlier start of the same VM a few
   * seconds before is not the one a failed start made).
   */
  protected readonly knownTasks = new Set<string>()
  /** Set when the hypervisor was found out of reach (the breaker is open): later requests fail at once with it. */
  protected down?: {error: PgiError; at: number}
  /**
   * Aborted when the breaker opens or the client is closed: every wait between retries or polls
   * ends then (its next request fails at once), so no sleeping retry outlives the run's last output.
   */
  protected wake = new AbortController()
  protected closed = false

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
  protected async pause(ms: number, signal?: AbortSignal): Promise<void> {
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
  protected async exchange(method: string, path: string, params: Params | undefined, ctx: CallCtx): Promise<unknown> {
    let url = this.apiBase + path
    let body: string | undefined
    const form = method === 'POST' || method === 'PUT'
    if (params) {
      const q = formEncode(params)
      if (q && form) body = q
      else if (q) url += (url.includes('?') ? '&' : '?') + q
    }
    const timeoutMs = ctx.timeoutMs
    const headers = body !== undefined ? {...this.formHeaders, 'Content-Length': String(body.length)} : this.headers
    const idleTimeoutMs = Math.max(timeoutMs, DEFAULT_AGENT_REQUEST_TIMEOUT_MS)
    let res: HttpAnswer
    let bodyText: string
    try {
      if (this.baseFetch.honoursDeadline) {
        // the trusted fetch bounds the wait for the answer and the body's pauses itself
        res = await this.baseFetch(url, {method, headers, body: body ?? null, deadlineMs: timeoutMs, idleTimeoutMs})
      } else {
        res = await this.fetchUntil(url, {method, headers, body: body ?? null, idleTimeoutMs}, timeoutMs)
      }
      // the deadline ended when the answer started; the body's pauses are bounded by the
      // transport (idleTimeoutMs), so no second race here
      bodyText = await res.text()
    } catch (err) {
      ctx.fetchError = err
      throw err
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

  /**
   * A fetch that does not bound requests itself (tests inject WHATWG ones): the deadline until the
   * answer starts aborts its signal, and the wait ends then whatever that fetch does.
   */
  private async fetchUntil(url: string, init: HttpInit, timeoutMs: number): Promise<HttpAnswer> {
    const ac = new AbortController()
    const cancel = armDeadline(timeoutMs, () => ac.abort(new DeadlineExceeded(timeoutMs)))
    try {
      return await untilAborted(this.baseFetch(url, {...init, signal: ac.signal, onResponse: cancel}), ac.signal)
    } finally {
      cancel()
    }
  }

  protected backoff(attempt: number): number {
    const d = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** attempt)
    return Math.round(d * (0.5 + this.random() * 0.5))
  }

  /** The deadline of one request: guest-agent calls, reads, writes. */
  protected deadlineFor(method: string, path: string): number {
    if (/\/agent\//.test(path)) return this.agentRequestTimeoutMs
    return method === 'GET' ? this.requestTimeoutMs : this.writeTimeoutMs
  }

  /** One request, no retry. Returns the envelope's data (and the raw body when asked). */
  protected async once<T>(method: string, path: string, params: Params | undefined, o: RequestOptions): Promise<{data: T; body?: unknown}> {
    const ctx: CallCtx = {wantBody: Boolean(o.wantBody), timeoutMs: this.deadlineFor(method, path)}
    const started = this.now()
    try {
      const data = (await this.exchange(method, path, params ? encodeParams(params) : undefined, ctx)) as T
      // built only when it is printed: a line per request on a fleet's status otherwise
      if (this.io.level === 'debug') this.io.debug(`PVE ${method} ${path} → ${ctx.res?.status ?? '?'}`, {hypervisor: this.hypervisor, ms: this.now() - started})
      let body: unknown
      if (o.wantBody && ctx.res?.bodyText) body = safeJson(ctx.res.bodyText)
      return {data, body}
    } catch (err) {
      throw this.toTyped(ctx.fetchError ?? err, ctx, method, path, o.where)
    }
  }

  protected toTyped(err: unknown, ctx: CallCtx, method: string, path: string, where: PveWhere): PgiError {
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

  protected hostport(): string {
    return `${this.baseUrl.hostname}:${this.baseUrl.port || 443}`
  }

  /** Fails at once when the breaker is open (the hypervisor was found out of reach in this run). */
  protected checkDown(where: PveWhere): void {
    if (this.closed) throw new UnreachableError(ErrorCode.UNREACHABLE, `the connection to ${this.hypervisor} was closed at the end of the run`, {where})
    if (!this.down) return
    if (this.now() - this.down.at < this.breakerCooldownMs) throw new HypervisorDownError(this.down.error, where)
    this.io.debug(`hypervisor ${this.hypervisor}: trying again after it was found out of reach`, {since: new Date(this.down.at).toISOString()})
    this.down = undefined
  }

  /** Opens the breaker: the hypervisor is out of reach for this run (see the module comment). */
  protected trip(err: PgiError): void {
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
  protected async request<T>(method: string, path: string, params: Params | undefined, o: RequestOptions): Promise<{data: T; body?: unknown; reconciled?: Reconciled}> {
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
  protected outcomeUnknown(method: string, path: string, err: PgiError, where: PveWhere): UnreachableError {
    return new UnreachableError(ErrorCode.UNREACHABLE, `${method} ${path}: the connection failed and pgi cannot tell whether the hypervisor applied the request (${err.message})`, {
      where,
      cause: err,
      suggestions: ['Check the state on the hypervisor (Tasks panel), then run the command again.'],
    })
  }

  protected get<T>(path: string, params: Params | undefined, where: PveWhere): Promise<T> {
    return this.request<T>('GET', path, params, {where}).then((r) => r.data)
  }

  protected where(node?: string, vmid?: number): PveWhere {
    return {hypervisor: this.hypervisor, ...(node ? {node} : {}), ...(vmid !== undefined ? {vmid} : {})}
  }
}
