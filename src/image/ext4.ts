import {ErrorCode, UserError} from '../errors.js'
import {run} from '../exec.js'
import type {Io} from '../io.js'

/**
 * The image's ext4 file system, made so that the same tree gives the same bytes in every build
 * (docs/image.md, "Reproducible bytes"). e2fsprogs (mkfs.ext4 -d, debugfs, tune2fs, dumpe2fs)
 * does the work: it writes a file system from a directory without mounting it, and lets every
 * inode and superblock field be set afterwards. What it would otherwise take from the build
 * machine, and how each is pinned:
 *
 * - the clock (mkfs and tune2fs times, the superblock's write time): `E2FSPROGS_FAKE_TIME`;
 * - UUID and directory hash seed (random by default): given, derived from the image's name and version;
 * - the order of directory entries and inode numbers: mkfs.ext4 -d sorts each directory with
 *   `scandir(alphasort)`, which collates by the locale: `LC_ALL=C`;
 * - each inode's ctime and atime, copied from the build tree (ctime is when the build wrote the
 *   file, and no program can set it): set afterwards with debugfs to the inode's own mtime, by
 *   inode number (every inode in use, whatever its name), with the creation time, generation and
 *   version;
 * - what a read-write mount writes (extlinux needs one): see {@link pinSuperblock} and {@link pinInodes}.
 */

/**
 * A file system inside an image file, for e2fsprogs: `file?offset=N` (its Unix I/O manager takes
 * options after `?`), so that no loop device is needed.
 */
export function fsTarget(image: string, offset: number): string {
  return offset > 0 ? `${image}?offset=${offset}` : image
}

function fakeTime(epoch: number): Record<string, string> {
  return {E2FSPROGS_FAKE_TIME: String(epoch), SOURCE_DATE_EPOCH: String(epoch), LC_ALL: 'C'}
}

export interface Ext4FromTree {
  tree: string
  /** Image file (created beforehand at its full size) and the partition's offset in it. */
  image: string
  offset: number
  sizeBytes: number
  label: string
  uuid: string
  hashSeed: string
  epoch: number
  /** Without a journal (one is added by {@link addJournal} after the boot loader's mount). */
  journal?: boolean
}

/** `mkfs.ext4 -d tree` into the image at `offset`, with fixed identifiers and clock. */
export async function mkfsFromTree(o: Ext4FromTree, io?: Io): Promise<void> {
  await run('mkfs.ext4', [
    '-q', '-F', '-d', o.tree, '-L', o.label, '-U', o.uuid,
    '-E', `hash_seed=${o.hashSeed},offset=${o.offset},root_owner=0:0,lazy_itable_init=0,nodiscard`,
    '-O', `^64bit${o.journal ? '' : ',^has_journal'}`, '-m', '1', '-T', 'default',
    o.image, `${Math.floor(o.sizeBytes / 1024)}k`,
  ], {env: fakeTime(o.epoch)}, io)
}

/** Runs debugfs commands (read from stdin) on `target`, read-write. */
export async function debugfs(target: string, commands: readonly string[], epoch: number, io?: Io): Promise<void> {
  const r = await run('debugfs', ['-w', '-f', '-', target], {env: fakeTime(epoch), input: commands.join('\n') + '\n'}, io)
  // debugfs exits 0 whatever its commands did: anything but its banner and the echoed commands is an error
  const errors = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.trim() && !/^debugfs[: ]/.test(l))
  if (errors.length > 0) throw new UserError(ErrorCode.TOOL_FAILED, `debugfs on ${target}: ${errors.slice(0, 3).join('; ')}`)
}

/**
 * The inode numbers in use, from dumpe2fs's per-group "Free inodes:" lists (the inode bitmaps):
 * every inode of a group that is not listed free. Reserved inodes 1–10 are left out but for the
 * root directory (2), the resize inode (7) and the journal (8).
 */
export function usedInodes(dumpe2fsOutput: string): number[] {
  const perGroup = /^Inodes per group:\s+(\d+)/m.exec(dumpe2fsOutput)
  const count = /^Inode count:\s+(\d+)/m.exec(dumpe2fsOutput)
  if (!perGroup || !count) throw new UserError(ErrorCode.TOOL_FAILED, 'dumpe2fs: no inode count or inodes per group in its output')
  const ipg = Number(perGroup[1])
  const groups = Number(count[1]) / ipg
  const free: string[] = []
  for (const m of dumpe2fsOutput.matchAll(/^\s+Free inodes:[ \t]*(.*)$/gm)) free.push(m[1]!.trim())
  if (free.length !== groups) throw new UserError(ErrorCode.TOOL_FAILED, `dumpe2fs: ${free.length} "Free inodes" lists for ${groups} groups`)
  const used: number[] = []
  free.forEach((list, g) => {
    const isFree = new Set<number>()
    for (const part of list.split(',').map((s) => s.trim()).filter(Boolean)) {
      const m = /^(\d+)(?:-(\d+))?$/.exec(part)
      if (!m) throw new UserError(ErrorCode.TOOL_FAILED, `dumpe2fs: unexpected free inode range "${part}"`)
      for (let i = Number(m[1]); i <= Number(m[2] ?? m[1]); i++) isFree.add(i)
    }
    for (let i = g * ipg + 1; i <= (g + 1) * ipg; i++) {
      if (isFree.has(i)) continue
      if (i <= 10 && i !== 2 && i !== 7 && i !== 8) continue
      used.push(i)
    }
  })
  return used
}

/**
 * The superblock fields a read-write mount writes (mount and write times, last check, mount count,
 * lifetime writes) set to `epoch` / 0. Run it before {@link addJournal}: tune2fs copies the
 * primary superblock to the backups when it adds the journal.
 */
export async function pinSuperblock(target: string, epoch: number, io?: Io): Promise<void> {
  await debugfs(target, [...['mtime', 'wtime', 'lastcheck'].map((f) => `ssv ${f} @${epoch}`), 'ssv mnt_count 0', 'ssv kbytes_written 0'], epoch, io)
}

/** Adds the journal (never written to, so no transactions of the build's mount in it). */
export async function addJournal(target: string, epoch: number, io?: Io): Promise<void> {
  await run('tune2fs', ['-j', target], {env: fakeTime(epoch)}, io)
}

/**
 * The mtime (seconds) of each inode in `inodes`, read with debugfs `stat` in one run. */
export async function inodeMtimes(target: string, inodes: readonly number[], io?: Io): Promise<Map<number, number>> {
  const r = await run('debugfs', ['-f', '-', target], {env: {DEBUGFS_PAGER: '__none__', LC_ALL: 'C'}, input: inodes.map((n) => `stat <${n}>`).join('\n') + '\n'}, io)
  return parseInodeMtimes(r.stdout)
}

/**
 * The files among `paths` stored with holes (fewer blocks allocated than their size needs), read
 * with debugfs `stat`. mkfs.ext4 -d stores every all-zero 4 KiB block of a file as a hole, and
 * extlinux cannot load such a file: an image whose kernel or initramfs has one does not boot,
 * without a message (seen with an uncompressed initramfs).
 */
export async function sparseFiles(target: string, paths: readonly string[], io?: Io): Promise<string[]> {
  const r = await run('debugfs', ['-f', '-', target], {env: {DEBUGFS_PAGER: '__none__', LC_ALL: 'C'}, input: paths.map((p) => `stat "${p}"`).join('\n') + '\n'}, io)
  const stats = parseSizeAndBlocks(r.stdout)
  if (stats.length !== paths.length) throw new UserError(ErrorCode.TOOL_FAILED, `debugfs on ${target}: ${paths.length} files asked, ${stats.length} read`)
  return paths.filter((_, i) => stats[i]!.blocks512 * 512 < Math.ceil(stats[i]!.size / 4096) * 4096)
}

/** debugfs `stat` output (several inodes, in order) → each one's size and 512-byte block count. */
export function parseSizeAndBlocks(out: string): {size: number; blocks512: number}[] {
  const rows: {size: number; blocks512: number}[] = []
  for (const line of out.split('\n')) {
    if (/^Inode: \d+\s/.test(line)) rows.push({size: -1, blocks512: -1})
    const row = rows.at(-1)
    if (!row) continue
    const size = /\bSize: (\d+)/.exec(line)
    if (size && row.size < 0) row.size = Number(size[1])
    const blocks = /\bBlockcount: (\d+)/.exec(line)
    if (blocks && row.blocks512 < 0) row.blocks512 = Number(blocks[1])
  }
  return rows
}

/** debugfs `stat` output (several inodes) → inode number → mtime in seconds. */
export function parseInodeMtimes(out: string): Map<number, number> {
  const times = new Map<number, number>()
  let current: number | undefined
  for (const line of out.split('\n')) {
    const inode = /^Inode: (\d+)\s/.exec(line)
    if (inode) current = Number(inode[1])
    const m = /^\s*mtime: 0x([0-9a-f]+)(?::[0-9a-f]+)?\b/.exec(line)
    if (m && current !== undefined && !times.has(current)) times.set(current, parseInt(m[1]!, 16))
  }
  return times
}

/**
 * Sets every inode in use to times that follow from its content, not from the build's clock:
 * ctime, atime and creation time to the inode's own mtime (nanoseconds 0), generation and version
 * 0 (random or counted for the inodes a mount creates or changes); and the mtime of `mtimePaths`
 * (what a mount wrote, e.g. the boot loader's files; `<N>` for an inode by number) to
 * `pathsTime`. mkfs.ext4 -d copies each file's mtime from the tree (a package's own, or the
 * build's SOURCE_DATE_EPOCH for what the build wrote: see src/image/tree-times.ts), so an inode
 * whose file did not change between two versions keeps the same bytes, and so do the inode
 * tables around it: with the build's time in every inode, as before, each new version rewrote
 * all of them, and every chunk of a delta holding one (docs/delivery.md). By inode number, so
 * that any file name, whatever characters it holds, is covered.
 */
export async function pinInodes(target: string, epoch: number, o: {mtimePaths?: readonly string[]; pathsTime?: number} = {}, io?: Io): Promise<number> {
  const inodes = usedInodes((await run('dumpe2fs', [target], {env: fakeTime(epoch)}, io)).stdout)
  const pathsTime = o.pathsTime ?? epoch
  const cmds: string[] = []
  for (const p of o.mtimePaths ?? []) {
    if (/["\n]/.test(p)) throw new UserError(ErrorCode.TOOL_FAILED, `${JSON.stringify(p)}: a name debugfs cannot quote`)
    const ref = /^<\d+>$/.test(p) ? p : `"${p}"`
    cmds.push(`sif ${ref} mtime @${pathsTime}`, `sif ${ref} mtime_extra 0`)
  }
  // the mtimes after the commands above: those paths' inodes are read once they are set
  if (cmds.length > 0) await debugfs(target, cmds, epoch, io)
  const mtimes = await inodeMtimes(target, inodes, io)
  cmds.length = 0
  for (const n of inodes) {
    const t = mtimes.get(n)
    if (t === undefined) throw new UserError(ErrorCode.TOOL_FAILED, `debugfs on ${target}: no mtime read for inode ${n}`)
    for (const f of ['ctime', 'atime', 'crtime']) cmds.push(`sif <${n}> ${f} @${t}`, `sif <${n}> ${f}_extra 0`)
    cmds.push(`sif <${n}> mtime_extra 0`, `sif <${n}> generation 0`, `sif <${n}> version 0`)
  }
  await debugfs(target, cmds, epoch, io)
  return inodes.length
}
