/**
 * The host-side block settings of a lab VM's disk, chosen as PVE chooses them.
 *
 * PVE (qemu-server, `print_drive_commandline_full`, PVE 7 and later) passes a disk's `cache` and
 * `aio` options through when its config sets them; otherwise a disk (not a CD-ROM) on a storage
 * that takes O_DIRECT gets `cache=none` (the host's page cache bypassed: the guest's flushes reach
 * the storage, and an fsync in the guest costs what it costs on the node), a CD-ROM QEMU's default
 * (writeback), and every drive `aio=io_uring` (`native` or `threads` on the few storages where PVE
 * avoids io_uring: LVM, CIFS, krbd without direct cache; the lab's storages are directories).
 *
 * The lab follows the same rule, so that what a guest's disk work costs in the lab (PostgreSQL's
 * fsyncs, a class's copies) is what it costs on a real node, not the host page cache's figure.
 * The one difference: where the lab's own directory refuses O_DIRECT or io_uring (an old tmpfs,
 * a container's seccomp filter), the disk falls back to `writeback` / `threads` and the VM's
 * task log says so, where PVE would fail to start the VM.
 */
import {mkdir, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {run} from '../exec.js'
import type {DiskAio, DiskCache} from '../qemu/vm.js'

/** What the host's storage directory takes, as QEMU's block layer sees it (qemu-io). */
export interface BlockHost {
  /** O_DIRECT (cache=none / directsync). */
  direct: boolean
  /** Linux io_uring (aio=io_uring). */
  ioUring: boolean
}

/** A disk as its VM config describes it (only what the block settings depend on). */
export interface DriveOptions {
  media: 'disk' | 'cdrom'
  cache?: DiskCache
  aio?: DiskAio
}

export interface BlockSettings {
  /** Undefined: QEMU's default (writeback), as PVE leaves it for a CD-ROM. */
  cache?: DiskCache
  aio: DiskAio
  /** Set when the lab could not do what PVE does (said in the VM's start task log). */
  note?: string
}

const DIRECT_MODES: ReadonlySet<DiskCache> = new Set(['none', 'directsync'])

/** PVE's cache and aio for a disk (see the module comment), on a host that takes `host`. */
export function pveBlockSettings(drive: DriveOptions, host: BlockHost): BlockSettings {
  let cache = drive.cache ?? (drive.media === 'cdrom' ? undefined : 'none')
  let note: string | undefined
  if (cache !== undefined && DIRECT_MODES.has(cache) && !host.direct) {
    note = `cache=${cache} needs O_DIRECT, which the lab's storage directory refuses: cache=writeback instead`
    cache = 'writeback'
  }
  const direct = cache !== undefined && DIRECT_MODES.has(cache)
  let aio = drive.aio ?? (host.ioUring ? 'io_uring' : direct ? 'native' : 'threads')
  if (aio === 'io_uring' && !host.ioUring) {
    note = [note, 'aio=io_uring is not available to QEMU on this host: aio=threads instead'].filter(Boolean).join('; ')
    aio = 'threads'
  }
  if (aio === 'native' && !direct) aio = 'threads' // QEMU refuses native AIO without O_DIRECT
  return {...(cache ? {cache} : {}), aio, ...(note ? {note} : {})}
}

/** A cache mode as QMP's blockdev-add takes it (`none`: direct I/O with the guest's flushes kept; undefined: writeback). */
export function qmpCache(cache: DiskCache | undefined): {direct: boolean; 'no-flush': boolean} {
  return {direct: cache !== undefined && DIRECT_MODES.has(cache), 'no-flush': cache === 'unsafe'}
}

/**
 * What `dir` takes, found with qemu-io on a scratch file there (QEMU's own block layer: the
 * answer is the one a VM's start would meet). Two writes and a flush, tens of milliseconds.
 */
export async function probeBlockHost(dir: string): Promise<BlockHost> {
  await mkdir(dir, {recursive: true})
  const file = join(dir, `.pgi-block-probe-${process.pid}.raw`)
  await writeFile(file, Buffer.alloc(1 << 20))
  const works = async (args: string[]) =>
    (await run('qemu-io', ['-f', 'raw', ...args, '-c', 'write 0 4k', '-c', 'flush', file], {allowFailure: true, timeoutMs: 30_000})).exitCode === 0
  try {
    const [direct, ioUring] = await Promise.all([works(['--nocache']), works(['--aio', 'io_uring'])])
    return {direct, ioUring}
  } finally {
    await rm(file, {force: true})
  }
}

/**
 * The block settings of a node's disks, each storage directory probed once (a lab's VMs start
 * many times: the probe's qemu-io runs are not paid again).
 */
export class BlockSettingsCache {
  readonly #hosts = new Map<string, Promise<BlockHost>>()

  /** PVE's settings for `drive` on the storage directory `root`; `log` gets the note when the lab must differ. */
  async settings(root: string, drive: DriveOptions & {key: string}, log: (line: string) => void): Promise<{cache?: DiskCache; aio: DiskAio}> {
    let host = this.#hosts.get(root)
    if (!host) {
      // a failed probe (qemu-io missing, the directory unwritable) is not kept: the next start asks again
      host = probeBlockHost(root).catch((error: unknown) => {
        this.#hosts.delete(root)
        throw error
      })
      this.#hosts.set(root, host)
    }
    const {note, ...settings} = pveBlockSettings(drive, await host)
    if (note) log(`${drive.key}: ${note}`)
    return settings
  }
}
