/**
 * A fake `fetch` answering like pveproxy does (recorded shapes from PVE 8.4/9.1):
 *  - success: 200, `content-type: application/json;charset=UTF-8`, body `{"data": …}`
 *    (task logs add `"total"`);
 *  - 400: reason phrase "Parameter verification failed.", body `{"data":null,"errors":{…}}`;
 *  - 401/403/500: the message is the HTTP reason phrase, body `{"data":null}`;
 *  - network failures are thrown as the trusted fetch throws them (NetworkError).
 * Routes are matched on "METHOD /path" (path without /api2/json, percent-decoded); every request
 * is recorded with its raw URL, headers and form body.
 */
import {Response} from 'undici'

import {Secret} from '../../../src/secret.js'
import {PveClient, type ConnectOptions} from '../../../src/proxmox/client.js'
import type {FetchFn} from '../../../src/proxmox/tls.js'

export const TOKEN_ID = 'pgi@pve!deploy'
export const TOKEN_SECRET = new Secret('5f0c6c1e-9a43-4b8e-8d7a-2b1f3c4d5e6f')

export interface Recorded {
  method: string
  /** Decoded path without /api2/json. */
  path: string
  rawUrl: string
  query: URLSearchParams
  headers: Record<string, string>
  rawBody?: string
  form?: URLSearchParams
  bodyBytes?: Buffer
  signal?: AbortSignal
}

export type Reply =
  | {data: unknown; total?: number}
  | {status: number; reason: string; errors?: Record<string, string>; body?: string; contentType?: string | null}
  | {throw: Error}

export type Handler = (req: Recorded, n: number) => Reply | Promise<Reply>

export const ok = (data: unknown): Reply => ({data})
export const fail = (status: number, reason: string, errors?: Record<string, string>): Reply => ({status, reason, errors})

export class FakePve {
  readonly requests: Recorded[] = []
  private readonly routes = new Map<string, Handler>()
  private readonly counts = new Map<string, number>()
  /** Answers requests no route matches (default: 501 like an unknown PVE method). */
  fallback?: Handler

  on(route: string, handler: Handler | Reply | Reply[]): this {
    if (typeof handler === 'function') this.routes.set(route, handler)
    else if (Array.isArray(handler)) this.routes.set(route, (_r, n) => handler[Math.min(n, handler.length - 1)])
    else this.routes.set(route, () => handler)
    return this
  }

  calls(route: string): Recorded[] {
    const [m, p] = route.split(' ')
    return this.requests.filter((r) => r.method === m && r.path === p)
  }

  readonly fetch: FetchFn = (async (input: string | URL, init?: {method?: string; body?: unknown; headers?: Record<string, string>; signal?: AbortSignal}) => {
    const url = new URL(String(input))
    const method = (init?.method ?? 'GET').toUpperCase()
    const path = decodeURIComponent(url.pathname.replace(/^\/api2\/json/, ''))
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(init?.headers ?? {})) headers[k.toLowerCase()] = String(v)
    const req: Recorded = {method, path, rawUrl: url.toString(), query: url.searchParams, headers, signal: init?.signal}
    if (typeof init?.body === 'string') {
      req.rawBody = init.body
      req.form = new URLSearchParams(init.body)
    } else if (init?.body && typeof (init.body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === 'function') {
      const chunks: Buffer[] = []
      for await (const c of init.body as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c))
      req.bodyBytes = Buffer.concat(chunks)
    }
    this.requests.push(req)
    const key = `${method} ${path}`
    const n = this.counts.get(key) ?? 0
    this.counts.set(key, n + 1)
    const h = this.routes.get(key) ?? this.fallback
    if (!h) return new Response(JSON.stringify({data: null}), {status: 501, statusText: `Method '${key}' not implemented`, headers: {'content-type': 'application/json;charset=UTF-8'}})
    const r = await h(req, n)
    if ('throw' in r) throw r.throw
    if ('data' in r) {
      return new Response(JSON.stringify(r.total === undefined ? {data: r.data} : {data: r.data, total: r.total}), {
        status: 200,
        statusText: 'OK',
        headers: {'content-type': 'application/json;charset=UTF-8'},
      })
    }
    const body = r.body ?? JSON.stringify(r.errors ? {data: null, errors: r.errors} : {data: null})
    const h2: Record<string, string> = {}
    if (r.contentType !== null) h2['content-type'] = r.contentType ?? 'application/json;charset=UTF-8'
    return new Response(body, {status: r.status, statusText: r.reason, headers: h2})
  }) as unknown as FetchFn
}

/** A clock that only moves when the client sleeps: waits are instant and timeouts exact. */
export class FakeClock {
  t = 1_760_000_000_000
  readonly sleeps: number[] = []
  now = (): number => this.t
  sleep = async (ms: number): Promise<void> => {
    this.sleeps.push(ms)
    this.t += ms
  }
}

export function client(fake: FakePve, clock = new FakeClock(), extra: Partial<ConnectOptions> = {}): PveClient {
  return new PveClient(
    {name: 'hv-test', url: 'https://127.0.0.1:8006', tokenId: TOKEN_ID, fetch: fake.fetch},
    {tokenSecret: TOKEN_SECRET, now: clock.now, sleep: clock.sleep, random: () => 0.5, ...extra},
  )
}

/** UPID in the real format. */
export function upid(type: string, id: string | number, opts: {node?: string; start?: number; user?: string} = {}): string {
  const start = (opts.start ?? 0x6761a3f0).toString(16).toUpperCase().padStart(8, '0')
  return `UPID:${opts.node ?? 'pve1'}:0000ABCD:0001E240:${start}:${type}:${id}:${opts.user ?? TOKEN_ID}:`
}
