import {randomBytes} from 'node:crypto'
import {open, rename, unlink} from 'node:fs/promises'
import {dirname, join} from 'node:path'

/**
 * Writes `content` to a private temp file beside `file` (hidden name ending in .tmp), fsyncs it,
 * renames it over `file` and fsyncs the folder: readers see the old file or the new one, never a
 * part. A crash leaves at most a stray `.*.tmp` file, which the store ignores.
 */
export async function writeFileAtomic(
  file: string,
  content: string | Uint8Array,
  opts: {mode?: number; beforeRename?: (tmp: string) => Promise<void>} = {},
): Promise<void> {
  const mode = opts.mode ?? 0o600
  const tmp = join(dirname(file), `.${randomBytes(8).toString('hex')}.tmp`)
  const fh = await open(tmp, 'wx', mode)
  let renamed = false
  try {
    await fh.writeFile(content)
    await fh.chmod(mode)
    await fh.sync()
    await fh.close()
    await opts.beforeRename?.(tmp)
    await rename(tmp, file)
    renamed = true
    await syncDir(dirname(file))
  } finally {
    await fh.close().catch(() => undefined)
    if (!renamed) await unlink(tmp).catch(() => undefined)
  }
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } catch {
    // Some filesystems refuse fsync on a directory; the rename is still atomic.
  } finally {
    await fh.close()
  }
}
