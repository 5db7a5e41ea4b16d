/**
 * Moving a file into the VM through the guest agent (a dump to import, a student list): the agent
 * takes at most ~45 KiB per file-write (PVE's limit on the request), so the file is sent as base64
 * chunks of 45,000 characters (33,750 bytes of the file each), each a file-write into a private
 * folder on the data disk (`/srv/pgi/imports/.upload.XXXXXX`, root only: a dump may be larger than
 * /tmp's memory). One command then joins and decodes them into the target file and prints its
 * sha256, which must be the local file's. file-write is idempotent (a lost answer is re-sent);
 * the folder is removed whatever happens.
 *
 * Cost: one API call per 33 KB, about 30 calls per MB. Hence a limit, DB_UPLOAD_MAX_BYTES (64 MiB,
 * ~2000 calls; a teaching database's dump is 1-10 MB): larger dumps go through SSH with
 * `scp` and `pgi-db import` in the VM (docs/databases.md).
 *
 * The other way (export) is src/fleet/guest-copy.ts's copyFromGuest: file-read gives 16 MiB a call.
 */
import {createHash} from 'node:crypto'

import {ErrorCode, UserError} from '../errors.js'
import {guestWhere, type GuestTarget} from '../fleet/guest.js'

/** Base64 characters per file-write: under the client's 61,440 (PVE's ~45 KiB of content). */
export const UPLOAD_CHUNK_CHARS = 45_000
/** The largest file `pgi db import` sends through the guest agent. */
export const DB_UPLOAD_MAX_BYTES = 64 * 1024 * 1024
/** Where uploads are staged in the VM (on the data disk, root only). */
export const GUEST_UPLOADS = '/srv/pgi/imports'

export interface UploadResult {
  /** The file in the VM (inside `dir`). */
  path: string
  /** The private folder holding it: remove it with `removeUpload` when done. */
  dir: string
  bytes: number
  sha256: string
  calls: number
}


// the scripts get their paths as arguments, never interpolated into the text
export const MKDIR_SCRIPT = 'set -e; umask 077; mkdir -p "$1"; chmod 700 "$1"; mktemp -d "$1/.upload.XXXXXX"'
export const JOIN_SCRIPT = 'set -e; umask 077; cd "$1"; cat c.* | base64 -d > "$2.partial"; mv -f "$2.partial" "$2"; rm -f c.*; sha256sum "$2"'

/**
 * Sends `files` (name → bytes) into one new private folder of the VM; returns each file's path.
 * The names are plain (letters, digits, . _ -).
 */
export async function uploadToGuest(t: GuestTarget, files: {name: string; data: Uint8Array}[], opts: {onProgress?: (text: string) => void} = {}): Promise<{dir: string; files: UploadResult[]}> {
  const {api, node, vmid} = t
  for (const f of files) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$/.test(f.name)) throw new Error(`upload name ${f.name} is not plain`)
  const mk = await api.agentExec(node, vmid, ['/bin/sh', '-c', MKDIR_SCRIPT, 'sh', GUEST_UPLOADS], {timeoutMs: 60_000})
  const dir = mk.stdout.trim().split('\n').slice(-1)[0] ?? ''
  if (mk.exitcode !== 0 || !dir.startsWith(`${GUEST_UPLOADS}/.upload.`)) {
    throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `could not make a folder for the upload in VM ${vmid} (exit ${mk.exitcode}): ${(mk.stderr || mk.stdout).trim().slice(-300)}`, {
      where: guestWhere(t),
      suggestions: ['Check the data disk (`pgi status`): it must be mounted and have room.'],
    })
  }
  const out: UploadResult[] = []
  try {
    for (const f of files) {
      const text = Buffer.from(f.data).toString('base64')
      const n = Math.max(1, Math.ceil(text.length / UPLOAD_CHUNK_CHARS))
      for (let i = 0; i < n; i++) {
        if (n > 1 && (i % 20 === 0 || i === n - 1)) opts.onProgress?.(`sending ${f.name}: ${Math.round((100 * (i + 1)) / n)} % (${i + 1}/${n} pieces)`)
        await api.agentFileWrite(node, vmid, `${dir}/c.${String(i).padStart(6, '0')}`, text.slice(i * UPLOAD_CHUNK_CHARS, (i + 1) * UPLOAD_CHUNK_CHARS))
      }
      const path = `${dir}/${f.name}`
      const r = await api.agentExec(node, vmid, ['/bin/sh', '-c', JOIN_SCRIPT, 'sh', dir, path], {timeoutMs: 600_000, idempotent: false})
      const sha256 = createHash('sha256').update(f.data).digest('hex')
      const got = /^([0-9a-f]{64})\s/.exec(r.stdout.trim())?.[1]
      if (r.exitcode !== 0 || got !== sha256) {
        throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `the copy of ${f.name} in VM ${vmid} is not the file sent (exit ${r.exitcode}, sha256 ${got ?? 'none'} instead of ${sha256}): ${(r.stderr || '').trim().slice(-300)}`, {
          where: guestWhere(t),
          suggestions: ['Nothing was created. Check the data disk has room (`pgi status`), then retry.'],
        })
      }
      out.push({path, dir, bytes: f.data.length, sha256, calls: n + 1})
    }
  } catch (err) {
    await removeUpload(t, dir)
    throw err
  }
  return {dir, files: out}
}

/** Removes an upload's folder (best effort: it is under the data disk's imports, root only). */
export async function removeUpload(t: GuestTarget, dir: string): Promise<void> {
  if (!dir.startsWith(`${GUEST_UPLOADS}/.upload.`)) return
  await t.api.agentExec(t.node, t.vmid, ['/bin/rm', '-rf', '--', dir], {timeoutMs: 60_000, idempotent: true}).catch(() => undefined)
}
