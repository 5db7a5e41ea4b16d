/**
 * Copying a file out of a VM through the guest agent, binary-safe and of any size, then checking
 * its SHA-256. The agent's file-read returns text and at most 16 MiB per call, so the guest first
 * cuts a base64 rendering of the file into chunks (`base64 | split`, in a private temp folder);
 * each chunk is read with `agentFileRead`, decoded and appended locally; the folder is removed.
 * Written here because no library does "file out of a VM through the QEMU agent".
 */
import {createHash} from 'node:crypto'
import {mkdir, open, rename, rm} from 'node:fs/promises'
import {dirname} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import type {GuestTarget} from './guest.js'

/** Base64 bytes per chunk: under the agent's 16 MiB read limit with room to spare. */
const CHUNK = 12 * 1024 * 1024

export interface CopyResult {
  bytes: number
  sha256: string
}

/** Copies `guestPath` to `localPath` (mode 0600, atomically); checks `expectSha256` when given. */
export async function copyFromGuest(t: GuestTarget, guestPath: string, localPath: string, opts: {expectSha256?: string; onProgress?: (text: string) => void} = {}): Promise<CopyResult> {
  const {api, node, vmid} = t
  // the script gets the paths as arguments (no secret involved), never interpolated into the text
  const script = 'set -e; d=$(mktemp -d /tmp/pgi-xfer.XXXXXX); chmod 700 "$d"; base64 -w0 -- "$1" | split -b "$2" -d -a 5 - "$d/c."; echo "$d"; ls "$d"'
  // may run twice: each run cuts its own copy in its own temp folder (/tmp is emptied at boot)
  const r = await api.agentExec(node, vmid, ['/bin/sh', '-c', script, 'sh', guestPath, String(CHUNK)], {timeoutMs: 3600_000, idempotent: true})
  const lines = r.stdout.trim().split('\n').filter(Boolean)
  if (r.exitcode !== 0 || lines.length === 0) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `could not prepare ${guestPath} for copy in VM ${vmid} (exit ${r.exitcode}): ${r.stderr.trim().slice(-300)}`, {
      where: {uai: t.uai, hypervisor: api.hypervisor, node, vmid},
    })
  }
  const dir = lines[0]!
  const chunks = lines.slice(1).filter((l) => /^c\.\d+$/.test(l)).sort()
  await mkdir(dirname(localPath), {recursive: true, mode: 0o700})
  const tmp = `${localPath}.partial`
  const fh = await open(tmp, 'w', 0o600)
  const hash = createHash('sha256')
  let bytes = 0
  try {
    for (const [i, c] of chunks.entries()) {
      opts.onProgress?.(`copying ${guestPath}: chunk ${i + 1}/${chunks.length}`)
      const text = await api.agentFileRead(node, vmid, `${dir}/${c}`)
      if (text.length % 4 !== 0 && i < chunks.length - 1) throw new Error(`chunk ${c} has ${text.length} characters, not a multiple of 4`)
      const buf = Buffer.from(text, 'base64')
      hash.update(buf)
      bytes += buf.length
      await fh.write(buf)
    }
  } finally {
    await fh.close()
    await api.agentExec(node, vmid, ['/bin/rm', '-rf', '--', dir], {timeoutMs: 60_000, idempotent: true}).catch(() => undefined)
  }
  const sha256 = hash.digest('hex')
  if (opts.expectSha256 && sha256 !== opts.expectSha256.toLowerCase()) {
    await rm(tmp, {force: true})
    throw new UserError(ErrorCode.BACKUP_FAILED, `copy of ${guestPath} from VM ${vmid} has sha256 ${sha256}, the manifest says ${opts.expectSha256}`, {
      where: {uai: t.uai, hypervisor: api.hypervisor, node, vmid},
      suggestions: ['Nothing was deleted. Retry; if it fails again, copy the backup by hand (scp) before destroying.'],
    })
  }
  await rename(tmp, localPath)
  return {bytes, sha256}
}
