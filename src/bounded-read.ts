import {closeSync, constants, fstatSync, openSync, readSync, type Stats} from 'node:fs'
import {open} from 'node:fs/promises'

/**
 * Reads a file the user named (an inventory file, a CA file it refers to, …): regular files only,
 * and at most `maxBytes`.
 *
 * Why not readFile: it reads whatever the path is until it ends. `/dev/zero` (or a link to it)
 * never ends and grows a buffer without bound; a FIFO blocks the open until a writer comes (pgi
 * hangs); a folder, a symbolic link loop or a file pgi may not read throw errors that used to
 * surface as internal errors. Here the file is opened without blocking (O_NONBLOCK: a FIFO opens
 * at once, and regular files ignore the flag), checked with fstat on the open descriptor (so the
 * check and the read see the same file), and read up to the limit plus one byte (a file that
 * grows while read, or a /proc file that says size 0, cannot get past the limit either).
 *
 * Never throws for a problem of the file itself: the outcome says what it is, in words that name
 * neither the path (the caller does) nor anything of the content.
 */
export type BoundedRead = {ok: true; data: Buffer} | {ok: false; problem: FileProblem}

export interface FileProblem {
  /** missing: does not exist; not-regular: a folder, FIFO, device or socket; too-large: over the limit; unreadable: permissions, a link loop, an I/O error. */
  kind: 'missing' | 'not-regular' | 'too-large' | 'unreadable'
  /** What is wrong, to follow the file's name: "is a FIFO (named pipe), not a regular file". */
  message: string
  /** The errno code, when the system gave one. */
  code?: string
}

/**
 * Limit for a CA file (tls.ca_file), checked by the inventory and again where the TLS client reads
 * it: one certificate or a chain of a few; the whole Mozilla store is ~0.2 MiB.
 */
export const MAX_CA_FILE_BYTES = 1024 * 1024

/** Open flags: read only, never block on a FIFO, never make a terminal the controlling one. */
const FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY

/** "1.5 MiB", "512 KiB", "100 bytes". */
export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${+(n / (1024 * 1024)).toFixed(1)} MiB`
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} KiB`
  return `${n} byte${n === 1 ? '' : 's'}`
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a folder'
  if (st.isFIFO()) return 'a FIFO (named pipe)'
  if (st.isCharacterDevice()) return 'a character device'
  if (st.isBlockDevice()) return 'a block device'
  if (st.isSocket()) return 'a socket'
  return 'not a regular file'
}

function openProblem(err: unknown): FileProblem {
  const code = (err as NodeJS.ErrnoException).code
  switch (code) {
    case 'ENOENT':
      return {kind: 'missing', message: 'does not exist', code}
    case 'EACCES':
    case 'EPERM':
      return {kind: 'unreadable', message: 'cannot be read: permission denied', code}
    case 'ELOOP':
      return {kind: 'unreadable', message: 'cannot be read: a loop of symbolic links (or too many of them)', code}
    case 'ENOTDIR':
      return {kind: 'missing', message: 'does not exist (a part of its path is not a folder)', code}
    case 'ENXIO':
      // opening a UNIX socket, or a device with nothing behind it
      return {kind: 'not-regular', message: 'is a socket or a device, not a regular file', code}
    case 'ENAMETOOLONG':
      return {kind: 'missing', message: 'cannot be opened: the path is too long', code}
    default:
      return {kind: 'unreadable', message: `cannot be read (${code ?? (err as Error).message})`, ...(code ? {code} : {})}
  }
}

function statProblem(st: Stats, maxBytes: number, what: string): FileProblem | undefined {
  if (!st.isFile()) return {kind: 'not-regular', message: `is ${kindOf(st)}, not a regular file`}
  if (st.size > maxBytes) return tooLarge(st.size, maxBytes, what)
  return undefined
}

function tooLarge(size: number | undefined, maxBytes: number, what: string): FileProblem {
  // the exact count when the rounded one could equal the limit ("2 MiB, more than 2 MiB")
  const exact = size !== undefined && size >= 1024 ? ` (${String(size).replace(/\B(?=(\d{3})+(?!\d))/g, ',')} bytes)` : ''
  const s = size === undefined ? 'is larger than' : `is ${formatBytes(size)}${exact}, more than`
  return {kind: 'too-large', message: `${s} ${formatBytes(maxBytes)}, the limit for ${what}`}
}

/**
 * Reads what an open file holds, at most `maxBytes` (+1 to tell that there is more). The buffer
 * starts at the size fstat gave (plus room for growth) and doubles when a file says less than it
 * holds (/proc files say 0), so reading many small files does not allocate the limit for each.
 */
class Collector {
  buf: Buffer
  n = 0
  constructor(
    size: number,
    private readonly maxBytes: number,
  ) {
    this.buf = Buffer.allocUnsafe(Math.min(maxBytes + 1, Math.max(size + 1, 4096)))
  }

  /** Room for the next read (grows the buffer when full). */
  room(): number {
    if (this.n === this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.min(this.maxBytes + 1, this.buf.length * 2))
      this.buf.copy(bigger, 0, 0, this.n)
      this.buf = bigger
    }
    return this.buf.length - this.n
  }

  over(): boolean {
    return this.n > this.maxBytes
  }

  data(): Buffer {
    return this.buf.subarray(0, this.n)
  }
}

/**
 * The read loop of both readers, written once: checks the file's stat, then yields each read it
 * wants (into which buffer, where, how much) and is given the byte count back, until the end of
 * the file or the limit; returns the result. The async reader awaits each read, the sync one not.
 */
function* readLoop(st: Stats, maxBytes: number, what: string): Generator<{buf: Buffer; offset: number; length: number}, BoundedRead, number> {
  const bad = statProblem(st, maxBytes, what)
  if (bad) return {ok: false, problem: bad}
  const c = new Collector(st.size, maxBytes)
  for (;;) {
    const length = c.room()
    const bytesRead = yield {buf: c.buf, offset: c.n, length}
    if (bytesRead === 0) break
    c.n += bytesRead
    if (c.over()) return {ok: false, problem: tooLarge(undefined, maxBytes, what)}
  }
  return {ok: true, data: c.data()}
}

/** `what` names the kind of file in the too-large message ("an inventory file", "a CA file"). */
export async function readRegularFile(path: string, maxBytes: number, what: string): Promise<BoundedRead> {
  let fh
  try {
    fh = await open(path, FLAGS)
  } catch (err) {
    return {ok: false, problem: openProblem(err)}
  }
  try {
    const loop = readLoop(await fh.stat(), maxBytes, what)
    let step = loop.next()
    while (!step.done) step = loop.next((await fh.read(step.value.buf, step.value.offset, step.value.length, null)).bytesRead)
    return step.value
  } catch (err) {
    return {ok: false, problem: openProblem(err)}
  } finally {
    await fh.close().catch(() => undefined)
  }
}

/** The same, synchronous (for code that checks a file while it builds a result, e.g. a TLS context). */
export function readRegularFileSync(path: string, maxBytes: number, what: string): BoundedRead {
  let fd: number
  try {
    fd = openSync(path, FLAGS)
  } catch (err) {
    return {ok: false, problem: openProblem(err)}
  }
  try {
    const loop = readLoop(fstatSync(fd), maxBytes, what)
    let step = loop.next()
    while (!step.done) step = loop.next(readSync(fd, step.value.buf, step.value.offset, step.value.length, null))
    return step.value
  } catch (err) {
    return {ok: false, problem: openProblem(err)}
  } finally {
    closeSync(fd)
  }
}
