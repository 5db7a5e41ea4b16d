import type {Io} from '../io.js'
import type {Secret} from '../secret.js'
import type {FetchFn} from './tls.js'

/** The options of a Proxmox VE client (src/proxmox/client.ts): deadlines, retries, task timeouts, test hooks. */

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
