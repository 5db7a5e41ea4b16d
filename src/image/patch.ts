/**
 * Binary patches between two published versions (docs/delivery.md, "Patches"): what a guest that
 * runs version FROM needs to rebuild, from bytes it already holds, the chunks of version TO that
 * FROM's disk lacks. Chunks alone send a changed file whole (each 64 KiB piece of it is a new
 * chunk); most changed files are a new build of an old one (a library's point release, a kernel
 * module of the next stable kernel) and differ from their old copy in a few places.
 *
 * For each chunk of TO that FROM lacks, the publisher picks a reference the guest holds — FROM's
 * disk bytes at the same offset (inode tables, folders, bitmaps: changed in a few bytes), and, for
 * each file of TO owning blocks of the chunk, the same span (± {@link SPAN_MARGIN}) of that file's
 * copy in FROM (same path; the kernel's files across its release) — and writes the chunk as a
 * zstd frame compressed with that reference as prefix (`zstd --patch-from`), or as a plain zstd
 * frame when that is smaller. The guest (pgi-stage-delta) reads the references from its running
 * disk and file system, decompresses each frame, keeps the chunks whose digest is right (a file
 * or block that changed on this VM since it was deployed gives a wrong chunk, which is left out)
 * and hands them to casync as one more seed: casync then fetches from the store only what the
 * patch could not rebuild, and the whole disk is checked against the signed digest as before.
 *
 * The pack is one file, `STORE/<name>/<TO>/from-<FROM>.pgipatch`, listed with its sha256 in TO's
 * signed delivery.json:
 *
 *   "PGIPATCH" (8 bytes) | header length (u32 LE) | header (zlib-compressed JSON) | frames
 *
 * The header names both versions (raw sha256 of each) and lists, per chunk in TO's disk order,
 * `[chunk id, size, frame bytes, refs]`, a ref being `["d", offset, length]` (FROM's disk) or
 * `["f", path, offset, length]` (a file of FROM's tree); no refs: a plain frame.
 *
 * Written here and not with an existing tool: OSTree's static deltas and deltarpm need their own
 * repository format, bsdiff wants both whole files in memory per call and has no decoder in the
 * image; zstd's --patch-from format is decoded by libzstd, which every Debian image already has.
 */
import {createHash} from 'node:crypto'
import {availableParallelism} from 'node:os'
import {mkdir, open, readFile, stat, writeFile, rm} from 'node:fs/promises'
import {join} from 'node:path'
import {deflateSync} from 'node:zlib'

import {ErrorCode, UserError} from '../errors.js'
import {requireTools, run} from '../exec.js'
import type {Io} from '../io.js'
import {fsTarget} from './ext4.js'
import type {IndexChunk} from './caibx.js'

export const PATCH_MAGIC = Buffer.from('PGIPATCH')
/** The ext4 block size of pgi images (mkfs.ext4 -T default). */
const BS = 4096
/** Bytes of a file's old copy taken around the span a chunk covers: what moved by a few KiB is still found. */
export const SPAN_MARGIN = 256 * 1024
/** zstd level of the frames: -19, as the measured floor in docs/performance.md. */
const LEVEL = 19

export type PatchRef = ['d', number, number] | ['f', string, number, number]
/** One rebuilt chunk: id, size, its frame's length in the pack, references (none: a plain frame). */
export type PatchChunk = [string, number, number, PatchRef[]]

export interface PatchHeader {
  format: 1
  name: string
  from: {version: string; raw_sha256: string}
  to: {version: string; raw_sha256: string}
  chunk_digest: 'sha512-256'
  chunks: PatchChunk[]
}

/** What TO's delivery.json lists for one pack. */
export interface PatchEntry {
  from: string
  from_raw_sha256: string
  file: string
  sha256: string
  size_bytes: number
  /** Chunks of TO the pack rebuilds, and their bytes uncompressed. */
  chunks: number
  chunk_bytes: number
}

export interface MakePatchOptions {
  name: string
  from: {version: string; raw: string; rawSha256: string; index: IndexChunk[]}
  to: {version: string; raw: string; rawSha256: string; index: IndexChunk[]}
  /** The pack's path. */
  out: string
  /** A scratch folder (removed by the caller). */
  work: string
  io: Io
  signal?: AbortSignal
}

export interface MakePatchResult {
  sha256: string
  sizeBytes: number
  chunks: number
  chunkBytes: number
  /** Frames with a reference, and plain ones. */
  patched: number
  plain: number
}

/** Chunk ids with their offsets, in disk order. */
export function withOffsets(index: readonly IndexChunk[]): {id: string; start: number; size: number}[] {
  let off = 0
  return index.map((c) => {
    const r = {id: c.id, start: off, size: c.size}
    off += c.size
    return r
  })
}

/** The first partition's byte offset (sfdisk's JSON), or 0 for a disk without a partition table. */
async function partitionOffset(raw: string, io: Io): Promise<number> {
  const r = await run('sfdisk', ['-J', raw], {allowFailure: true}, io)
  if (r.exitCode !== 0) return 0
  const t = (JSON.parse(r.stdout) as {partitiontable?: {sectorsize?: number; partitions?: {start: number}[]}}).partitiontable
  const p = t?.partitions?.[0]
  return p ? p.start * (t?.sectorsize ?? 512) : 0
}

/** Does the disk hold an ext4 (ext2/3) file system at `offset`? Its superblock's magic, 0xEF53 at 1024 + 56. */
async function isExt4(raw: string, offset: number): Promise<boolean> {
  const fh = await open(raw, 'r')
  try {
    const b = Buffer.alloc(2)
    const {bytesRead} = await fh.read(b, 0, 2, offset + 1024 + 56)
    return bytesRead === 2 && b.readUInt16LE(0) === 0xef53
  } finally {
    await fh.close()
  }
}

/** Runs read-only debugfs commands (from stdin) and returns their output. */
async function debugfsRead(target: string, commands: readonly string[], io: Io): Promise<string> {
  if (commands.length === 0) return ''
  return (await run('debugfs', ['-f', '-', target], {input: commands.join('\n') + '\n', env: {LC_ALL: 'C'}}, io)).stdout
}

/** debugfs `icheck` output: block → inode (blocks owned by no inode left out). */
export function parseIcheck(out: string): Map<number, number> {
  const m = new Map<number, number>()
  for (const line of out.split('\n')) {
    const r = /^(\d+)\t(\d+)$/.exec(line.trim())
    if (r) m.set(Number(r[1]), Number(r[2]))
  }
  return m
}

/** debugfs `ncheck` output: inode → path (its first name; debugfs prints the root's entries as `//x`). */
export function parseNcheck(out: string): Map<number, string> {
  const m = new Map<number, string>()
  for (const line of out.split('\n')) {
    const r = /^(\d+)\t(\/.*)$/.exec(line)
    if (r && !m.has(Number(r[1]))) m.set(Number(r[1]), r[2]!.replace(/^\/\/+/, '/'))
  }
  return m
}

/** debugfs `dump_extents -l` output after a `debugfs: dump_extents -l PATH` echo: path → [logical, physical, length][]. */
export function parseExtents(out: string): Map<string, [number, number, number][]> {
  const m = new Map<string, [number, number, number][]>()
  let cur: string | undefined
  for (const line of out.split('\n')) {
    const echo = /^debugfs: dump_extents -l "(.*)"$/.exec(line)
    if (echo) {
      cur = echo[1]
      m.set(cur!, [])
      continue
    }
    const r = /^\s*\d+\/\s*\d+\s+\d+\/\s*\d+\s+(\d+)\s*-\s*\d+\s+(\d+)\s*-\s*\d+\s+(\d+)/.exec(line)
    if (r && cur !== undefined) m.get(cur)!.push([Number(r[1]), Number(r[2]), Number(r[3])])
  }
  return m
}

/** debugfs `stat` output after `debugfs: stat "PATH"` echoes: path → its type (regular, directory, symlink…). */
export function parseTypes(out: string): Map<string, string> {
  const m = new Map<string, string>()
  let cur: string | undefined
  for (const line of out.split('\n')) {
    const echo = /^debugfs: stat "(.*)"$/.exec(line)
    if (echo) {
      cur = echo[1]
      continue
    }
    const t = /^Inode:\s+\d+\s+Type:\s+(\S+)/.exec(line)
    if (t && cur !== undefined) {
      m.set(cur, t[1]!)
      cur = undefined
    }
  }
  return m
}

/** debugfs quoting: a path with a double quote or a line break is left out (none in a Debian tree). */
const quotable = (p: string) => !/["\n\\]/.test(p)

/** The kernel release an image's tree holds (its one /usr/lib/modules folder), from debugfs `ls`. */
async function kernelRelease(target: string, io: Io): Promise<string | undefined> {
  const out = await debugfsRead(target, ['ls -p /usr/lib/modules'], io)
  const names = out.split('\n').map((l) => l.split('/')[5]).filter((n): n is string => !!n && n !== '.' && n !== '..')
  return names.length === 1 ? names[0] : undefined
}

/** Runs `fn` over `items` with at most `n` at once. */
async function pool<T>(items: readonly T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({length: Math.min(n, items.length)}, async () => {
    while (next < items.length) {
      const i = next++
      await fn(items[i]!, i)
    }
  }))
}

/**
 * Writes the pack that rebuilds, from FROM's disk and tree, the chunks of TO that FROM's disk
 * lacks. Reads both raw disks (ext4 through debugfs, no mount), runs zstd once or twice per chunk.
 */
export async function makePatch(o: MakePatchOptions): Promise<MakePatchResult> {
  await requireTools(['debugfs', 'sfdisk', 'zstd'])
  const have = new Set(o.from.index.map((c) => c.id))
  const seen = new Set<string>()
  const missing = withOffsets(o.to.index).filter((c) => !have.has(c.id) && !seen.has(c.id) && seen.add(c.id))
  const [fromPart, toPart] = [await partitionOffset(o.from.raw, o.io), await partitionOffset(o.to.raw, o.io)]
  const fromFs = fsTarget(o.from.raw, fromPart)
  const toFs = fsTarget(o.to.raw, toPart)
  // without an ext4 file system on both disks (not a pgi image), references are the old disk's
  // bytes at the same offsets only
  const files = (await isExt4(o.from.raw, fromPart)) && (await isExt4(o.to.raw, toPart))

  // the files of TO owning the missing chunks' blocks, and where each block is in its file
  const blockOf = (off: number) => Math.floor((off - toPart) / BS)
  const blocks = new Set<number>()
  for (const c of files ? missing : []) {
    if (c.start + c.size <= toPart) continue
    for (let b = Math.max(0, blockOf(c.start)); b <= blockOf(c.start + c.size - 1); b++) blocks.add(b)
  }
  const list = [...blocks].sort((a, b) => a - b)
  const icheck: string[] = []
  for (let i = 0; i < list.length; i += 500) icheck.push(`icheck ${list.slice(i, i + 500).join(' ')}`)
  const owner = parseIcheck(await debugfsRead(toFs, icheck, o.io))
  const inodes = [...new Set(owner.values())].filter((i) => i > 11 || i === 2)
  const ncheck: string[] = []
  for (let i = 0; i < inodes.length; i += 500) ncheck.push(`ncheck ${inodes.slice(i, i + 500).join(' ')}`)
  const names = parseNcheck(await debugfsRead(toFs, ncheck, o.io))
  // regular files only: a guest reads the references through its file system (a folder's or a
  // symbolic link's blocks are not what open() gives)
  const named = [...new Set(names.values())].filter(quotable)
  const types = parseTypes(await debugfsRead(toFs, named.map((p) => `stat "${p}"`), o.io))
  const paths = named.filter((p) => types.get(p) === 'regular')
  const extents = parseExtents(await debugfsRead(toFs, paths.map((p) => `dump_extents -l "${p}"`), o.io))
  const logical = new Map<number, [string, number]>()
  for (const [p, ex] of extents) for (const [l, ph, n] of ex) for (let k = 0; k < n; k++) logical.set(ph + k, [p, l + k])

  // FROM's copies of those files (the kernel's across its release), dumped once
  const [kFrom, kTo] = files ? [await kernelRelease(fromFs, o.io), await kernelRelease(toFs, o.io)] : []
  const oldPath = (p: string) => (kFrom && kTo && kFrom !== kTo ? p.split(kTo).join(kFrom) : p)
  const oldDir = join(o.work, 'old')
  await mkdir(oldDir, {recursive: true})
  const wanted = [...extents.keys()].map(oldPath).filter(quotable)
  const local = new Map<string, string>()
  wanted.forEach((p, i) => local.set(p, join(oldDir, String(i))))
  // `dump` of a path FROM lacks writes nothing: such a file gets no reference (nor one that is no
  // longer a regular file there)
  const oldTypes = parseTypes(await debugfsRead(fromFs, wanted.map((p) => `stat "${p}"`), o.io))
  await debugfsRead(fromFs, wanted.filter((p) => oldTypes.get(p) === 'regular').map((p) => `dump "${p}" "${local.get(p)}"`), o.io)
  const oldSize = new Map<string, number>()
  for (const [p, f] of local) {
    const s = await stat(f).catch(() => undefined)
    if (s?.isFile()) oldSize.set(p, s.size)
  }

  // FROM's bytes end with its image: a VM's OS disk is larger (grown at deploy) and holds other
  // bytes past that end, so a reference stops there (the publisher would read zeros, the guest not)
  const fromSize = (await stat(o.from.raw)).size
  const fromDisk = await open(o.from.raw, 'r')
  const toDisk = await open(o.to.raw, 'r')
  const frames: Buffer[] = new Array(missing.length)
  const entries: PatchChunk[] = new Array(missing.length)
  let patched = 0
  const chunkDir = join(o.work, 'chunks')
  await mkdir(chunkDir, {recursive: true})
  let done = 0
  try {
    await pool(missing, Math.max(1, availableParallelism()), async (c, i) => {
      if (o.signal?.aborted) throw new UserError(ErrorCode.INTERRUPTED, 'interrupted while writing the patch')
      const data = Buffer.alloc(c.size)
      await toDisk.read(data, 0, c.size, c.start)
      const refs: PatchRef[] = c.start < fromSize ? [['d', c.start, Math.min(c.size, fromSize - c.start)]] : []
      const spans = new Map<string, [number, number]>()
      if (c.start + c.size > toPart) {
        for (let b = Math.max(0, blockOf(c.start)); b <= blockOf(c.start + c.size - 1); b++) {
          const f = logical.get(b)
          if (!f) continue
          const s = spans.get(f[0])
          spans.set(f[0], s ? [Math.min(s[0], f[1]), Math.max(s[1], f[1])] : [f[1], f[1]])
        }
      }
      for (const [p, [a, z]] of spans) {
        const op = oldPath(p)
        const size = oldSize.get(op)
        if (size === undefined) continue
        const from = Math.max(0, a * BS - SPAN_MARGIN)
        const to = Math.min(size, (z + 1) * BS + SPAN_MARGIN)
        if (to > from) refs.push(['f', op, from, to - from])
      }
      const ref = Buffer.concat(await Promise.all(refs.map(async (r) => {
        if (r[0] === 'd') {
          const b = Buffer.alloc(r[2])
          await fromDisk.read(b, 0, r[2], r[1])
          return b
        }
        const fh = await open(local.get(r[1])!, 'r')
        try {
          const b = Buffer.alloc(r[3])
          await fh.read(b, 0, r[3], r[2])
          return b
        } finally {
          await fh.close()
        }
      })))
      const base = join(chunkDir, String(i))
      await writeFile(`${base}.c`, data)
      // no reference at all (a chunk past FROM's end that no old file owns): a plain frame
      let p: Buffer | undefined
      if (refs.length) {
        await writeFile(`${base}.r`, ref)
        await run('zstd', [`-${LEVEL}`, '-q', '-f', '--no-progress', `--patch-from=${base}.r`, `${base}.c`, '-o', `${base}.p`], {signal: o.signal}, o.io)
        p = await readFile(`${base}.p`)
      }
      // a frame an eighth of its chunk or less: the reference paid off, no need to try without
      let z: Buffer | undefined
      if (!p || p.length * 8 > c.size) {
        await run('zstd', [`-${LEVEL}`, '-q', '-f', '--no-progress', `${base}.c`, '-o', `${base}.z`], {signal: o.signal}, o.io)
        z = await readFile(`${base}.z`)
      }
      const usePatch = p !== undefined && (!z || p.length < z.length)
      frames[i] = usePatch ? p! : z!
      entries[i] = [c.id, c.size, frames[i]!.length, usePatch ? refs : []]
      if (usePatch) patched++
      await Promise.all(['c', 'r', 'p', 'z'].map((e) => rm(`${base}.${e}`, {force: true})))
      if (++done % 500 === 0) o.io.info(`patch from ${o.from.version}: ${done} of ${missing.length} chunks`)
    })
  } finally {
    await fromDisk.close()
    await toDisk.close()
  }
  const header: PatchHeader = {
    format: 1,
    name: o.name,
    from: {version: o.from.version, raw_sha256: o.from.rawSha256},
    to: {version: o.to.version, raw_sha256: o.to.rawSha256},
    chunk_digest: 'sha512-256',
    chunks: entries,
  }
  const h = deflateSync(Buffer.from(JSON.stringify(header)), {level: 9})
  const len = Buffer.alloc(4)
  len.writeUInt32LE(h.length)
  const pack = Buffer.concat([PATCH_MAGIC, len, h, ...frames])
  await writeFile(o.out, pack)
  return {
    sha256: createHash('sha256').update(pack).digest('hex'),
    sizeBytes: pack.length,
    chunks: missing.length,
    chunkBytes: missing.reduce((s, c) => s + c.size, 0),
    patched,
    plain: missing.length - patched,
  }
}
