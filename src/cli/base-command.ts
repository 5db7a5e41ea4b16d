import {Command, Flags, type Interfaces} from '@oclif/core'
import Table from 'cli-table3'

import {PgiError} from '../errors.js'
import type {ReportSuite, ReportTarget} from '../report/types.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {isInteractive, parseLogLevel, StderrIo, type Io, type LogLevel} from '../io.js'
import {joinReportArgs} from './flags.js'
import {confirm, confirmTyped, terminalAsker, type Asker} from './prompt.js'
import {renderError, toPgiError} from './usage.js'

export {inventoryFlag, secretsDirFlag} from './flags.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>
export type BaseArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>

/** The JSON envelope of every command (`--json`). */
export type Envelope<R> = {status: number; result: R; warnings: string[]} | {status: number; error: Record<string, unknown>}

/**
 * Base of every pgi command: common flags, the `--json` envelope, typed errors mapped to exit
 * codes, confirmations that never prompt without a TTY, and table output for people.
 * Commands stay thin: parse flags, call one service in src/, return a plain typed object.
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true

  static override baseFlags = {
    'log-level': Flags.string({
      summary: 'Diagnostics on stderr: debug, info, warn, error or silent.',
      env: 'PGI_LOG_LEVEL',
      options: ['debug', 'info', 'warn', 'error', 'silent'],
      default: 'info',
      helpGroup: 'GLOBAL',
    }),
    yes: Flags.boolean({
      char: 'y',
      summary: 'Answer yes to confirmations (required for them in non-interactive use).',
      env: 'PGI_YES',
      default: false,
      helpGroup: 'GLOBAL',
    }),
  }

  protected flags!: BaseFlags<T>
  protected args!: BaseArgs<T>
  /** Every positional argument as typed, in order (the commands that take UAIs are not strict). */
  protected positionals: string[] = []
  protected io!: Io
  protected asker!: Asker
  /** Exit status for a run that returns a result but is not a full success (partial, unhealthy). */
  protected status: ExitCodeValue = ExitCode.OK

  /** When the command started (the reports' timestamp). */
  protected readonly startedAt = new Date()
  /** Set once a report was written for this run (an error afterwards does not overwrite it). */
  #reported = false

  public override async init(): Promise<void> {
    await super.init()
    if ('report' in (this.ctor.flags ?? {})) this.argv = joinReportArgs(this.argv)
    const {args, flags, raw} = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (super.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    }).catch((err: unknown) => {
      // the arguments were parsed and refused (a typed flag parser threw): oclif's development
      // warning "did not parse its arguments" would be wrong
      this.parsed = true
      throw err
    })
    this.flags = flags as BaseFlags<T>
    this.args = args as BaseArgs<T>
    this.positionals = raw.filter((t) => t.type === 'arg').map((t) => t.input)
    const json = this.jsonEnabled()
    const level: LogLevel = parseLogLevel(this.flags['log-level'] as string | undefined)
    const interactive = isInteractive() && !json
    this.io = new StderrIo(level, interactive)
    this.asker = terminalAsker(interactive)
  }

  /** Ask for a yes/no confirmation (or `--yes`). */
  #interrupt?: AbortController

  /**
   * An AbortSignal that fires on the first Ctrl-C / SIGTERM, for long work that must clean up
   * (unmount, remove temporary files) before it exits 130; a second signal exits at once.
   */
  protected interruptSignal(): AbortSignal {
    if (!this.#interrupt) {
      const ac = new AbortController()
      this.#interrupt = ac
      const onSignal = (sig: NodeJS.Signals) => {
        if (ac.signal.aborted) process.exit(ExitCode.INTERRUPTED)
        this.io.warn(`${sig}: stopping and cleaning up (press Ctrl-C again to exit at once)`)
        ac.abort(new Error(sig))
      }
      process.on('SIGINT', onSignal)
      process.on('SIGTERM', onSignal)
    }
    return this.#interrupt.signal
  }

  protected confirm(question: string): Promise<void> {
    return confirm(this.asker, question, {yes: Boolean(this.flags.yes)})
  }

  /** Ask the user to type `expected` (or `--yes`). */
  protected confirmTyped(question: string, expected: string): Promise<void> {
    return confirmTyped(this.asker, question, expected, {yes: Boolean(this.flags.yes)})
  }

  /** Print rows as a table for people (not in --json mode). */
  protected table(head: string[], rows: (string | number | boolean | null | undefined)[][]): void {
    if (this.jsonEnabled()) return
    const t = new Table({head, style: {head: process.stdout.isTTY ? ['cyan'] : [], border: []}, chars: {mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': ''}})
    for (const r of rows) t.push(r.map((c) => (c === null || c === undefined ? '' : String(c))))
    this.log(t.toString())
  }

  /**
   * JSON for scripts and pipes is printed as is (through console.log, as oclif does): oclif
   * colorizes it token by token with regular expressions (about 0.1 s for a 500-establishment
   * status, 600 KB), and colors only help a terminal, which still gets oclif's.
   */
  protected override logJson(json: unknown): void {
    if (process.stdout.isTTY) {
      super.logJson(json)
      return
    }
    console.log(JSON.stringify(json, null, 2))
  }

  protected override toSuccessJson(result: unknown): Envelope<unknown> {
    return {status: this.status, result, warnings: this.io?.warnings ?? []}
  }

  protected override toErrorJson(err: unknown): Envelope<never> {
    const e = this.toPgi(err)
    return {status: e.exitCode, error: e.toJSON()}
  }

  /** Any error as a PgiError; oclif's parse errors name the flag or argument at fault. */
  private toPgi(err: unknown): PgiError {
    return toPgiError(err, {flags: Object.keys({...this.ctor.flags, ...(this.ctor as typeof BaseCommand).baseFlags, ...(this.ctor.enableJsonFlag ? {json: true} : {})})})
  }

  /** `pgi rollout start 2026.12.0 …` as typed (for the reports' name). */
  protected commandLine(): string {
    return ['pgi', ...this.id!.split(':'), ...this.positionals.slice(0, 1)].join(' ')
  }

  /** The `--report` targets of this command, if it has the flag and it was given. */
  #reportTargets(): ReportTarget[] {
    const t = (this.flags as {report?: ReportTarget[]} | undefined)?.report
    return Array.isArray(t) ? t : []
  }

  /** Writes the run's result as every report asked with `--report` (src/report: the one writer). */
  protected async writeReports(suite: ReportSuite): Promise<void> {
    const targets = this.#reportTargets()
    if (targets.length === 0) return
    const {writeReports} = await import('../report/write.js')
    this.#reported = true
    for (const f of await writeReports(targets, suite)) this.io.info(`report written: ${f}`)
  }

  public override async catch(err: Error & {exitCode?: number}): Promise<void> {
    const e = this.toPgi(err)
    process.exitCode = e.exitCode
    if (!this.#reported && this.#reportTargets().length > 0) {
      // the pipeline shows why the job stopped (a lock held, an unreadable inventory) as an errored case
      const {errorSuite} = await import('../report/suites.js')
      await this.writeReports(errorSuite(this.commandLine(), e, this.startedAt)).catch((werr: unknown) => this.io?.warn(`could not write the report: ${(werr as Error).message}`))
    }
    if (this.jsonEnabled()) {
      this.logJson(this.toErrorJson(e))
      return
    }
    process.stderr.write(renderError(e, e.kind === 'bug' && this.io?.level === 'debug' ? err.stack : undefined))
  }

  protected override async finally(err: Error | undefined): Promise<void> {
    if (!err && this.status !== ExitCode.OK) process.exitCode = this.status
    await super.finally(err)
  }
}
