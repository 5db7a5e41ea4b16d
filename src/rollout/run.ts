/**
 * A rollout over many establishments: waves in ring order (a wave starts only when the previous
 * one ended within the failure threshold), at most --max-parallel establishments at once (and
 * --max-per-hypervisor on one hypervisor), a halt as soon as failures exceed --max-failures
 * (in-flight establishments still finish or roll back; nobody new starts), pause/abort read from
 * the journal's control file between steps.
 */
import {hostname} from 'node:os'

import {KeyedPool} from '../fleet/pool.js'
import {UsageError} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import type {Establishment} from '../inventory/types.js'
import {rolloutEstablishment, type EstablishmentCtx, type EstablishmentResult, type Outcome} from './establishment.js'
import type {RolloutJournal, RolloutRecord, RolloutState} from './journal.js'

export const RUNNER = `${hostname()}:${process.pid}`

export interface WaveReport {
  ring: string
  total: number
  counts: Partial<Record<Outcome, number>>
}

export interface RolloutResult {
  id: string
  version: string
  state: RolloutState
  reason?: string
  waves: WaveReport[]
  establishments: EstablishmentResult[]
  counts: Partial<Record<Outcome, number>>
  failures: number
  threshold: number
  exitCode: ExitCodeValue
  wallMs: number
  /** Set when a signal (SIGTERM, SIGINT) stopped the runner: nothing new started, the marks say where each VM stands. */
  stopped?: string
}

export const FAILURE_OUTCOMES = new Set<Outcome>(['rolled-back', 'failed', 'rollback-failed', 'interrupted', 'blocked'])

/** "3" → 3; "10%" → 10 % of `total`, rounded down. */
export function parseMaxFailures(v: string, total: number): number {
  const m = /^(\d+)(%?)$/.exec(v.trim())
  if (!m) throw new UsageError(`--max-failures must be a number or a percentage (e.g. 3 or 5%), got "${v}"`)
  return m[2] ? Math.floor((Number(m[1]) / 100) * total) : Number(m[1])
}

export interface RunOptions {
  record: RolloutRecord
  journal: RolloutJournal
  establishments: Establishment[]
  ctx: Omit<EstablishmentCtx, 'rolloutId' | 'journal' | 'control' | 'runner'> & {runner?: string}
  /** Called when an establishment ends (progress lines). */
  onResult?: (r: EstablishmentResult) => void
}

export function wavesOf(establishments: Establishment[], waves: string[]): {ring: string; items: Establishment[]}[] {
  return waves.map((ring) => ({ring, items: establishments.filter((e) => e.ring === ring)})).filter((w) => w.items.length > 0)
}

export async function runRollout(o: RunOptions): Promise<RolloutResult> {
  const started = Date.now()
  const {record, journal} = o
  const selected = o.establishments.filter((e) => record.waves.includes(e.ring))
  const threshold = parseMaxFailures(record.maxFailures, selected.length)
  const results = new Map<string, EstablishmentResult>()
  let failures = 0
  let halted: string | undefined
  const pool = new KeyedPool({max: record.maxParallel, perKey: record.maxPerHypervisor})
  // read at every step boundary (a few thousand reads of a tiny file for a whole Région): a pause
  // or abort takes effect at the very next boundary
  const control = () => journal.control()
  const ctx: EstablishmentCtx = {...o.ctx, runner: o.ctx.runner ?? RUNNER, rolloutId: record.id, journal, control}
  const waveReports: WaveReport[] = []

  for (const wave of wavesOf(selected, record.waves)) {
    const report: WaveReport = {ring: wave.ring, total: wave.items.length, counts: {}}
    waveReports.push(report)
    if (halted) {
      for (const e of wave.items) results.set(e.uai, skipped(e, record.version, halted))
      continue
    }
    o.ctx.io.info(`wave ${wave.ring}: ${wave.items.length} establishment(s)`)
    await Promise.all(
      wave.items.map((e) =>
        pool.run(e.hypervisor, async () => {
          if (halted || ctx.signal?.aborted) {
            results.set(e.uai, skipped(e, record.version, halted ?? 'runner stopped'))
            return
          }
          const r = await rolloutEstablishment(e, ctx)
          results.set(e.uai, r)
          // an establishment a signal stopped mid-way did not fail: resume finishes it
          if (FAILURE_OUTCOMES.has(r.outcome) && !(r.outcome === 'interrupted' && ctx.signal?.aborted)) {
            failures++
            if (failures > threshold && !halted) {
              halted = `halted: ${failures} failure(s), more than --max-failures ${record.maxFailures} (${threshold})`
              o.ctx.io.warn(halted)
            }
          }
          o.onResult?.(r)
        }),
      ),
    )
    for (const e of wave.items) {
      const oc = results.get(e.uai)!.outcome
      report.counts[oc] = (report.counts[oc] ?? 0) + 1
    }
    const c = await journal.control()
    if (c && !halted) halted = c === 'pause' ? 'paused by `pgi rollout pause`' : 'aborted by `pgi rollout abort`'
    if (ctx.signal?.aborted && !halted) halted = 'runner stopped'
  }

  const list = o.establishments.filter((e) => results.has(e.uai)).map((e) => results.get(e.uai)!)
  const counts: Partial<Record<Outcome, number>> = {}
  for (const r of list) counts[r.outcome] = (counts[r.outcome] ?? 0) + 1
  const c = await journal.control()
  const unfinished = list.some((r) => r.outcome === 'interrupted' || r.outcome === 'paused' || r.outcome === 'not-started' || r.outcome === 'deferred')
  let state: RolloutState
  if (c === 'abort') state = 'aborted'
  else if (c === 'pause') state = 'paused'
  else if (failures > threshold) state = 'halted'
  else if (failures > 0 || unfinished) state = 'partial'
  else state = 'done'
  // a signal: the run is unfinished whatever else happened (resume goes on), and says so with its exit code
  const stopped = ctx.signal?.aborted ? signalName(ctx.signal) : undefined
  if (stopped && state === 'done') state = 'partial'
  const reason = stopped && (!halted || halted === 'runner stopped') ? `stopped by ${stopped}` : halted
  const exitCode: ExitCodeValue = stopped ? ExitCode.INTERRUPTED : state === 'done' ? ExitCode.OK : ExitCode.PARTIAL
  const updated: RolloutRecord = {...record, state, updatedAt: new Date().toISOString(), ...(reason ? {reason} : {})}
  await journal.writeRecord(updated)
  return {id: record.id, version: record.version, state, reason, waves: waveReports, establishments: list, counts, failures, threshold, exitCode, wallMs: Date.now() - started, ...(stopped ? {stopped} : {})}
}

function signalName(signal: AbortSignal): string {
  const r: unknown = signal.reason
  const m = r instanceof Error ? r.message : typeof r === 'string' ? r : ''
  return /^SIG[A-Z]+$/.test(m) ? m : 'a stop signal'
}

function skipped(e: Establishment, to: string, why: string): EstablishmentResult {
  return {uai: e.uai, name: e.name, hypervisor: e.hypervisor, node: e.node, vmid: e.vmid, ring: e.ring, to, outcome: 'not-started', reason: why, durationMs: 0}
}


