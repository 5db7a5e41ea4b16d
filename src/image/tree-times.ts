import {lstat, lutimes, readdir} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

/**
 * The image tree's modification times, set so that what did not change between two versions keeps
 * its time, and with it its inode's bytes (src/image/ext4.ts pinInodes gives each inode's other
 * times its mtime): a version's delta is then the files that changed, not every inode table
 * block of the disk (docs/delivery.md, "What a new version sends"). Run after the build has
 * clamped every mtime newer than SOURCE_DATE_EPOCH to it:
 *
 * - a Python byte-code file (`__pycache__/NAME.cpython-311[.opt-N].pyc`, compiled by the build
 *   with hash-based invalidation, so its time is not used by Python) takes the time of its
 *   source `NAME.py`, not the build's;
 * - a directory takes the newest time of what it holds, at any depth (the build wrote to nearly
 *   every directory, which gave them all SOURCE_DATE_EPOCH, a new time in every version); one
 *   that holds nothing but empty directories takes its nearest ancestor's.
 *
 * Written here rather than with find/touch: the rule for directories needs their content's times
 * first (a walk from the leaves up), and this is one walk of ~23,000 entries in Node.
 */
export async function settleTreeTimes(root: string): Promise<{pyc: number; directories: number}> {
  let pyc = 0
  let directories = 0
  const dirTimes: {path: string; time: number | undefined}[] = []

  /** Returns the newest mtime (seconds) under `dir` (undefined: nothing but directories), after setting its children. */
  async function walk(dir: string): Promise<number | undefined> {
    let newest: number | undefined
    const names = (await readdir(dir)).sort()
    for (const name of names) {
      const p = join(dir, name)
      const st = await lstat(p)
      let t: number | undefined
      if (st.isDirectory()) {
        t = await walk(p)
      } else {
        t = Math.floor(st.mtimeMs / 1000)
        const source = pycSource(p)
        if (source) {
          const src = await lstat(source).catch(() => undefined)
          if (src?.isFile()) {
            t = Math.floor(src.mtimeMs / 1000)
            await lutimes(p, t, t)
            pyc++
          }
        }
      }
      if (t !== undefined && (newest === undefined || t > newest)) newest = t
    }
    dirTimes.push({path: dir, time: newest})
    return newest
  }

  await walk(root)
  // parents are pushed after their children: set from the root down, so that a directory holding
  // only empty directories finds its parent's time already decided
  const decided = new Map<string, number>()
  for (let i = dirTimes.length - 1; i >= 0; i--) {
    const d = dirTimes[i]!
    const t = d.time ?? decided.get(dirname(d.path)) ?? Math.floor((await lstat(d.path)).mtimeMs / 1000)
    decided.set(d.path, t)
    await lutimes(d.path, t, t)
    directories++
  }
  return {pyc, directories}
}

/** The source file of a byte-code file `…/__pycache__/NAME.TAG[.opt-N].pyc`, or undefined. */
export function pycSource(path: string): string | undefined {
  const dir = dirname(path)
  if (basename(dir) !== '__pycache__') return undefined
  const m = /^(.+?)\.[a-z]+-\d+(?:\.opt-\d+)?\.pyc$/.exec(basename(path))
  return m ? join(dirname(dir), `${m[1]}.py`) : undefined
}
