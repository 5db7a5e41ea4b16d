/**
 * Process exit codes. The README's exit-code table is this table; keep them in step.
 * Scripts and CI depend on these numbers: never renumber, only add.
 */
export const ExitCode = {
  /** Everything asked was done (or was already so). */
  OK: 0,
  /** The operation failed (a bug, or a failure with no more specific code). */
  FAILURE: 1,
  /** Bad command line: unknown flag, missing argument, a flag required in non-interactive use. */
  USAGE: 2,
  /** The inventory or another input file is invalid; nothing was done. */
  INVALID_INPUT: 3,
  /** A fleet operation finished, but some establishments failed (see the per-establishment result). */
  PARTIAL: 4,
  /** At least one establishment or component is unhealthy (pgi status, health gates). */
  UNHEALTHY: 5,
  /** A wait ran out of time (a Proxmox task, a guest agent, a health check). */
  TIMEOUT: 6,
  /** pgi refused to do something unsafe (data loss, missing confirmation, a lock held by another run). */
  REFUSED: 7,
  /** A hypervisor could not be reached, or its TLS certificate did not match the pinned one. */
  UNREACHABLE: 8,
  /** Interrupted (Ctrl-C / SIGINT, or SIGTERM: a cancelled CI job). */
  INTERRUPTED: 130,
} as const

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode]

/** One line per code, for the README and `pgi --help`. */
export const EXIT_CODE_MEANINGS: Record<ExitCodeValue, string> = {
  0: 'success',
  1: 'failure (bug, or failure without a more specific code)',
  2: 'usage error (bad flags or arguments, flag required in non-interactive use)',
  3: 'invalid input (inventory, recipe or other file); nothing was done',
  4: 'fleet operation partially failed: some establishments failed, the others succeeded',
  5: 'unhealthy: at least one establishment or check is not healthy',
  6: 'timed out waiting (Proxmox task, guest agent, health check)',
  7: 'refused for safety (data at risk, no confirmation, lock held)',
  8: 'hypervisor unreachable or TLS certificate mismatch',
  130: 'interrupted (Ctrl-C or SIGTERM)',
}
