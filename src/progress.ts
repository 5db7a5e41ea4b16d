import {Listr, ListrLogger, ProcessOutput, type ListrTask} from 'listr2'

import {KeyedPool} from './fleet/pool.js'
import type {Io} from './io.js'

/**
 * One step of long work. `run` may report sub-progress with `update` (shown on a terminal, and
 * as a plain line in CI) and may return a short text shown when the step ends.
 */
export interface Step<C> {
  title: string
  /** Skip the step (with the reason shown) when this returns a string. */
  skip?: (ctx: C) => string | false | undefined
  run: (ctx: C, update: (text: string) => void) => Promise<string | void>
}

/** listr2 renderer options sending every line to stderr (stdout is kept for results and --json). */
function toStderr(): Record<string, unknown> {
  const logger = new ListrLogger({useIcons: true, processOutput: new ProcessOutput(process.stderr, process.stderr)})
  return {logger}
}

/**
 * Runs steps in order with listr2: an updating display on a terminal, one plain line per step
 * in CI or without a TTY (`CI=true`). Output goes to stderr; stdout is kept for results.
 * A failing step stops the run and its error is rethrown unchanged.
 */
export async function runSteps<C extends object>(io: Io, steps: Step<C>[], ctx: C, opts: {concurrent?: boolean | number} = {}): Promise<C> {
  if (io.level === 'silent') {
    for (const s of steps) {
      if (s.skip?.(ctx)) continue
      await s.run(ctx, () => undefined)
    }
    return ctx
  }

  const tasks: ListrTask<C>[] = steps.map((s) => ({
    title: s.title,
    skip: s.skip ? (c: C) => s.skip?.(c) || false : undefined,
    task: async (c, task) => {
      const started = Date.now()
      const out = await s.run(c, (text) => {
        task.output = text
      })
      const secs = ((Date.now() - started) / 1000).toFixed(1)
      task.title = `${s.title}${out ? `: ${out}` : ''} (${secs}s)`
    },
  }))
  const list = new Listr<C>(tasks, {
    concurrent: opts.concurrent ?? false,
    exitOnError: true,
    renderer: io.interactive ? 'default' : 'simple',
    fallbackRenderer: 'simple',
    rendererOptions: {collapseSubtasks: false, ...toStderr()},
    fallbackRendererOptions: toStderr(),
    registerSignalListeners: false,
  } as ConstructorParameters<typeof Listr<C>>[1])
  return list.run(ctx)
}

/** One independent job of a fleet operation (one establishment). */
export interface ParallelJob {
  title: string
  /** Bound key (a hypervisor): at most `perKey` jobs of one key run at once. */
  key: string
  /** May report progress with `update`; returns a short text shown when it ends; throws on failure. */
  run: (update: (text: string) => void) => Promise<string | void>
}

/**
 * Runs independent jobs concurrently — at most `max` at once and `perKey` per key — with one
 * listr2 line per job on a terminal, or one plain line per step in CI. A failing job never stops
 * the others; each job's own outcome is the caller's to record (this resolves when all ended).
 */
export async function runParallel(io: Io, jobs: ParallelJob[], bounds: {max: number; perKey?: number}): Promise<void> {
  const pool = new KeyedPool(bounds)
  const wrap = (j: ParallelJob, update: (text: string) => void) => pool.run(j.key, () => j.run(update))
  if (io.level === 'silent' || jobs.length === 0) {
    await Promise.all(jobs.map((j) => wrap(j, () => undefined).catch(() => undefined)))
    return
  }
  const tasks: ListrTask<object>[] = jobs.map((j) => ({
    title: j.title,
    task: async (_c, task) => {
      task.output = 'waiting for a free slot'
      const started = Date.now()
      const out = await wrap(j, (text) => {
        task.output = text
      })
      task.title = `${j.title}${out ? `: ${out}` : ''} (${((Date.now() - started) / 1000).toFixed(1)}s)`
    },
  }))
  const list = new Listr<object>(tasks, {
    concurrent: true,
    exitOnError: false,
    collectErrors: 'minimal',
    renderer: io.interactive ? 'default' : 'simple',
    fallbackRenderer: 'simple',
    rendererOptions: {collapseSubtasks: false, ...toStderr()},
    fallbackRendererOptions: toStderr(),
    registerSignalListeners: false,
  } as ConstructorParameters<typeof Listr<object>>[1])
  await list.run({}).catch(() => undefined)
}
