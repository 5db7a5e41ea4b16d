import type {Socket} from 'node:net'

import {ErrorCode, TimeoutError, UserError} from '../errors.js'
import {connectUnix, JsonLineReader} from './socket.js'

/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * Written here rather than taken from npm: the QMP packages there are unmaintained and none
 * handles timeouts; the protocol needs ~100 lines (greeting, `qmp_capabilities`, commands
 * matched by `id`, asynchronous events). Every call has a deadline and never hangs.
 */

export interface QmpEvent {
  event: string
  data?: Record<string, unknown>
  timestamp?: {seconds: number; microseconds: number}
}

/** `query-status` result. */
export interface QmpStatus {
  running: boolean
  /** running, paused, shutdown, internal-error, prelaunch, guest-panicked, … */
  status: string
  singlestep?: boolean
}

interface Pending {
  resolve: (v: unknown) => void
  reject: (e: Error) => void
  timer: NodeJS.Timeout
  command: string
}

export class QmpClient {
  private nextId = 1
  private readonly pending = new Map<string, Pending>()
  private readonly listeners = new Set<(e: QmpEvent) => void>()
  private closed = false
  private closeError: Error | undefined

  private constructor(private readonly sock: Socket, private readonly path: string) {}

  /**
   * Connects to the QMP socket at `path`, waits for the greeting and negotiates capabilities.
   * Rejects (QMP_ERROR) when QEMU does not answer within `timeoutMs`.
   */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    let sock: Socket
    try {
      sock = await connectUnix(path, timeoutMs)
    } catch (error) {
      throw new UserError(ErrorCode.QMP_ERROR, `cannot connect to QEMU monitor ${path}: ${(error as Error).message}`, {cause: error})
    }
    const client = new QmpClient(sock, path)
    await client.handshake(timeoutMs)
    return client
  }

  private handshake(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let greeted = false
      const timer = setTimeout(() => {
        this.close()
        reject(new TimeoutError(`QEMU monitor ${this.path} sent no greeting within ${timeoutMs} ms`))
      }, timeoutMs)
      const reader = new JsonLineReader((msg) => {
        const m = msg as Record<string, unknown>
        if (!greeted) {
          if (m && typeof m === 'object' && 'QMP' in m) {
            greeted = true
            clearTimeout(timer)
            this.execute('qmp_capabilities', undefined, timeoutMs).then(() => resolve(), reject)
          }
          return
        }
        this.dispatch(m)
      })
      this.sock.setEncoding('utf8')
      this.sock.on('data', (c: string) => reader.push(c))
      this.sock.on('error', (e) => this.fail(e))
      this.sock.on('close', () => {
        clearTimeout(timer)
        this.fail(new Error('QEMU monitor connection closed'))
        if (!greeted) reject(new UserError(ErrorCode.QMP_ERROR, `QEMU monitor ${this.path} closed before its greeting`))
      })
    })
  }

  private dispatch(m: Record<string, unknown>): void {
    if (typeof m.event === 'string') {
      for (const l of this.listeners) l(m as unknown as QmpEvent)
      return
    }
    const id = typeof m.id === 'string' ? m.id : undefined
    const p = id ? this.pending.get(id) : undefined
    if (!p || !id) return
    this.pending.delete(id)
    clearTimeout(p.timer)
    if ('error' in m) {
      const e = m.error as {class?: string; desc?: string}
      p.reject(new UserError(ErrorCode.QMP_ERROR, `QMP ${p.command} failed: ${e?.desc ?? 'unknown error'}`, {details: {class: e?.class}}))
    } else {
      p.resolve(m.return)
    }
  }

  private fail(err: Error): void {
    if (this.closed) return
    this.closed = true
    this.closeError = err
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer)
      p.reject(new UserError(ErrorCode.QMP_ERROR, `QMP ${p.command} failed: ${err.message}`))
      this.pending.delete(id)
    }
    this.sock.destroy()
  }

  /** Runs one QMP command and returns its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<T> {
    if (this.closed) {
      return Promise.reject(new UserError(ErrorCode.QMP_ERROR, `QMP ${command} failed: ${this.closeError?.message ?? 'connection closed'}`))
    }
    const id = `pgi-${this.nextId++}`
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new TimeoutError(`QMP ${command} got no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, {resolve: resolve as (v: unknown) => void, reject, timer, command})
      this.sock.write(JSON.stringify({execute: command, ...(args ? {arguments: args} : {}), id}) + '\n')
    })
  }

  /** Subscribes to asynchronous events (SHUTDOWN, STOP, RESET…); returns an unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Runs a human monitor (HMP) command, e.g. `info usernet`, and returns its text. */
  hmp(commandLine: string, timeoutMs = 10_000): Promise<string> {
    return this.execute<string>('human-monitor-command', {'command-line': commandLine}, timeoutMs)
  }

  status(timeoutMs = 5000): Promise<QmpStatus> {
    return this.execute<QmpStatus>('query-status', undefined, timeoutMs)
  }

  /** ACPI power button (the guest shuts down cleanly if it listens). */
  async systemPowerdown(timeoutMs = 5000): Promise<void> {
    await this.execute('system_powerdown', undefined, timeoutMs)
  }

  /** Ends QEMU at once. The connection closes as QEMU exits; that is not an error here. */
  async quit(timeoutMs = 5000): Promise<void> {
    try {
      await this.execute('quit', undefined, timeoutMs)
    } catch (error) {
      if (!this.closed) throw error
    }
  }

  get isClosed(): boolean {
    return this.closed
  }

  close(): void {
    this.fail(new Error('closed by client'))
  }
}
