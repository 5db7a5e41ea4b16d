import {ExitCode, type ExitCodeValue} from './exit-codes.js'

/**
 * Stable error codes. A code never changes meaning once released: scripts match on them.
 * Add new codes here (one place), grouped by area.
 */
export const ErrorCode = {
  // generic
  INTERNAL: 'PGI_INTERNAL',
  USAGE: 'PGI_USAGE',
  FLAG_REQUIRED: 'PGI_FLAG_REQUIRED',
  NOT_CONFIRMED: 'PGI_NOT_CONFIRMED',
  INTERRUPTED: 'PGI_INTERRUPTED',
  TIMEOUT: 'PGI_TIMEOUT',
  // inventory
  INVENTORY_NOT_FOUND: 'PGI_INVENTORY_NOT_FOUND',
  INVENTORY_INVALID: 'PGI_INVENTORY_INVALID',
  UNKNOWN_ESTABLISHMENT: 'PGI_UNKNOWN_ESTABLISHMENT',
  UNKNOWN_HYPERVISOR: 'PGI_UNKNOWN_HYPERVISOR',
  UNKNOWN_GROUP: 'PGI_UNKNOWN_GROUP',
  // hypervisor / Proxmox API
  /** PVE refused the request with its own reason (e.g. "VM 100 already exists"): sending it again changes nothing. */
  PVE_HTTP: 'PGI_PVE_HTTP',
  /**
   * The hypervisor's API kept failing with a server error that names no PVE reason (HTTP 5xx such
   * as pveproxy/pvedaemon trouble, "internal server error"), after pgi's retries: try again later.
   */
  PVE_SERVER_ERROR: 'PGI_PVE_SERVER_ERROR',
  /** 400 "Parameter verification failed." (per-parameter reasons in details). */
  PVE_PARAMETERS: 'PGI_PVE_PARAMETERS',
  /** 403: the API token lacks a privilege (named in details). */
  PVE_PERMISSION: 'PGI_PVE_PERMISSION',
  /** 401: the API token was refused (wrong, expired or missing). */
  PVE_AUTH: 'PGI_PVE_AUTH',
  /** A PVE task ended with an error (its exit status and log tail in details). */
  PVE_TASK_FAILED: 'PGI_PVE_TASK_FAILED',
  /**
   * A PVE task was started but pgi could not learn how it ended (its status could not be read after
   * retries): it may have succeeded. Running the command again picks up from what is really there.
   */
  PVE_TASK_UNKNOWN: 'PGI_PVE_TASK_UNKNOWN',
  /** "VM is locked (…)" / "can't lock file … got timeout" still true after the lock wait budget. */
  PVE_LOCKED: 'PGI_PVE_LOCKED',
  /** A config write carrying a digest lost the compare-and-swap: someone changed the VM meanwhile. */
  PVE_DIGEST_MISMATCH: 'PGI_PVE_DIGEST_MISMATCH',
  /** The hypervisor could not be reached or did not answer within the deadline (exit 8). */
  UNREACHABLE: 'PGI_UNREACHABLE',
  /** The hypervisor's certificate does not match the pinned fingerprint (exit 8); nothing was sent. */
  TLS_MISMATCH: 'PGI_TLS_MISMATCH',
  // local tools and environment
  TOOL_MISSING: 'PGI_TOOL_MISSING',
  TOOL_FAILED: 'PGI_TOOL_FAILED',
  NOT_ROOT: 'PGI_NOT_ROOT',
  // secrets
  SECRET_MISSING: 'PGI_SECRET_MISSING',
  SECRET_DECRYPT: 'PGI_SECRET_DECRYPT',
  SECRET_KEY_INVALID: 'PGI_SECRET_KEY_INVALID',
  HANDOFF_INVALID: 'PGI_HANDOFF_INVALID',
  ROTATION_PENDING: 'PGI_ROTATION_PENDING',
  GUEST_CONFIGURE: 'PGI_GUEST_CONFIGURE',
  // images
  IMAGE_NOT_FOUND: 'PGI_IMAGE_NOT_FOUND',
  IMAGE_INVALID: 'PGI_IMAGE_INVALID',
  IMAGE_EXISTS: 'PGI_IMAGE_EXISTS',
  // fleet operations
  PARTIAL_FAILURE: 'PGI_PARTIAL_FAILURE',
  UNHEALTHY: 'PGI_UNHEALTHY',
  REFUSED: 'PGI_REFUSED',
  LOCKED: 'PGI_LOCKED',
  // deploy / destroy
  VMID_TAKEN: 'PGI_VMID_TAKEN',
  GUEST_COMMAND_FAILED: 'PGI_GUEST_COMMAND_FAILED',
  BACKUP_FAILED: 'PGI_BACKUP_FAILED',
  // lab
  LAB_NOT_RUNNING: 'PGI_LAB_NOT_RUNNING',
  LAB_ALREADY_RUNNING: 'PGI_LAB_ALREADY_RUNNING',
  // local QEMU VMs (lab qemu backend, image boot tests)
  QEMU_FAILED: 'PGI_QEMU_FAILED',
  QMP_ERROR: 'PGI_QMP_ERROR',
  GUEST_AGENT: 'PGI_GUEST_AGENT',
  // the in-image database engine (pgi-db) refused or failed: src/fleet/pgidb.ts
  DB_INVALID: 'PGI_DB_INVALID',
  DB_NOT_FOUND: 'PGI_DB_NOT_FOUND',
  DB_EXISTS: 'PGI_DB_EXISTS',
  DB_BUSY: 'PGI_DB_BUSY',
  DB_NO_ROOM: 'PGI_DB_NO_ROOM',
  DB_FAILED: 'PGI_DB_FAILED',
  DB_INTERRUPTED: 'PGI_DB_INTERRUPTED',
  // the teachers' console's command line (pgi-console) refused or failed: src/db/console.ts
  CONSOLE_INVALID: 'PGI_CONSOLE_INVALID',
  TEACHER_NOT_FOUND: 'PGI_TEACHER_NOT_FOUND',
  TEACHER_EXISTS: 'PGI_TEACHER_EXISTS',
  CONSOLE_FAILED: 'PGI_CONSOLE_FAILED',
  // off-site copies of the backups (src/backup): no offsite: section, restic failed (BACKUP_FAILED: a local backup)
  BACKUP_NOT_CONFIGURED: 'PGI_BACKUP_NOT_CONFIGURED',
  OFFSITE_FAILED: 'PGI_OFFSITE_FAILED',
  // pgi backup restore / drill: no such snapshot; a snapshot this server cannot take (another Tryton series, damaged)
  OFFSITE_SNAPSHOT_NOT_FOUND: 'PGI_OFFSITE_SNAPSHOT_NOT_FOUND',
  OFFSITE_RESTORE_REFUSED: 'PGI_OFFSITE_RESTORE_REFUSED',
  /** pgi backup drill: a snapshot did not become a working PGI in its scratch VM (the reason says which check). */
  DRILL_FAILED: 'PGI_DRILL_FAILED',
  /** Delta delivery (docs/delivery.md): the chunk store cannot be read, its delivery.json is not validly signed, a guest's assembly failed. */
  STORE_UNREACHABLE: 'PGI_STORE_UNREACHABLE',
  DELIVERY_INVALID: 'PGI_DELIVERY_INVALID',
  STAGE_FAILED: 'PGI_STAGE_FAILED',
} as const

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode]

/**
 * Where an error happened: a place in a file, an establishment on a hypervisor node, or on the
 * command line (the command, flag or argument at fault; names without dashes or brackets).
 */
export interface ErrorLocation {
  command?: string
  flag?: string
  argument?: string
  file?: string
  /** An environment variable (its name; never its value). */
  variable?: string
  line?: number
  column?: number
  uai?: string
  hypervisor?: string
  node?: string
  vmid?: number
}

export interface PgiErrorOptions {
  /** What to do next, in words a technician can act on. */
  suggestions?: string[]
  where?: ErrorLocation
  /** Extra machine-readable detail (never a secret). */
  details?: Record<string, unknown>
  cause?: unknown
  exitCode?: ExitCodeValue
}

/**
 * Base of every error pgi raises on purpose. It carries a stable `code`, the process exit code,
 * where it happened and what to do next. `kind` says whether the user can fix it ('user') or it
 * is a defect in pgi ('bug').
 */
export abstract class PgiError extends Error {
  abstract readonly kind: 'user' | 'bug'
  readonly code: ErrorCodeValue
  readonly exitCode: ExitCodeValue
  readonly suggestions: string[]
  readonly where?: ErrorLocation
  readonly details?: Record<string, unknown>

  constructor(code: ErrorCodeValue, message: string, defaultExit: ExitCodeValue, opts: PgiErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : {cause: opts.cause})
    this.name = new.target.name
    this.code = code
    this.exitCode = opts.exitCode ?? defaultExit
    this.suggestions = opts.suggestions ?? []
    this.where = opts.where
    this.details = opts.details
  }

  /** "file:line:col", "UAI 0130040Y on hv-nord/pve1" or "--flag", for messages. */
  static formatWhere(w: ErrorLocation | undefined): string {
    if (!w) return ''
    if (w.file) return [w.file, w.line, w.column].filter((x) => x !== undefined).join(':')
    const parts: string[] = []
    if (w.command) parts.push(`command "${w.command}"`)
    if (w.flag) parts.push(`--${w.flag}`)
    if (w.argument) parts.push(`argument ${w.argument}`)
    if (w.variable) parts.push(`$${w.variable}${w.line !== undefined ? ` line ${w.line}` : ''}`)
    if (w.uai) parts.push(`UAI ${w.uai}`)
    // "UAI 0130040Y on hv-nord/pve1", or alone "hypervisor hv-nord/pve1" (never "at on …")
    const on = parts.length > 0 ? 'on ' : ''
    if (w.hypervisor) parts.push(`${on || 'hypervisor '}${w.hypervisor}${w.node ? `/${w.node}` : ''}`)
    else if (w.node) parts.push(`${on}node ${w.node}`)
    if (w.vmid !== undefined) parts.push(`VM ${w.vmid}`)
    return parts.join(' ')
  }

  toJSON(): Record<string, unknown> {
    return {
      code: this.code,
      message: this.message,
      suggestions: this.suggestions,
      ...(this.where ? {where: this.where} : {}),
      ...(this.details ? {details: this.details} : {}),
    }
  }
}

/** Something the user can fix: wrong input, missing tool, unreachable host, refused for safety. */
export class UserError extends PgiError {
  readonly kind = 'user' as const
  constructor(code: ErrorCodeValue, message: string, opts: PgiErrorOptions = {}) {
    super(code, message, ExitCode.FAILURE, opts)
  }
}

/** A defect in pgi. The message asks for a bug report. */
export class BugError extends PgiError {
  readonly kind = 'bug' as const
  constructor(message: string, opts: PgiErrorOptions = {}) {
    super(ErrorCode.INTERNAL, message, ExitCode.FAILURE, {
      suggestions: ['This is a bug in pgi: please report it with the command you ran and `--log-level debug` output.'],
      ...opts,
    })
  }
}

export class UsageError extends UserError {
  constructor(message: string, opts: PgiErrorOptions = {}) {
    super(ErrorCode.USAGE, message, {exitCode: ExitCode.USAGE, ...opts})
  }
}

/** A question would be asked, but there is no terminal to ask on. */
export class FlagRequiredError extends UserError {
  constructor(flag: string, why: string) {
    super(ErrorCode.FLAG_REQUIRED, `flag required in non-interactive use: ${flag} (${why})`, {
      exitCode: ExitCode.USAGE,
      where: {flag: flag.replace(/^-+/, '')},
      suggestions: [`Pass ${flag} to confirm, or run the command on a terminal to be asked.`],
    })
  }
}

export class TimeoutError extends UserError {
  constructor(message: string, opts: PgiErrorOptions = {}) {
    super(ErrorCode.TIMEOUT, message, {exitCode: ExitCode.TIMEOUT, ...opts})
  }
}

/** pgi will not do this: it could lose data, or nobody confirmed it. */
export class SafetyRefusal extends UserError {
  constructor(message: string, opts: PgiErrorOptions = {}) {
    super(ErrorCode.REFUSED, message, {exitCode: ExitCode.REFUSED, ...opts})
  }
}

export class UnreachableError extends UserError {
  constructor(code: typeof ErrorCode.UNREACHABLE | typeof ErrorCode.TLS_MISMATCH, message: string, opts: PgiErrorOptions = {}) {
    super(code, message, {exitCode: ExitCode.UNREACHABLE, ...opts})
  }
}

/** Any thrown value as a PgiError (unknown errors become bugs, keeping their message). */
export function asPgiError(err: unknown): PgiError {
  if (err instanceof PgiError) return err
  if (err instanceof Error) return new BugError(err.message, {cause: err})
  return new BugError(String(err))
}
