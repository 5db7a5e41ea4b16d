import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {lstat, readdir} from 'node:fs/promises'
import {join} from 'node:path'

/**
 * What an image build must leave as it found on the host: apt's package lists and cache, and the
 * system logs. A snapshot records, for every entry under the given roots, its type, size and
 * mtime, and for the logs the sha256 of the content, so that a later snapshot can tell an append
 * (the earlier bytes unchanged) from a rewrite.
 */
export interface Entry {
  type: 'file' | 'dir' | 'link' | 'other'
  size: number
  mtimeMs: number
  /** sha256 of a regular file's content (only where `hash` was asked for). */
  sha256?: string
}

export type Snapshot = Map<string, Entry>

/** Logs larger than this are compared by size and mtime only (no content hash kept). */
const HASH_LIMIT = 64 * 1024 * 1024

async function sha256(path: string, length?: number): Promise<string> {
  const h = createHash('sha256')
  if (length === 0) return h.digest('hex')
  const stream = createReadStream(path, length === undefined ? {} : {start: 0, end: length - 1})
  for await (const chunk of stream) h.update(chunk as Buffer)
  return h.digest('hex')
}

async function walk(root: string, hash: boolean, into: Snapshot): Promise<void> {
  let st
  try {
    st = await lstat(root)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
    throw e
  }
  const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'link' : 'other'
  const entry: Entry = {type, size: st.size, mtimeMs: st.mtimeMs}
  if (hash && type === 'file' && st.size <= HASH_LIMIT) entry.sha256 = await sha256(root)
  into.set(root, entry)
  if (type === 'dir') for (const n of (await readdir(root)).sort()) await walk(join(root, n), hash, into)
}

export async function snapshot(roots: readonly {path: string; hash?: boolean}[]): Promise<Snapshot> {
  const s: Snapshot = new Map()
  for (const r of roots) await walk(r.path, r.hash ?? false, s)
  return s
}

export interface Comparison {
  /** Differences the build is to blame for (or may be): removed, added, rewritten, shrunk entries. */
  differences: string[]
  /** Files that only grew, their earlier bytes unchanged: logs other processes append to. */
  appended: string[]
}

/**
 * Compares two snapshots. Every entry must still be there with the same type; directories are
 * compared by their entries (their own mtime follows them); files and links by size and mtime.
 * A file under one of `appendOnly` may differ by an append only: bigger or the same size, and its
 * first `before.size` bytes hash as before; `strict` files (apt's and dpkg's own logs, which a
 * misdirected apt or dpkg run would write) may not change at all.
 */
export async function compare(before: Snapshot, after: Snapshot, opts: {appendOnly: readonly string[]; strict: readonly string[]}): Promise<Comparison> {
  const differences: string[] = []
  const appended: string[] = []
  const under = (p: string, roots: readonly string[]) => roots.some((r) => p === r || p.startsWith(r.endsWith('/') ? r : r + '/'))
  for (const [p, b] of before) {
    const a = after.get(p)
    if (!a) {
      differences.push(`${p}: removed (was a ${b.type} of ${b.size} bytes)`)
      continue
    }
    if (a.type !== b.type) {
      differences.push(`${p}: was a ${b.type}, now a ${a.type}`)
      continue
    }
    if (b.type === 'dir' || (a.size === b.size && a.mtimeMs === b.mtimeMs)) continue
    const what = `size ${b.size} → ${a.size}, mtime ${new Date(b.mtimeMs).toISOString()} → ${new Date(a.mtimeMs).toISOString()}`
    if (b.type === 'file' && under(p, opts.appendOnly) && !under(p, opts.strict) && b.sha256 !== undefined && a.size >= b.size) {
      if ((await sha256(p, b.size)) === b.sha256) {
        appended.push(`${p}: ${what}`)
        continue
      }
      differences.push(`${p}: rewritten (${what}; its first ${b.size} bytes changed)`)
      continue
    }
    differences.push(`${p}: changed (${what})`)
  }
  for (const [p, a] of after) if (!before.has(p)) differences.push(`${p}: added (a ${a.type} of ${a.size} bytes)`)
  return {differences, appended}
}
