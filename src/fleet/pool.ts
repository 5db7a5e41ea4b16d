/**
 * Bounded parallelism for fleet work: at most `max` jobs at once overall and at most `perKey` at
 * once for one key (a hypervisor), so one slow hypervisor never holds more than its share.
 * Written here rather than taken from p-limit because of the two-level bound, which p-limit
 * and p-queue do not offer; it is small and tested (test/unit/fleet/pool.test.ts).
 */
export interface PoolOptions {
  max: number
  perKey?: number
}

export class KeyedPool {
  private running = 0
  private seq = 0
  /** Per key: how many of its jobs run, and its waiting jobs in submission order. */
  private readonly keys = new Map<string, {running: number; waiting: {seq: number; start: () => void}[]}>()

  constructor(private readonly opts: PoolOptions) {
    if (!Number.isInteger(opts.max) || opts.max < 1) throw new RangeError(`pool size must be a positive integer, got ${opts.max}`)
    if (opts.perKey !== undefined && (!Number.isInteger(opts.perKey) || opts.perKey < 1)) {
      throw new RangeError(`per-key bound must be a positive integer, got ${opts.perKey}`)
    }
  }

  /** Runs `job` when a slot for `key` is free; resolves or rejects with the job's outcome. */
  run<T>(key: string, job: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let k = this.keys.get(key)
      if (!k) this.keys.set(key, (k = {running: 0, waiting: []}))
      const slot = k
      const start = () => {
        this.running++
        slot.running++
        job()
          .then(resolve, reject)
          .finally(() => {
            this.running--
            slot.running--
            this.pump()
          })
      }
      slot.waiting.push({seq: this.seq++, start})
      this.pump()
    })
  }

  /**
   * Starts waiting jobs while there is room: each time the earliest submitted among the keys with
   * a free slot. The search goes over the keys (hypervisors, tens), not over the waiting jobs
   * (thousands on a fleet-wide status): a scan of the whole queue at every completion made the
   * scheduling cost grow with the fleet's size squared (bench/status, marginal CPU per request).
   */
  private pump(): void {
    const perKey = this.opts.perKey ?? Infinity
    while (this.running < this.opts.max) {
      let best: {running: number; waiting: {seq: number; start: () => void}[]} | undefined
      for (const k of this.keys.values()) {
        if (k.waiting.length > 0 && k.running < perKey && (!best || k.waiting[0]!.seq < best.waiting[0]!.seq)) best = k
      }
      if (!best) return
      best.waiting.shift()!.start()
    }
  }
}

/** Settles every job (never rejects): the outcome of each, in input order. */
export async function settleAll<I, T>(
  items: readonly I[],
  keyOf: (item: I) => string,
  job: (item: I) => Promise<T>,
  opts: PoolOptions,
): Promise<({ok: true; item: I; value: T} | {ok: false; item: I; error: unknown})[]> {
  const pool = new KeyedPool(opts)
  return Promise.all(
    items.map((item) =>
      pool.run(keyOf(item), () => job(item)).then(
        (value) => ({ok: true as const, item, value}),
        (error: unknown) => ({ok: false as const, item, error}),
      ),
    ),
  )
}
