import type {EventLoopUtilization} from 'node:perf_hooks'

/**
 * Deadlines of the requests pgi sends to hypervisors: the one time bound every fleet read and write
 * lives under, used by the Proxmox client for each API request (src/proxmox/transport.ts) and by the
 * status service for each of its calls (src/status/collect.ts).
 *
 * A deadline measures the hypervisor, not this process: when the timer itself fires late, or the
 * event loop was busy nearly all the window, this process was short of CPU (a busy machine, or its
 * own work) and an answer may be waiting unread. The deadline is then extended once (by the
 * lateness, at least half the window), so a slow machine running pgi is not mistaken for a
 * hypervisor that stopped answering. A dead hypervisor costs at most 1.5× the deadline (or the
 * lateness) in that case.
 *
 * Timers are always cleared when the work ends, whichever way it ends: a timer left armed after a
 * failure would keep the process alive after its last output.
 */

/** A timer firing this much (ms) after its time means the event loop was starved. */
export const STARVATION_MS = 250
/** Event-loop utilisation over a window above which this process, not the hypervisor, was the bottleneck. */
export const SATURATED_ELU = 0.9

/**
 * The event loop's utilisation counters, read at most once per millisecond: a fleet-wide run arms
 * thousands of deadlines in bursts (two per API request), and reading the counters for each was a
 * measurable share of the CPU per request (bench/status, marginal CPU). A snapshot a millisecond
 * old changes nothing to a window of seconds.
 */
let lastElu: {at: number; elu: EventLoopUtilization} | undefined
function eluSnapshot(now: number): EventLoopUtilization {
  if (!lastElu || now - lastElu.at >= 1) lastElu = {at: now, elu: performance.eventLoopUtilization()}
  return lastElu.elu
}

/**
 * Calls `onExpire` once `ms` have passed (extended once on a starved event loop, see above);
 * returns the function that cancels it.
 */
export function armDeadline(ms: number, onExpire: () => void): () => void {
  let timer: NodeJS.Timeout | undefined
  const armed = performance.now()
  const elu0 = eluSnapshot(armed)
  const fire = (extended: boolean): void => {
    timer = undefined
    const late = performance.now() - armed - ms
    const busy = performance.eventLoopUtilization(elu0).utilization > SATURATED_ELU
    if (!extended && (late > STARVATION_MS || busy)) timer = setTimeout(() => fire(true), Math.max(late, ms / 2))
    else onExpire()
  }
  timer = setTimeout(() => fire(false), ms)
  return () => {
    if (timer) clearTimeout(timer)
    timer = undefined
  }
}

/**
 * `p`, or a rejection with `onTimeout()` once the deadline passes (the late outcome of `p` is then
 * ignored, never an unhandled rejection). The timer is cleared as soon as either settles.
 */
export function withDeadline<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let cancel: (() => void) | undefined
  const deadline = new Promise<never>((_, reject) => {
    cancel = armDeadline(ms, () => reject(onTimeout()))
  })
  p.catch(() => undefined)
  return Promise.race([p, deadline]).finally(() => cancel?.())
}

/** The abort reason of a request that passed its deadline (its `name` is what fetch implementations use). */
export class DeadlineExceeded extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`)
    this.name = 'TimeoutError'
  }
}
