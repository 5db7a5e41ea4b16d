import {ErrorCode, PgiError, type ErrorCodeValue, type ErrorLocation, UserError} from '../errors.js'

/**
 * Typed errors of the Proxmox API. PVE reports failures as:
 *  - 400 "Parameter verification failed." with `{"data":null,"errors":{"<param>":"<reason>"}}`
 *  - 401 "authentication failure" / "invalid token value!" / "No ticket"
 *  - 403 "Permission check failed (/vms/100, VM.Allocate)"
 *  - 500 with the message as HTTP reason phrase, e.g. "VM is locked (clone)",
 *    "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
 *    "unable to create VM 100 - VM 100 already exists on node 'pve1'",
 *    "… checksum mismatch …" (digest compare-and-swap lost)
 */

/** Where a PVE error happened: hypervisor (inventory name), node, vmid. */
export type PveWhere = Pick<ErrorLocation, 'hypervisor' | 'node' | 'vmid' | 'uai'>

export interface PveApiErrorInit {
  status: number
  /** PVE's message (the HTTP reason phrase), e.g. "Parameter verification failed." */
  pveMessage: string
  method: string
  /** API path without the /api2/json prefix, e.g. /nodes/pve1/qemu/100/config */
  path: string
  /** Per-parameter errors of a 400 response. */
  parameterErrors?: Record<string, string>
  where: PveWhere
  cause?: unknown
  /** How many times the request was sent (retries of server faults); said in the message when > 1. */
  attempts?: number
}

export const LOCKED_RE = /VM is locked \(([^)]*)\)|can't lock file '([^']+)' - got timeout/
export const DIGEST_RE = /checksum mismatch|detected modified configuration - file changed by other user\?/i
const PERMISSION_RE = /Permission check failed \(([^,)]+)(?:,\s*([^)]+))?\)/

/**
 * PVE's own reasons for refusing a request: a 5xx whose message says one of these is PVE's answer
 * about the request itself (no such VM, already exists, agent not running, bad value…), and sending
 * it again would change nothing. Any other 5xx (pveproxy or pvedaemon trouble, "internal server
 * error", a cluster file system hiccup, a proxy error between nodes: 502/503/504/595/596/599) is a
 * server fault worth retrying where retrying is safe.
 */
const PVE_REASON_RE =
  /does not exist|already exists|not running|is running|no such|not found|unable to|invalid|not allowed|not supported|not implemented|permission|only root|guest agent|agent error|QEMU guest|No QMP|qmp command|hostname lookup|checksum mismatch|file changed by other user|VM is locked|can't lock file|is a template|parameter|missing|wrong|forbidden|already|not enough|no space|quota/i
const SERVER_FAULT_STATUSES = new Set([500, 502, 503, 504, 595, 596, 597, 599])

/** A server-side fault that says nothing about the request (see PVE_REASON_RE): worth retrying where safe. */
export function isServerFault(status: number, pveMessage: string): boolean {
  if (!SERVER_FAULT_STATUSES.has(status)) return false
  return status !== 500 || !PVE_REASON_RE.test(pveMessage)
}

function codeFor(status: number, msg: string): ErrorCodeValue {
  if (status === 400) return ErrorCode.PVE_PARAMETERS
  if (status === 401) return ErrorCode.PVE_AUTH
  if (status === 403) return ErrorCode.PVE_PERMISSION
  if (DIGEST_RE.test(msg)) return ErrorCode.PVE_DIGEST_MISMATCH
  if (LOCKED_RE.test(msg)) return ErrorCode.PVE_LOCKED
  if (isServerFault(status, msg)) return ErrorCode.PVE_SERVER_ERROR
  return ErrorCode.PVE_HTTP
}

function suggestionsFor(code: ErrorCodeValue, init: PveApiErrorInit, perm?: {path: string; privilege?: string}): string[] {
  switch (code) {
    case ErrorCode.PVE_AUTH:
      return [
        'Check the API token id in the inventory (USER@REALM!TOKENID) and its secret (environment variable or secret store).',
        'Check that the token exists and has not expired: pveum user token list <user> on the hypervisor.',
      ]
    case ErrorCode.PVE_PERMISSION:
      return [
        perm?.privilege
          ? `Grant ${perm.privilege} on ${perm.path} to the pgi token (role PGI, see docs/proxmox-role.md); with privilege separation the token needs its own ACL.`
          : 'Grant the pgi role to the token (see docs/proxmox-role.md).',
      ]
    case ErrorCode.PVE_PARAMETERS:
      return ['PVE rejected these parameters: check the inventory values they come from, and the PVE version of the hypervisor.']
    case ErrorCode.PVE_DIGEST_MISMATCH:
      return ['The VM configuration was changed by someone else meanwhile: re-read it and run the command again.']
    case ErrorCode.PVE_LOCKED:
      return ['Another operation holds the VM lock: wait for it to finish (Tasks panel of the hypervisor), or clear a stale lock with `qm unlock <vmid>` after checking.']
    case ErrorCode.PVE_SERVER_ERROR:
      return ['The hypervisor\'s API is failing on its side (see its syslog: pveproxy, pvedaemon, pve-cluster): run the command again later; what was done is kept.']
    default:
      return []
  }
}

/** An error answer of the PVE API (HTTP status ≠ 200). */
export class PveApiError extends UserError {
  readonly status: number
  readonly pveMessage: string
  readonly method: string
  readonly path: string
  readonly parameterErrors: Record<string, string>
  /** For 403: the ACL path and privilege PVE named. */
  readonly permission?: {path: string; privilege?: string}

  constructor(init: PveApiErrorInit) {
    const code = codeFor(init.status, init.pveMessage)
    const pm = init.status === 403 ? PERMISSION_RE.exec(init.pveMessage) : null
    const permission = pm ? {path: pm[1].trim(), privilege: pm[2]?.trim()} : undefined
    const params = init.parameterErrors ?? {}
    const paramText = Object.entries(params)
      .map(([k, v]) => `${k}: ${v.trim()}`)
      .join('; ')
    const msg =
      `${init.method} ${init.path} failed: ${init.status} ${init.pveMessage}` + (paramText ? ` (${paramText})` : '') + ((init.attempts ?? 1) > 1 ? ` (${init.attempts} attempts)` : '')
    super(code, msg, {
      where: init.where,
      cause: init.cause,
      suggestions: suggestionsFor(code, init, permission),
      details: {
        status: init.status,
        pveMessage: init.pveMessage,
        method: init.method,
        path: init.path,
        ...(Object.keys(params).length > 0 ? {parameterErrors: params} : {}),
        ...(permission ? {permission} : {}),
        ...((init.attempts ?? 1) > 1 ? {attempts: init.attempts} : {}),
      },
    })
    this.init = init
    this.status = init.status
    this.pveMessage = init.pveMessage
    this.method = init.method
    this.path = init.path
    this.parameterErrors = params
    this.permission = permission
  }

  private readonly init: PveApiErrorInit

  get isLocked(): boolean {
    return this.code === ErrorCode.PVE_LOCKED
  }

  /** A server fault (see isServerFault): the request may be sent again where that is safe. */
  get isServerFault(): boolean {
    return this.code === ErrorCode.PVE_SERVER_ERROR
  }

  /** The same error, saying how many times the request was sent. */
  withAttempts(attempts: number): PveApiError {
    return new PveApiError({...this.init, attempts})
  }
}

/** A PVE task that ended with an exit status other than OK / WARNINGS: N. */
export class PveTaskError extends UserError {
  readonly upid: string
  readonly exitstatus: string
  readonly logTail: string[]
  readonly taskType: string

  constructor(init: {upid: string; taskType: string; exitstatus: string; logTail: string[]; where: PveWhere}) {
    const tail = init.logTail.length > 0 ? `\n  task log (last ${init.logTail.length} lines):\n    ${init.logTail.join('\n    ')}` : ''
    super(ErrorCode.PVE_TASK_FAILED, `task ${init.taskType} failed: ${init.exitstatus}${tail}`, {
      where: init.where,
      details: {upid: init.upid, taskType: init.taskType, exitstatus: init.exitstatus, logTail: init.logTail},
      suggestions: [
        LOCKED_RE.test(init.exitstatus)
          ? 'The VM was locked by another operation: wait for it to finish and run the command again.'
          : `See the whole task log on the hypervisor: pvenode task log ${init.upid}`,
      ],
    })
    this.upid = init.upid
    this.exitstatus = init.exitstatus
    this.logTail = init.logTail
    this.taskType = init.taskType
  }

  get isLocked(): boolean {
    return LOCKED_RE.test(this.exitstatus)
  }
}

/** True for PVE's "VM is locked (…)" and "can't lock file … got timeout", from the API or a task. */
export function isLockError(err: unknown): boolean {
  return (err instanceof PveApiError && err.isLocked) || (err instanceof PveTaskError && err.isLocked)
}

/**
 * A request not sent because its hypervisor was already found out of reach in this run (the
 * client's breaker, src/proxmox/transport.ts): the same code, exit code, message and advice as the
 * failure that found it, located where this request was going.
 */
export class HypervisorDownError extends PgiError {
  readonly kind = 'user' as const
  constructor(readonly first: PgiError, where: PveWhere) {
    super(first.code, first.message, first.exitCode, {where, suggestions: first.suggestions, details: {...first.details, notSent: true}, cause: first})
  }
}
