import {setMaxListeners} from 'node:events'

import type {PveTaskStatus} from '../proxmox/types.js'
import {formatUpid, type Upid} from '../proxmox/upid.js'
import type {TaskContext} from './backend.js'
import {sleep} from '../sleep.js'

/**
 * PVE tasks and config locks for the lab.
 * - UPID: `UPID:<node>:<pid 8hex>:<pstart 8hex>:<starttime 8hex>:<type>:<id>:<user>:` (upper-case hex).
 * - A task runs asynchronously; status is `running` then `stopped` with `exitstatus` "OK", or the
 *   error text; its log ends with "TASK OK" or "TASK ERROR: <text>", like PVE's.
 * - Config file lock: one holder per VM; waiting longer than the timeout fails with PVE's text
 *   "can't lock file '/var/lock/qemu-server/lock-<vmid>.conf' - got timeout".
 */

/** A task of the lab: its UPID's fields (src/proxmox/upid.ts, the one UPID grammar), its state and log. */
export interface TaskRecord extends Upid {
  status: PveTaskStatus['status']
  exitstatus?: string
  endtime?: number
  log: string[]
}

export class TaskManager {
  readonly #tasks = new Map<string, TaskRecord>()
  readonly #order: string[] = []
  #pstart = 0x100000
  readonly #abort = new AbortController()

  constructor(private readonly maxKept = 5000) {
    // one signal for every running task (the lab's shutdown): hundreds of tasks wait on it at
    // once in a large lab, each sleep removing its listener when it ends
    setMaxListeners(0, this.#abort.signal)
  }

  get(upid: string): TaskRecord | undefined {
    return this.#tasks.get(upid)
  }

  list(node: string): TaskRecord[] {
    return this.#order.map((u) => this.#tasks.get(u)!).filter((t) => t && t.node === node).reverse()
  }

  /** Number of tasks still running (all nodes). */
  running(): number {
    let n = 0
    for (const t of this.#tasks.values()) if (t.status === 'running') n++
    return n
  }

  /**
   * Starts `fn` as a task and returns its UPID at once. `fn` throws to fail the task (its message is
   * the exitstatus). `user` is the authid ("pgi@pve!deploy").
   */
  start(node: string, type: string, id: string, user: string, fn: (ctx: TaskContext) => Promise<void>): string {
    const pid = (process.pid * 7 + this.#order.length) % 0x3fffff
    const pstart = this.#pstart++
    const starttime = Math.floor(Date.now() / 1000)
    const upid = formatUpid({node, pid, pstart, starttime, type, id, user})
    const rec: TaskRecord = {upid, node, pid, pstart, starttime, type, id, user, status: 'running', log: []}
    this.#tasks.set(upid, rec)
    this.#order.push(upid)
    this.#trim()
    const ctx: TaskContext = {upid, log: (line) => void rec.log.push(line), signal: this.#abort.signal}
    void (async () => {
      try {
        await fn(ctx)
        rec.exitstatus = 'OK'
        rec.log.push('TASK OK')
      } catch (e) {
        const msg = (e instanceof Error ? e.message : String(e)).replace(/\n+$/, '')
        rec.exitstatus = msg
        rec.log.push(`TASK ERROR: ${msg}`)
      } finally {
        rec.status = 'stopped'
        rec.endtime = Math.floor(Date.now() / 1000)
      }
    })()
    return upid
  }

  /** Waits until no task runs (tests, shutdown). */
  async idle(timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs
    while (this.running() > 0 && Date.now() < end) await sleep(20)
  }

  abortAll(): void {
    this.#abort.abort()
  }

  #trim(): void {
    while (this.#order.length > this.maxKept) {
      const u = this.#order[0]!
      if (this.#tasks.get(u)?.status === 'running') break
      this.#order.shift()
      this.#tasks.delete(u)
    }
  }
}

/** The message PVE gives when a config lock cannot be had in time. */
export function lockTimeoutMessage(vmid: number): string {
  return `can't lock file '/var/lock/qemu-server/lock-${vmid}.conf' - got timeout`
}

/** Per-VM config file locks (PVE's flock on /var/lock/qemu-server/lock-N.conf) with a timeout. */
export class ConfigLocks {
  readonly #queues = new Map<string, Promise<void>>()

  constructor(readonly timeoutMs: number = 10_000) {}

  /** Runs `fn` holding the lock of (node, vmid); throws PVE's timeout text if it is busy too long. */
  async with<T>(node: string, vmid: number, fn: () => Promise<T> | T, timeoutMs = this.timeoutMs): Promise<T> {
    const key = `${node}/${vmid}`
    const prev = this.#queues.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((r) => (release = r))
    const chained = prev.then(() => mine)
    this.#queues.set(key, chained)
    let timer: NodeJS.Timeout | undefined
    const acquired = await Promise.race([
      prev.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs))),
    ])
    clearTimeout(timer)
    if (!acquired) {
      // Give up our place: release as soon as the previous holder is done so later waiters proceed.
      void prev.then(() => release())
      throw new Error(lockTimeoutMessage(vmid))
    }
    try {
      return await fn()
    } finally {
      release()
      if (this.#queues.get(key) === chained) this.#queues.delete(key)
    }
  }
}
