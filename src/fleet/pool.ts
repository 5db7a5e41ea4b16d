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
  private readonly runningByKey = new Map<string, number>()
  private readonly queue: {key: string; start: () => void}[] = []

  constructor(private readonly opts: PoolOptions) {
    if (!Number.isInteger(opts.max) || opts.max < 1) throw new RangeError(`pool size must be a positive integer, got ${opts.max}`)
    if (opts.perKey !== undefined && (!Number.isInteger(opts.perKey) || opts.perKey < 1)) {
      throw new RangeError(`per-key bound must be a positive integer, got ${opts.perKey}`)
    }
  }

  /** Runs `job` when a slot for `key` is free; resolves or rejects with the job's outcome. */
  run<T>(key: string, job: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.running++
        this.runningByKey.set(key, (this.runningByKey.get(key) ?? 0) + 1)
        job()
          .then(resolve, reject)
          .finally(() => {
            this.running--
            this.runningByKey.set(key, (this.runningByKey.get(key) ?? 1) - 1)
            this.pump()
          })
      }
      this.queue.push({key, start})
      this.pump()
    })
  }

  private canStart(key: string): boolean {
    if (this.running >= this.opts.max) return false
    return this.opts.perKey === undefined || (this.runningByKey.get(key) ?? 0) < this.opts.perKey
  }

  private pump(): void {
    for (let i = 0; i < this.queue.length && this.running < this.opts.max; ) {
      const item = this.queue[i]!
      if (this.canStart(item.key)) {
        this.queue.splice(i, 1)
        item.start()
      } else i++
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
