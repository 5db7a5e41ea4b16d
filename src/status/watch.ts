/**
 * `pgi status --watch N`: run the status every N seconds until stopped (Ctrl-C, or the signal).
 *
 * - redraw: on a terminal, the screen is redrawn in place with the whole table;
 * - changes: without a terminal (a log, a pipe), the first run prints one line per establishment
 *   and later runs only the establishments whose verdict or reason changed;
 * - json: like changes, one JSON object per line (NDJSON) for scripts;
 * - each: the caller renders the whole report each round (e.g. rewriting a Prometheus textfile).
 */
import {sleep} from '../sleep.js'
import type {StatusReport} from './types.js'
import {changeLine, diffStatuses} from './format.js'

export type WatchMode = 'redraw' | 'changes' | 'json' | 'each'

export interface WatchOptions {
  intervalS: number
  mode: WatchMode
  collect: () => Promise<StatusReport>
  /** Writes text as is (the caller's stdout). */
  write: (text: string) => void
  /** For redraw and each: the whole report as text. */
  render?: (report: StatusReport) => string | Promise<string>
  signal: AbortSignal
  /** Stop after this many rounds (tests); default: until the signal. */
  maxRounds?: number
  /** Called after each round with the report (e.g. to log a failed round). */
  onRound?: (report: StatusReport, round: number) => void
}

/** ESC[H ESC[2J: cursor home, clear screen (ECMA-48), the way watch(1) and top redraw. */
const CLEAR = '\u001b[H\u001b[2J'

/** `p`, or undefined as soon as `signal` aborts (the listener is removed either way). */
function unlessAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) return Promise.resolve(undefined)
  let onAbort = () => undefined as void
  const stop = new Promise<undefined>((resolve) => {
    onAbort = () => resolve(undefined)
    signal.addEventListener('abort', onAbort, {once: true})
  })
  return Promise.race([p, stop]).finally(() => signal.removeEventListener('abort', onAbort))
}

/** Runs the watch loop; resolves with the last complete report when stopped. */
export async function watchStatus(opts: WatchOptions): Promise<StatusReport | undefined> {
  let last: StatusReport | undefined
  for (let round = 1; !opts.signal.aborted && (opts.maxRounds === undefined || round <= opts.maxRounds); round++) {
    const t0 = Date.now()
    // Ctrl-C during a round ends the watch at once with the last complete report
    const report = await unlessAborted(opts.collect(), opts.signal)
    if (report === undefined) break
    switch (opts.mode) {
      case 'redraw': {
        const body = opts.render ? await opts.render(report) : ''
        opts.write(`${CLEAR}Every ${opts.intervalS} s: ${report.checkedAt.replace(/\.\d{3}Z$/, 'Z')} (Ctrl-C to stop)\n\n${body}\n`)
        break
      }
      case 'each':
        if (opts.render) opts.write(await opts.render(report))
        break
      case 'changes':
        for (const c of diffStatuses(last, report)) opts.write(changeLine(c, report.checkedAt) + '\n')
        break
      case 'json':
        for (const c of diffStatuses(last, report)) opts.write(JSON.stringify({at: report.checkedAt, ...c}) + '\n')
        break
    }
    last = report
    opts.onRound?.(report, round)
    if (opts.maxRounds !== undefined && round >= opts.maxRounds) break
    // Ctrl-C during the pause between rounds ends the watch too (not an error)
    await sleep(Math.max(0, opts.intervalS * 1000 - (Date.now() - t0)), opts.signal).catch(() => undefined)
  }
  return last
}
