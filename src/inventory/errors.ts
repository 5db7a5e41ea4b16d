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
  /** `listed`: the problems were already printed (pgi inventory validate), so the suggestions do not repeat them. */
  constructor(path: string, problems: InventoryProblem[], opts: {listed?: boolean} = {}) {
    const errors = problems.filter((p) => p.severity === 'error')
    const first = errors[0]
    const shown = opts.listed ? [] : errors.slice(0, 5).map((p) => formatProblem(p))
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
          ...(!opts.listed && errors.length > shown.length ? [`… and ${errors.length - shown.length} more`] : []),
          opts.listed
            ? 'Fix the problems listed above (each line: file:line:column, rule, message, suggestion) and run again.'
            : `Run \`pgi inventory validate -i ${path}\` to list every problem with its suggestion.`,
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
