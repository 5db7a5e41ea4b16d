import {closeSync, openSync} from 'node:fs'
import {connect, type Socket} from 'node:net'
import {basename, dirname} from 'node:path'

/**
 * Unix-socket plumbing shared by the QMP and guest-agent clients.
 *
 * A unix socket path is limited to 107 bytes (sun_path), and lab or test directories can be
 * deeper than that. QEMU is therefore always started with its cwd in the VM directory and
 * relative socket names; clients connect through `/proc/self/fd/<dirfd>/<name>` when the
 * absolute path is too long. Nothing is created outside the VM directory.
 */

const SUN_PATH_MAX = 107

/** Connects to the unix socket at `path` (any length); rejects after `timeoutMs`. */
export function connectUnix(path: string, timeoutMs: number): Promise<Socket> {
  let dirFd: number | undefined
  let target = path
  if (Buffer.byteLength(path) > SUN_PATH_MAX) {
    dirFd = openSync(dirname(path), 'r')
    target = `/proc/self/fd/${dirFd}/${basename(path)}`
    if (Buffer.byteLength(target) > SUN_PATH_MAX) {
      closeSync(dirFd)
      return Promise.reject(new Error(`socket name too long: ${basename(path)}`))
    }
  }
  return new Promise((resolve, reject) => {
    const sock = connect({path: target})
    const done = (err?: Error) => {
      clearTimeout(timer)
      sock.removeAllListeners('connect')
      sock.removeAllListeners('error')
      if (dirFd !== undefined) {
        closeSync(dirFd)
        dirFd = undefined
      }
      if (err) {
        sock.destroy()
        reject(err)
      } else {
        resolve(sock)
      }
    }
    const timer = setTimeout(() => done(new Error(`connect to ${path} timed out after ${timeoutMs} ms`)), timeoutMs)
    sock.once('connect', () => done())
    sock.once('error', (e) => done(e))
  })
}

/**
 * Splits a byte stream into newline-terminated JSON messages. QEMU ends messages with "\r\n";
 * blank lines are skipped. `onMessage` receives each parsed value; unparsable lines go to
 * `onGarbage` (the guest agent may emit a partial reply after a reset).
 */
export class JsonLineReader {
  private buf = ''
  constructor(
    private readonly onMessage: (msg: unknown) => void,
    private readonly onGarbage: (line: string) => void = () => undefined,
  ) {}

  push(chunk: string): void {
    this.buf += chunk
    let nl: number
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim()
      this.buf = this.buf.slice(nl + 1)
      if (!line) continue
      let msg: unknown
      try {
        msg = JSON.parse(line)
      } catch {
        this.onGarbage(line)
        continue
      }
      this.onMessage(msg)
    }
  }

  reset(): void {
    this.buf = ''
  }
}
