import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {lstat, readdir, readlink} from 'node:fs/promises'
import {join} from 'node:path'

/**
 * File-tree listings and digests, for reproducibility checks (two builds from the same lock must
 * give the same tree) and for recipe digests. Node has no library call for "hash a directory
 * tree with its metadata", and the format must stay stable, hence this small walker.
 */

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

export interface TreeEntry {
  /** Path relative to the root, "/"-prefixed ("/" for the root itself). */
  path: string
  type: 'f' | 'd' | 'l' | 'c' | 'b' | 'p' | 's'
  mode: string
  uid: number
  gid: number
  /** sha256 of a file's content, target of a link, major:minor of a device. */
  content: string
}

/**
 * Every entry under `root` (not crossing into other filesystems' mount points is the caller's
 * job: pass an unmounted tree), sorted by path. One line per entry in `formatTree`.
 */
export async function listTree(root: string): Promise<TreeEntry[]> {
  const out: TreeEntry[] = []
  async function walk(rel: string): Promise<void> {
    const abs = rel === '/' ? root : join(root, rel)
    const st = await lstat(abs)
    const mode = (st.mode & 0o7777).toString(8).padStart(4, '0')
    let type: TreeEntry['type'] = 'f'
    let content = ''
    if (st.isDirectory()) type = 'd'
    else if (st.isSymbolicLink()) {
      type = 'l'
      content = await readlink(abs)
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      type = st.isCharacterDevice() ? 'c' : 'b'
      content = `${Math.floor(st.rdev / 256)}:${st.rdev % 256}`
    } else if (st.isFIFO()) type = 'p'
    else if (st.isSocket()) type = 's'
    else content = await sha256File(abs)
    out.push({path: rel, type, mode, uid: st.uid, gid: st.gid, content})
    if (type === 'd') {
      const names = (await readdir(abs)).sort()
      for (const n of names) await walk(rel === '/' ? `/${n}` : `${rel}/${n}`)
    }
  }
  await walk('/')
  return out
}

export function formatTree(entries: TreeEntry[]): string {
  return entries.map((e) => `${e.type} ${e.mode} ${e.uid}:${e.gid} ${e.content || '-'} ${e.path}`).join('\n') + '\n'
}

/** sha256 of a tree listing (paths, types, modes, owners, content hashes). */
export function digestTree(entries: TreeEntry[]): string {
  return createHash('sha256').update(formatTree(entries)).digest('hex')
}

/**
 * A digest of a recipe's file or folder: relative paths, whether executable, and content
 * (not owners or mtimes, which differ between checkouts).
 */
export async function treeDigest(path: string): Promise<string> {
  // Python byte code is left out: the image build deletes every __pycache__ and compiles its own,
  // and the native test suites write one into images/…/files when they import the image's
  // modules — with the tests on VMs running beside them, that changed the recipe's digest (the e2e
  // image cache key) in the middle of a run and made it build the image again
  const entries = (await listTree(path)).filter((e) => !e.path.split('/').includes('__pycache__'))
  const h = createHash('sha256')
  for (const e of entries) {
    const exec = e.type === 'f' ? (parseInt(e.mode, 8) & 0o111 ? 'x' : '-') : ''
    h.update(`${e.type} ${exec} ${e.type === 'd' ? '' : e.content} ${e.path}\n`)
  }
  return h.digest('hex')
}
