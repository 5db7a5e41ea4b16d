import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {InventoryProblem} from './types.js'

/** `file:line:col  rule  message  (suggestion)` — one problem per line, as `pgi inventory validate` prints it. */
export function formatProblem(p: InventoryProblem): string {
  const sev = p.severity === 'warning' ? 'warning: ' : ''
  return `${p.file}:${p.line}:${p.column}  ${p.rule}  ${sev}${p.message}${p.suggestion ? `  (${p.suggestion})` : ''}`
}

/** The inventory path does not exist, or holds no YAML file. */
export class InventoryNotFoundError extends UserError {
  constructor(path: string, reason: string, suggestions: string[] = []) {
    super(ErrorCode.INVENTORY_NOT_FOUND, `inventory ${path}: ${reason}`, {
      exitCode: ExitCode.INVALID_INPUT,
      where: {file: path},
      suggestions: [
        ...suggestions,
        'Pass the inventory folder or file with -i/--inventory, or set PGI_INVENTORY (default: ./inventory).',
      ],
    })
  }
}

/** The inventory has at least one error; `details.problems` lists every problem found. */
export class InventoryInvalidError extends UserError {
  readonly problems: InventoryProblem[]
  constructor(path: string, problems: InventoryProblem[]) {
    const errors = problems.filter((p) => p.severity === 'error')
    const first = errors[0]
    const shown = errors.slice(0, 5).map((p) => formatProblem(p))
    super(
      ErrorCode.INVENTORY_INVALID,
      `inventory ${path} is invalid: ${errors.length} error${errors.length === 1 ? '' : 's'}` +
        (first ? ` (first: ${first.message})` : ''),
      {
        exitCode: ExitCode.INVALID_INPUT,
        where: first ? {file: first.file, line: first.line, column: first.column} : {file: path},
        details: {problems},
        suggestions: [
          ...shown,
          ...(errors.length > shown.length ? [`… and ${errors.length - shown.length} more`] : []),
          `Run \`pgi inventory validate -i ${path}\` to list every problem with its suggestion.`,
        ],
      },
    )
    this.problems = problems
  }
}

/** A UAI that is not in the inventory. */
export class UnknownEstablishmentError extends UserError {
  constructor(uai: string, suggestion: string) {
    super(ErrorCode.UNKNOWN_ESTABLISHMENT, `no establishment with UAI ${uai} in the inventory`, {
      exitCode: ExitCode.USAGE,
      where: {uai},
      suggestions: [suggestion, 'List them with `pgi inventory list`.'],
    })
  }
}

export class UnknownHypervisorError extends UserError {
  constructor(name: string, suggestion: string) {
    super(ErrorCode.UNKNOWN_HYPERVISOR, `no hypervisor named "${name}" in the inventory`, {
      exitCode: ExitCode.USAGE,
      where: {hypervisor: name},
      suggestions: [suggestion],
    })
  }
}

export class UnknownGroupError extends UserError {
  constructor(name: string, suggestion: string) {
    super(ErrorCode.UNKNOWN_GROUP, `no group named "${name}" in the inventory`, {
      exitCode: ExitCode.USAGE,
      suggestions: [suggestion, 'Groups are defined under `groups:` in the inventory.'],
    })
  }
}
