import {ErrorCode, PgiError} from '../errors.js'
import type {ProbeError} from './types.js'

/** PVE's 403 text: `Permission check failed (/vms/100, VM.Allocate)` (also "(/vms/100, VM.A|VM.B)"). */
const PERMISSION_RE = /Permission check failed \(([^,()]+),\s*([^()]+)\)/

/** A call that ran out of time in pgi itself (the status service's per-request deadline). */
export class CallTimeout extends Error {
  constructor(
    readonly call: string,
    readonly timeoutMs: number,
    /** True when no answer means the hypervisor is out of reach (an API request), false for a slow guest command. */
    readonly hypervisorLevel = true,
  ) {
    super(`no answer to ${call} within ${formatSeconds(timeoutMs)}`)
    this.name = 'CallTimeout'
  }
}

/** A call that was not made because its hypervisor already stopped answering in this run. */
export class HypervisorDown extends Error {
  constructor(readonly first: ProbeError) {
    super(first.message)
    this.name = 'HypervisorDown'
  }
}

export function formatSeconds(ms: number): string {
  const s = ms / 1000
  return `${Number.isInteger(s) ? s : s.toFixed(1)} s`
}

/**
 * Turns whatever a PveApi call threw into a ProbeError: a stable code, the call, a message, and for
 * a refused call the privilege and path PVE named (read from the typed error's details, or from the
 * 403 text itself so it works with any client).
 */
export function toProbeError(call: string, err: unknown): ProbeError {
  if (err instanceof HypervisorDown) return {...err.first, call}
  if (err instanceof CallTimeout) {
    return {code: err.hypervisorLevel ? ErrorCode.UNREACHABLE : ErrorCode.TIMEOUT, call, message: err.message, timeoutMs: err.timeoutMs}
  }
  const message = err instanceof Error ? err.message : String(err)
  const code = err instanceof PgiError ? err.code : codeFromMessage(message)
  const out: ProbeError = {code, call, message}
  if (code === ErrorCode.PVE_PERMISSION || PERMISSION_RE.test(message)) {
    out.code = ErrorCode.PVE_PERMISSION
    // src/proxmox/errors.ts puts {path, privilege} in details.permission; fall back to the text
    const details = err instanceof PgiError ? err.details : undefined
    const perm = details?.permission as {path?: unknown; privilege?: unknown} | undefined
    const m = PERMISSION_RE.exec(message)
    const privilege = (typeof perm?.privilege === 'string' ? perm.privilege : undefined) ?? m?.[2]?.trim()
    const path = (typeof perm?.path === 'string' ? perm.path : undefined) ?? m?.[1]?.trim()
    if (privilege) out.privilege = privilege
    if (path) out.path = path
  }
  if (err instanceof PgiError && typeof err.details?.timeoutMs === 'number') out.timeoutMs = err.details.timeoutMs
  return out
}

/** Errors from code that is not pgi's (a raw fetch error, a plain Error) get the closest code. */
function codeFromMessage(message: string): string {
  if (/ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|socket hang up|fetch failed/i.test(message)) return ErrorCode.UNREACHABLE
  if (/\b401\b|authentication failure|no ticket/i.test(message)) return ErrorCode.PVE_AUTH
  if (/\b403\b/.test(message)) return ErrorCode.PVE_PERMISSION
  return ErrorCode.PVE_HTTP
}

/** PVE's and qemu-ga's texts for a guest agent that does not answer (not running, not configured, timed out). */
const AGENT_DOWN_RE = /guest agent is not running|No QEMU guest agent configured|qmp command '[^']*' failed|got timeout|agent.*not (enabled|configured|running)|VM \d+ is not running/i

/** The call failed because the VM's guest agent does not answer (rather than being refused or failing in the guest). */
export function isAgentDown(e: ProbeError): boolean {
  return AGENT_DOWN_RE.test(e.message)
}

/** The error means the whole hypervisor is out of reach for this run (not just one VM's call). */
export function isHypervisorLevel(e: ProbeError): boolean {
  return e.code === ErrorCode.UNREACHABLE || e.code === ErrorCode.TLS_MISMATCH || e.code === ErrorCode.PVE_AUTH
}

/** A short cause for "hypervisor not reachable (…)", in plain words. */
export function unreachableCause(e: ProbeError): string {
  if (e.timeoutMs !== undefined) return `timeout after ${formatSeconds(e.timeoutMs)}`
  const m = e.message
  if (/ECONNREFUSED|connection refused/i.test(m)) return 'connection refused'
  if (/ENOTFOUND|EAI_AGAIN|getaddrinfo/i.test(m)) return 'host name not found'
  if (/EHOSTUNREACH|ENETUNREACH|no route/i.test(m)) return 'no route to host'
  if (/ECONNRESET|socket hang up/i.test(m)) return 'connection reset'
  if (/timed? ?out|ETIMEDOUT/i.test(m)) return 'timed out'
  return m.length > 80 ? `${m.slice(0, 77)}…` : m
}
