/**
 * Proxmox task identifiers (UPIDs).
 *
 * Format (PVE::Tools::upid_encode): `UPID:<node>:<pid 8 hex>:<pstart 8 hex>:<starttime 8 hex>:<type>:<id>:<user>:`
 * e.g. `UPID:pve1:0000ABCD:0001E240:6761A3F0:qmcreate:100:root@pam:`. The id may be empty
 * (e.g. for `download` tasks it is the storage name) and the user may be an API token
 * (`pgi@pve!deploy`).
 */

export interface Upid {
  /** The UPID string exactly as PVE returned it. */
  upid: string
  node: string
  pid: number
  pstart: number
  /** Unix time (seconds) the task started. */
  starttime: number
  /** Task type: qmcreate, qmclone, qmstart, imgcopy, download, … */
  type: string
  /** Task object id (often the vmid), may be empty. */
  id: string
  user: string
}

// PVE's own regexp (PVE::Tools::upid_decode), with the trailing colon optional for robustness.
const UPID_RE = /^UPID:([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s]+):([^:\s]*):([^:\s]+):?$/

/** Parses a UPID; returns undefined when the text is not one. */
export function tryParseUpid(text: unknown): Upid | undefined {
  if (typeof text !== 'string') return undefined
  const m = UPID_RE.exec(text.trim())
  if (!m) return undefined
  return {
    upid: text.trim(),
    node: m[1],
    pid: Number.parseInt(m[3], 16),
    pstart: Number.parseInt(m[4], 16),
    starttime: Number.parseInt(m[5], 16),
    type: m[6],
    id: m[7],
    user: m[8],
  }
}

/** Parses a UPID or throws a plain Error (callers wrap it with context). */
export function parseUpid(text: unknown): Upid {
  const u = tryParseUpid(text)
  if (!u) throw new Error(`not a Proxmox task id (UPID): ${JSON.stringify(text)}`)
  return u
}

export function isUpid(text: unknown): text is string {
  return tryParseUpid(text) !== undefined
}

const hex8 = (n: number) => (n >>> 0).toString(16).toUpperCase().padStart(8, '0')

/** The UPID of a task, as PVE writes it (upper-case hex, trailing colon): what the lab hands out. */
export function formatUpid(u: Omit<Upid, 'upid'>): string {
  return `UPID:${u.node}:${hex8(u.pid)}:${hex8(u.pstart)}:${hex8(u.starttime)}:${u.type}:${u.id}:${u.user}:`
}
