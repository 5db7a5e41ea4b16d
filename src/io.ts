import {inspect} from 'node:util'

/**
 * All human-facing diagnostics go through one `Io` (levels, one sink), never console.* directly,
 * so the engine stays usable as a library and `--json` output stays clean on stdout.
 * Results are not printed here: commands return them and oclif prints them.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'

const ORDER: Record<LogLevel, number> = {debug: 10, info: 20, warn: 30, error: 40, silent: 100}

export interface Io {
  readonly level: LogLevel
  /** True when a person is at a terminal (and not CI): progress may redraw, questions may be asked. */
  readonly interactive: boolean
  debug(message: string, fields?: Record<string, unknown>): void
  info(message: string, fields?: Record<string, unknown>): void
  warn(message: string, fields?: Record<string, unknown>): void
  error(message: string, fields?: Record<string, unknown>): void
  /** Warnings collected for the `--json` envelope. */
  readonly warnings: string[]
}

export function parseLogLevel(v: string | undefined, fallback: LogLevel = 'info'): LogLevel {
  if (v === undefined || v === '') return fallback
  const l = v.toLowerCase()
  if (l in ORDER) return l as LogLevel
  throw new Error(`unknown log level "${v}" (expected debug, info, warn, error or silent)`)
}

/** True on a terminal outside CI: `CI=true` or no TTY means plain lines and no prompts. */
export function isInteractive(env: NodeJS.ProcessEnv = process.env, stream: {isTTY?: boolean} = process.stderr): boolean {
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== '0' && env.CI.toLowerCase() !== 'false'
  return !ci && Boolean(stream.isTTY) && Boolean(process.stdin.isTTY)
}

function fmtFields(fields?: Record<string, unknown>): string {
  if (!fields) return ''
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : inspect(v, {breakLength: Infinity, depth: 3})}`)
  return parts.length > 0 ? ` (${parts.join(' ')})` : ''
}

/** An Io writing to stderr (stdout is reserved for results). */
export class StderrIo implements Io {
  readonly warnings: string[] = []
  constructor(
    readonly level: LogLevel = 'info',
    readonly interactive: boolean = isInteractive(),
    private readonly write: (line: string) => void = (line) => process.stderr.write(line + '\n'),
  ) {}

  private emit(l: LogLevel, prefix: string, message: string, fields?: Record<string, unknown>): void {
    if (ORDER[l] < ORDER[this.level]) return
    this.write(`${prefix}${message}${fmtFields(fields)}`)
  }

  debug(m: string, f?: Record<string, unknown>): void {
    this.emit('debug', 'debug: ', m, f)
  }

  info(m: string, f?: Record<string, unknown>): void {
    this.emit('info', '', m, f)
  }

  warn(m: string, f?: Record<string, unknown>): void {
    this.warnings.push(m + fmtFields(f))
    this.emit('warn', 'warning: ', m, f)
  }

  error(m: string, f?: Record<string, unknown>): void {
    this.emit('error', 'error: ', m, f)
  }
}

/** An Io that records everything (for tests and for library users who want the lines). */
export class MemoryIo implements Io {
  readonly warnings: string[] = []
  readonly lines: {level: LogLevel; message: string; fields?: Record<string, unknown>}[] = []
  constructor(
    readonly level: LogLevel = 'debug',
    readonly interactive = false,
  ) {}

  private push(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    if (ORDER[level] >= ORDER[this.level]) this.lines.push({level, message, fields})
  }

  debug(m: string, f?: Record<string, unknown>): void {
    this.push('debug', m, f)
  }

  info(m: string, f?: Record<string, unknown>): void {
    this.push('info', m, f)
  }

  warn(m: string, f?: Record<string, unknown>): void {
    this.warnings.push(m + fmtFields(f))
    this.push('warn', m, f)
  }

  error(m: string, f?: Record<string, unknown>): void {
    this.push('error', m, f)
  }

  text(): string {
    return this.lines.map((l) => `${l.level}: ${l.message}${fmtFields(l.fields)}`).join('\n')
  }
}
