/**
 * Command-line mistakes as pgi's usage errors (exit 2): oclif's own parse errors become a
 * UsageError that names the flag, argument or command at fault (`where`, also in the --json
 * envelope) and, for a mistyped name, what was probably meant.
 */
import {Errors} from '@oclif/core'
import {distance} from 'fastest-levenshtein'

import {asPgiError, ErrorCode, PgiError, UsageError, type ErrorLocation} from '../errors.js'
import {ExitCode} from '../exit-codes.js'

const SEE_HELP = "See the command's --help for its flags and examples."

/** The names closest to `typed` (edit distance at most a third of its length, at least 2), best first. */
export function closest(typed: string, names: readonly string[], max = 3): string[] {
  const limit = Math.max(2, Math.floor(typed.length / 3))
  return names
    .map((n) => ({n, d: distance(typed, n)}))
    .filter((x) => x.d <= limit && x.d > 0)
    .sort((a, b) => a.d - b.d || (a.n < b.n ? -1 : 1))
    .slice(0, max)
    .map((x) => x.n)
}

/** The command as typed, in the CLI's own spelling ("rollout strat", not oclif's "rollout:strat"). */
export function spaced(id: string): string {
  return id.replaceAll(':', ' ')
}

/**
 * `pgi statsu` / `pgi rollout strat`: an unknown command, with the closest known ones. `ids` are
 * oclif's command ids ("rollout:start"); `topics` the topic names ("rollout"). oclif joins every
 * word before the first flag into the id when the command takes no argument
 * (`pgi inventory validate extra` → "inventory:validate:extra"): that is a known command given an
 * argument it does not take, and is said so.
 */
export function commandNotFound(id: string, ids: readonly string[], topics: readonly string[] = []): UsageError {
  const words = id.split(':').filter(Boolean)
  const commands = new Set(ids)
  const topicSet = new Set(topics)
  for (let k = words.length - 1; k >= 1; k--) {
    const cmd = words.slice(0, k).join(':')
    if (!commands.has(cmd)) continue
    const extra = words.slice(k)
    return new UsageError(`unexpected argument${extra.length > 1 ? 's' : ''}: ${extra.join(', ')} (\`pgi ${spaced(cmd)}\` takes none)`, {
      where: {command: spaced(cmd), argument: extra.join(',')},
      suggestions: [`See \`pgi ${spaced(cmd)} --help\` for its flags and examples.`],
    })
  }
  // the longest known topic the words start with ("rollout"), then the word after it
  let k = 0
  while (k < words.length && topicSet.has(words.slice(0, k + 1).join(':'))) k++
  const topic = words.slice(0, k).join(':')
  const word = words[k] ?? ''
  const typed = spaced(words.slice(0, k + 1).join(':'))
  // the commands and sub-topics one level under that topic (the top level when none)
  const under = [...commands, ...topicSet]
    .filter((x) => !x.startsWith('_') && (topic ? x.startsWith(`${topic}:`) : true))
    .map((x) => x.slice(topic ? topic.length + 1 : 0).split(':')[0]!)
  // a mistyped topic followed by a command of it ("invntory list") → the whole command
  const next = words[k + 1]
  const near = closest(word, [...new Set(under)])
    .map((w) => (topic ? `${topic}:${w}` : w))
    .map((c) => (next && commands.has(`${c}:${next}`) ? `${c}:${next}` : c))
    .map(spaced)
  const suggestions = near.length > 0 ? [`Did you mean ${near.map((n) => `\`pgi ${n}\``).join(' or ')}?`] : []
  suggestions.push(topic ? `See \`pgi ${spaced(topic)} --help\` for its commands.` : 'See `pgi --help` for the commands.')
  return new UsageError(`"${typed}" is not a pgi command`, {where: {command: typed}, suggestions, details: near.length > 0 ? {didYouMean: near} : undefined})
}

/** An error for people, on stderr: `Error [CODE] at WHERE: message`, then what to do next. */
export function renderError(e: PgiError, stack?: string): string {
  const where = PgiError.formatWhere(e.where)
  // a flag's parser names the flag in its message (JSON output keeps it): said once here
  const message = where && e.message.startsWith(`${where}: `) ? e.message.slice(where.length + 2) : e.message
  const out = [`Error [${e.code}]${where ? ` at ${where}` : ''}: ${message}`]
  for (const s of e.suggestions) out.push(`  → ${s}`)
  if (stack) out.push(stack)
  return out.join('\n') + '\n'
}

export interface ParseContext {
  /** The command's flag names (without dashes), for "did you mean" on an unknown flag. */
  flags?: readonly string[]
}

/** The lines of an oclif parse message without its "See more help with --help" tail. */
function lines(message: string): string[] {
  return message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^See more help/.test(l))
}

/** What oclif's parse errors carry besides their text (parser/errors.js). */
interface OclifParseFields {
  args?: ({name?: string; description?: string} | string)[]
  flags?: string[]
  oclif?: {exit?: number}
}

/** The first `--flag` a message names (oclif's validation messages), without dashes. */
function flagIn(text: string): string | undefined {
  return /--([\w-]+)/.exec(text)?.[1] ?? /\bflag ([\w-]+)/i.exec(text)?.[1]
}

/**
 * Any error a command ends with, as a PgiError. oclif's parse errors (a flag's own parser failing,
 * an unknown flag, a missing or unexpected argument, an invalid option) become usage errors (exit 2)
 * that name what is at fault; everything else maps through asPgiError.
 */
export function toPgiError(err: unknown, ctx: ParseContext = {}): PgiError {
  // a flag's own parse function failed: oclif rewrites that error's message (any class) to
  // "Parsing --flag \n\t<why>\nSee more help with --help"
  const flagParse = err instanceof Error ? /^Parsing --(\S+) *\n/.exec(err.message) : null
  if (flagParse) {
    const why = lines((err as Error).message).slice(1).join('; ')
    const own = err instanceof PgiError ? err : undefined
    return new UsageError(why || (err as Error).message, {where: {...own?.where, flag: flagParse[1]!}, suggestions: own?.suggestions.length ? own.suggestions : [SEE_HELP]})
  }
  if (err instanceof PgiError) {
    // a usage error raised after parsing (a service refusing a combination of flags): name the flag
    const flag = err.code === ErrorCode.USAGE && !err.where ? flagIn(err.message) : undefined
    if (flag && ctx.flags?.includes(flag)) {
      return new UsageError(err.message, {where: {flag}, suggestions: err.suggestions, details: err.details, exitCode: err.exitCode, cause: err})
    }
    return err
  }
  if (err instanceof Errors.CLIError) {
    const e = err as Errors.CLIError & OclifParseFields
    // told apart by their text and fields: oclif does not export these classes
    const text = lines(err.message)
    const name = /^Missing \d+ required arg/.test(err.message) ? 'RequiredArgsError' : /^Unexpected arguments?:/.test(err.message) && e.args ? 'UnexpectedArgsError' : /^Nonexistent flags?:/.test(err.message) && e.flags ? 'NonExistentFlagsError' : ''
    const usage = (message: string, where?: ErrorLocation, suggestions: string[] = [SEE_HELP]) => new UsageError(message, {where, suggestions})
    switch (name) {
      case 'RequiredArgsError': {
        const missing = (e.args ?? []).map((a) => (typeof a === 'string' ? {name: a} : a)).filter((a) => a.name)
        if (missing.length > 0) {
          const what = missing.map((a) => `${a.name!.toUpperCase()}${a.description ? ` (${a.description.replace(/\.$/, '')})` : ''}`).join(', ')
          return usage(`missing required argument${missing.length > 1 ? 's' : ''}: ${what}`, {argument: missing.map((a) => a.name!).join(',')})
        }
        break
      }
      case 'UnexpectedArgsError': {
        const extra = (e.args ?? []).map(String)
        return usage(`unexpected argument${extra.length > 1 ? 's' : ''}: ${extra.join(', ')}`, {argument: extra.join(',')})
      }
      case 'NonExistentFlagsError': {
        const bad = (e.flags ?? []).map((f) => f.replace(/^-+/, '').replace(/=.*$/, ''))
        const near = bad.length === 1 && ctx.flags ? closest(bad[0]!, ctx.flags) : []
        return usage(`unknown flag${bad.length > 1 ? 's' : ''}: ${(e.flags ?? []).join(', ')}`, {flag: bad.join(',')}, near.length > 0 ? [`Did you mean ${near.map((n) => `--${n}`).join(' or ')}?`, SEE_HELP] : [SEE_HELP])
      }
      default:
        break
    }
    const exit = e.oclif?.exit
    if (exit === 2 || /flag|argument|Unexpected|Missing|Expected/i.test(err.message)) {
      // oclif's validation errors come as "The following error occurred:" then one line each,
      // naming a required flag without its dashes: said as pgi says it
      const said = text.filter((l) => !/^The following errors? occurred:?$/i.test(l) && !/^See more help with --help$/i.test(l)).map((l) => l.replace(/^Missing required flag (\w[\w-]*)$/, 'missing required flag --$1'))
      const message = said.join('; ') || err.message
      const flag = flagIn(message)
      return usage(message, flag ? {flag} : undefined)
    }
  }
  if (err instanceof Error && /SIGINT/.test(err.message)) {
    return new UsageError('interrupted', {exitCode: ExitCode.INTERRUPTED})
  }
  const e = asPgiError(err)
  return e.code === ErrorCode.INTERNAL && err instanceof Error && err.name === 'ExitError' ? new UsageError(err.message) : e
}
