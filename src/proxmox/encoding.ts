/**
 * How the Proxmox VE client (src/proxmox/client.ts) writes parameters and reads texts: PVE's
 * urlencoded values, path segments, form bodies, mojibake reason phrases, ASCII-only JSON.
 */

/** API parameters, before encoding. */
export type Params = Record<string, unknown>

/** PVE's `urlencoded` format: what sshkeys must look like (PVE::JSONSchema, pve-urlencoded). */
export const URLENCODED_RE = /^[-%a-zA-Z0-9_.!~*'()]*$/
/** Config keys PVE declares with `format: urlencoded`: sent percent-encoded, spaces as %20. */
export const URLENCODED_KEYS = new Set(['sshkeys'])

/**
 * Turns PveParams into request params: booleans 1/0, undefined dropped, sshkeys percent-encoded.
 * Form encoding of the whole body (`;`, `=`, `&`, `+` → %3B %3D %26 %2B) is formEncode's
 * URLSearchParams.
 */
export function encodeParams(params: Params): Params {
  const out: Params = {}
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue
    if (typeof v === 'boolean') out[k] = v ? 1 : 0
    else if (URLENCODED_KEYS.has(k) && typeof v === 'string') out[k] = URLENCODED_RE.test(v) && !/\s/.test(v) ? v : encodeURIComponent(v)
    else out[k] = v
  }
  return out
}

export function seg(s: string | number): string {
  return encodeURIComponent(String(s))
}

/**
 * Text whose UTF-8 bytes were read as latin1 characters, back to what was meant: HTTP reason
 * phrases (PVE's are UTF-8), and guest-agent output, which PVE base64-decodes to bytes and then
 * serialises as if each byte were a character. Text that is not such mojibake is returned as is.
 */
export function decodeReason(text: string): string {
  if (!/[\x80-\xff]/.test(text) || /[^\x00-\xff]/.test(text)) return text
  const utf8 = Buffer.from(text, 'latin1').toString('utf8')
  return utf8.includes('\ufffd') ? text : utf8
}

/**
 * JSON for a guest command's stdin (`agentExec` inputData): PVE base64-encodes input-data as
 * bytes and fails on characters beyond latin1, so every non-ASCII character is escaped (\uXXXX),
 * which any JSON reader turns back into the same text.
 */
export function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/**
 * Parameters as PVE reads them (application/x-www-form-urlencoded, for a query string or a form
 * body): booleans as 1/0 (encodeParams did it), a list as the same key repeated.
 */
export function formEncode(params: Params): string {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue
    if (Array.isArray(v)) for (const e of v) q.append(k, String(e))
    else q.set(k, String(v))
  }
  return q.toString()
}

export function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}
