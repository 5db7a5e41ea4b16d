import {randomInt} from 'node:crypto'
import type {Socket} from 'node:net'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {AgentExecStatus, AgentFsInfo, AgentNetworkInterface} from '../proxmox/types.js'
import {connectUnix} from './socket.js'
import {sleep} from '../sleep.js'

/**
 * Client of the real qemu-guest-agent, reached through the host side of its virtio-serial port
 * (a unix socket QEMU serves: `vm.ts` creates it as `qga.sock`).
 *
 * Written here rather than taken from npm: no maintained package speaks the QGA wire protocol.
 * Every call opens its own connection (as Proxmox VE does), re-synchronises the stream with
 * `guest-sync-delimited` (a random id, answered after a 0xFF sentinel, so stale replies of an
 * earlier, timed-out client are skipped), sends one command and reads one reply. Calls on one
 * client are serialised (the socket takes one client at a time). Every call is bounded by its
 * timeout, connect and handshake included: nothing here can hang.
 */

export type QgaFailure = 'unavailable' | 'timeout' | 'failed'

/** A guest-agent call failed: not answering (`unavailable`), too slow (`timeout`) or refused (`failed`). */
export class QgaError extends UserError {
  constructor(
    readonly reason: QgaFailure,
    readonly command: string,
    message: string,
    readonly errorClass?: string,
  ) {
    super(ErrorCode.GUEST_AGENT, message, {
      details: {reason, command, ...(errorClass ? {class: errorClass} : {})},
      ...(reason === 'timeout' ? {exitCode: ExitCode.TIMEOUT} : {}),
      suggestions:
        reason === 'unavailable'
          ? ['Check that the VM has booted and that qemu-guest-agent runs in the guest (systemctl status qemu-guest-agent).']
          : [],
    })
    this.name = 'QgaError'
  }
}

/** `guest-exec-status` with the output decoded. */
export interface QgaExecStatus {
  exited: boolean
  exitcode?: number
  signal?: number
  stdout: Buffer
  stderr: Buffer
  truncated: boolean
}

export interface QgaRunResult {
  exitcode: number
  signal?: number
  stdout: string
  stderr: string
}

export interface QgaClientOptions {
  /** Default per-call timeout (ms). */
  timeoutMs?: number
}

const CHUNK = 1024 * 1024

export class QgaClient {
  private queue: Promise<unknown> = Promise.resolve()
  private readonly defaultTimeout: number

  constructor(
    readonly socketPath: string,
    opts: QgaClientOptions = {},
  ) {
    this.defaultTimeout = opts.timeoutMs ?? 10_000
  }

  /**
   * Runs `command` in the guest agent and returns its `return` value. Rejects with a QgaError:
   * `unavailable` when the agent does not answer the sync handshake, `timeout` when it does not
   * answer the command in time, `failed` when it answers with an error.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.defaultTimeout): Promise<T> {
    const run = () => this.once<T>(command, args, timeoutMs, false)
    const p = this.queue.then(run, run)
    this.queue = p.catch(() => undefined)
    return p
  }

  /** Sends a command the agent does not answer when it succeeds (guest-shutdown). */
  private executeNoReply(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<void> {
    const run = () => this.once<void>(command, args, timeoutMs, true)
    const p = this.queue.then(run, run)
    this.queue = p.catch(() => undefined)
    return p
  }

  private async once<T>(command: string, args: Record<string, unknown> | undefined, timeoutMs: number, noReply: boolean): Promise<T> {
    const deadline = Date.now() + timeoutMs
    let sock: Socket
    try {
      sock = await connectUnix(this.socketPath, Math.max(1, Math.min(timeoutMs, 3000)))
    } catch (error) {
      throw new QgaError('unavailable', command, `guest agent socket not available (${(error as Error).message})`)
    }
    try {
      return await new Promise<T>((resolve, reject) => {
        const syncId = randomInt(1, 2 ** 31 - 1)
        let synced = false
        let sentinelSeen = false
        let buf = Buffer.alloc(0)
        const finish = (err: Error | undefined, value?: T) => {
          clearTimeout(timer)
          sock.removeAllListeners('data')
          sock.destroy()
          if (err) reject(err)
          else resolve(value as T)
        }
        const timer = setTimeout(
          () => {
            if (noReply && synced) finish(undefined)
            else if (!synced) finish(new QgaError('unavailable', command, `QEMU guest agent is not running (no answer to guest-sync within ${timeoutMs} ms)`))
            else finish(new QgaError('timeout', command, `guest agent command '${command}' got timeout after ${timeoutMs} ms`))
          },
          Math.max(1, deadline - Date.now()),
        )
        const onMessage = (m: Record<string, unknown>) => {
          if (!synced) {
            if (m.return === syncId) {
              synced = true
              sock.write(JSON.stringify({execute: command, ...(args ? {arguments: args} : {})}) + '\n')
            }
            return
          }
          if ('error' in m) {
            const e = m.error as {class?: string; desc?: string}
            finish(new QgaError('failed', command, `guest agent command '${command}' failed: ${e?.desc ?? 'unknown error'}`, e?.class))
          } else if ('return' in m) {
            finish(undefined, m.return as T)
          }
        }
        sock.on('data', (chunk: Buffer) => {
          buf = Buffer.concat([buf, chunk])
          if (!sentinelSeen) {
            const i = buf.indexOf(0xff)
            if (i < 0) {
              buf = Buffer.alloc(0)
              return
            }
            sentinelSeen = true
            buf = buf.subarray(i + 1)
          }
          let nl: number
          while ((nl = buf.indexOf(0x0a)) >= 0) {
            const line = buf.subarray(0, nl).toString('utf8').replace(/^\xff+/, '').trim()
            buf = buf.subarray(nl + 1)
            if (!line) continue
            let m: unknown
            try {
              m = JSON.parse(line)
            } catch {
              continue
            }
            if (m && typeof m === 'object') onMessage(m as Record<string, unknown>)
          }
        })
        sock.on('error', (e) => finish(new QgaError('unavailable', command, `guest agent connection failed: ${e.message}`)))
        sock.on('close', () => {
          if (noReply && synced) finish(undefined)
          else finish(new QgaError('unavailable', command, 'guest agent connection closed'))
        })
        // 0xFF resets the agent's JSON parser (drops any half-written request of an earlier client).
        sock.write(Buffer.from([0xff]))
        sock.write(JSON.stringify({execute: 'guest-sync-delimited', arguments: {id: syncId}}) + '\n')
      })
    } finally {
      sock.destroy()
    }
  }

  // ---- typed helpers ---------------------------------------------------------------------------

  async ping(timeoutMs?: number): Promise<void> {
    await this.execute('guest-ping', undefined, timeoutMs)
  }

  /** Waits until the agent answers a ping, polling every `intervalMs`, up to `timeoutMs` in total. */
  async waitReady(timeoutMs: number, intervalMs = 1000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let last: unknown
    while (Date.now() < deadline) {
      try {
        await this.ping(Math.max(500, Math.min(3000, deadline - Date.now())))
        return
      } catch (error) {
        last = error
      }
      const left = deadline - Date.now()
      if (left > 0) await sleep(Math.min(intervalMs, left))
    }
    throw new QgaError('timeout', 'guest-ping', `guest agent did not answer within ${timeoutMs} ms (${(last as Error)?.message ?? 'no answer'})`)
  }

  info(timeoutMs?: number): Promise<{version: string; supported_commands: {name: string; enabled: boolean}[]}> {
    return this.execute('guest-info', undefined, timeoutMs)
  }

  networkGetInterfaces(timeoutMs?: number): Promise<AgentNetworkInterface[]> {
    return this.execute('guest-network-get-interfaces', undefined, timeoutMs)
  }

  getFsinfo(timeoutMs?: number): Promise<AgentFsInfo[]> {
    return this.execute('guest-get-fsinfo', undefined, timeoutMs)
  }

  /** Starts `path args…` in the guest; `input` goes to its stdin. Returns the guest pid. */
  async exec(
    path: string,
    args: string[] = [],
    opts: {input?: string | Buffer; env?: string[]; captureOutput?: boolean; timeoutMs?: number} = {},
  ): Promise<{pid: number}> {
    const a: Record<string, unknown> = {path, arg: args, 'capture-output': opts.captureOutput ?? true}
    if (opts.input !== undefined) a['input-data'] = Buffer.from(opts.input).toString('base64')
    if (opts.env) a.env = opts.env
    return this.execute<{pid: number}>('guest-exec', a, opts.timeoutMs)
  }

  execStatusRaw(pid: number, timeoutMs?: number): Promise<AgentExecStatus> {
    return this.execute<AgentExecStatus>('guest-exec-status', {pid}, timeoutMs)
  }

  async execStatus(pid: number, timeoutMs?: number): Promise<QgaExecStatus> {
    const r = await this.execStatusRaw(pid, timeoutMs)
    return {
      exited: r.exited,
      exitcode: r.exitcode,
      signal: r.signal,
      stdout: Buffer.from(r['out-data'] ?? '', 'base64'),
      stderr: Buffer.from(r['err-data'] ?? '', 'base64'),
      truncated: Boolean(r['out-truncated'] || r['err-truncated']),
    }
  }

  /**
   * Runs a command to completion (exec + polling exec-status) and returns its exit code and
   * decoded output. Secrets belong in `input`, never in `args`. Bounded by `timeoutMs`.
   */
  async run(argv: string[], opts: {input?: string | Buffer; timeoutMs?: number; pollMs?: number} = {}): Promise<QgaRunResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000
    const deadline = Date.now() + timeoutMs
    const callTimeout = () => Math.max(500, Math.min(this.defaultTimeout, deadline - Date.now()))
    const {pid} = await this.exec(argv[0], argv.slice(1), {input: opts.input, timeoutMs: callTimeout()})
    // without pollMs: 100 ms, doubling up to 1 s. A quick command answers at once; a long one
    // (pgi-health --wait, a database copy) is not asked 4 times a second for minutes, each
    // question waking the agent (and its log line) in a guest whose emulated CPU is scarce
    let pollMs = opts.pollMs ?? 100
    for (;;) {
      const s = await this.execStatus(pid, callTimeout())
      if (s.exited) {
        return {exitcode: s.exitcode ?? (s.signal === undefined ? 0 : 128 + s.signal), signal: s.signal, stdout: s.stdout.toString('utf8'), stderr: s.stderr.toString('utf8')}
      }
      if (Date.now() >= deadline) throw new QgaError('timeout', 'guest-exec', `guest command ${argv[0]} (pid ${pid}) still running after ${timeoutMs} ms`)
      await sleep(Math.min(pollMs, Math.max(1, deadline - Date.now())))
      if (opts.pollMs === undefined) pollMs = Math.min(pollMs * 2, 1000)
    }
  }

  /** Writes `content` to `path` in the guest (created or truncated), in 1 MiB chunks. */
  async fileWrite(path: string, content: Buffer | string, timeoutMs?: number): Promise<void> {
    const data = Buffer.from(content)
    const handle = await this.execute<number>('guest-file-open', {path, mode: 'w'}, timeoutMs)
    try {
      for (let off = 0; off < data.length; off += CHUNK) {
        const part = data.subarray(off, off + CHUNK)
        await this.execute('guest-file-write', {handle, 'buf-b64': part.toString('base64')}, timeoutMs)
      }
      await this.execute('guest-file-flush', {handle}, timeoutMs)
    } finally {
      await this.execute('guest-file-close', {handle}, timeoutMs).catch(() => undefined)
    }
  }

  /** Reads `path` from the guest, at most `maxBytes` (default 16 MiB, PVE's limit). */
  async fileRead(path: string, opts: {maxBytes?: number; timeoutMs?: number} = {}): Promise<{content: Buffer; truncated: boolean}> {
    const max = opts.maxBytes ?? 16 * 1024 * 1024
    const handle = await this.execute<number>('guest-file-open', {path, mode: 'r'}, opts.timeoutMs)
    const parts: Buffer[] = []
    let total = 0
    let truncated = false
    try {
      for (;;) {
        const want = Math.min(CHUNK, max - total + 1)
        const r = await this.execute<{count: number; 'buf-b64': string; eof: boolean}>('guest-file-read', {handle, count: want}, opts.timeoutMs)
        const b = Buffer.from(r['buf-b64'] ?? '', 'base64')
        parts.push(b)
        total += b.length
        if (total > max) {
          truncated = true
          break
        }
        if (r.eof || b.length === 0) break
      }
    } finally {
      await this.execute('guest-file-close', {handle}, opts.timeoutMs).catch(() => undefined)
    }
    const content = Buffer.concat(parts)
    return {content: truncated ? content.subarray(0, max) : content, truncated}
  }

  /**
   * Asks the guest to shut down (`powerdown`), halt or reboot. The agent sends no reply when it
   * complies, so silence until the timeout (default 3 s) counts as accepted.
   */
  shutdown(mode: 'powerdown' | 'halt' | 'reboot' = 'powerdown', timeoutMs = 3000): Promise<void> {
    return this.executeNoReply('guest-shutdown', {mode}, timeoutMs)
  }
}
