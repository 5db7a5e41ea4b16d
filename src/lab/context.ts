import {randomBytes} from 'node:crypto'

import {run} from '../exec.js'
import type {AccessControl, Principal} from './access.js'
import type {StorageDef, VmBackend} from './backend.js'
import type {Faults} from './faults.js'
import type {RawParams} from './validate.js'
import type {VmRecord} from './vmconfig.js'

/**
 * What the lab's API layer and its route modules (src/lab/routes/) share: the request context a
 * handler gets, the lab's node state, PVE's error and message texts. Its own module so that the
 * routes and the API classes (api-core.ts, api.ts) import it without importing each other.
 */

/** An error answered with an HTTP status and PVE's message (as reason phrase and `message`). */
export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

export interface PoolRecord {
  comment?: string
  /** Member ids: "qemu/100", "storage/local". */
  members: Set<string>
}

export interface NodeState {
  name: string
  vms: Map<number, VmRecord>
  pools: Map<string, PoolRecord>
  /** Unix start time of the node (for /nodes uptime). */
  started: number
}

export interface LabApiOptions {
  nodes: string[]
  storages: StorageDef[]
  backend: VmBackend
  access: AccessControl
  faults?: Faults
  pveVersion: string
  /** Config-lock wait before "can't lock file … got timeout" (PVE: 10 s). */
  lockTimeoutMs?: number
  /** Called after every state change (debounced persistence). */
  onChange?: () => void
  log?: (line: string) => void
  /** Host-side directory for temp upload/download files (inside the lab dir). */
  tmpDir: string
}

export interface Ctx {
  node: NodeState
  params: RawParams
  principal: Principal
  /** Uploaded file (multipart) for storage upload. */
  upload?: {path: string; size: number}
}

export type Handler = (c: Ctx) => Promise<unknown>

/** What `PVE::Tools::assert_if_modified` says (resize, move_disk, …). */
export const DIGEST_MISMATCH = 'detected modified configuration - file changed by other user? Try again.'
/** What a config update says when `digest` does not match (qemu-server's update_vm_api). */
export const CONFIG_DIGEST_MISMATCH = 'checksum mismatch (file change by other user?)'
export const MASK = '**********'

export function randomMac(): string {
  const b = randomBytes(6)
  b[0] = 0xbc
  b[1] = 0x24
  b[2] = 0x11
  return [...b].map((x) => x.toString(16).toUpperCase().padStart(2, '0')).join(':')
}

/** Whether a VM config turns the guest agent on (`agent: 1` or `agent: enabled=1,…`). */
export function agentEnabled(cfg: Record<string, string>): boolean {
  return /^(1|enabled=1)(,|$)/.test(cfg.agent ?? '')
}

/**
 * cipassword as PVE stores it after an update: a SHA-512 crypt hash. Node has no crypt(3), so
 * `openssl passwd -6` computes it; the password goes on stdin, never on the command line.
 */
export async function hashPassword(pw: string): Promise<string> {
  if (/^\$(?:[156]|2[ay])(\$.+){2}/.test(pw)) return pw // already hashed (PVE keeps hashes as given)
  const r = await run('openssl', ['passwd', '-6', '-stdin'], {input: pw + '\n'})
  return r.stdout.trim()
}
