/**
 * The Région's uplink shared between the establishments being staged (`--total-bwlimit`,
 * inventory `delivery.total_bwlimit`, docs/delivery.md), by scheduling: pgi decides how many
 * guests transfer at once and the cap each one's pgi-stage-delta gets, so that the caps it has
 * handed out never add up to more than the total.
 *
 * - slots: min(--max-parallel, establishments to transfer, total ÷ per-site cap) — the per-site
 *   cap is --bwlimit, or MIN_SHARE when none is given (a share below it is not worth a transfer);
 * - while establishments still wait for a slot, each running one gets total ÷ slots (at most the
 *   per-site cap): one that finishes or fails hands its slot, with the same share, to the next;
 * - once nobody waits, the shares of those still running grow to total ÷ running (at most the
 *   per-site cap): the caller re-caps a running transfer (pgi-stage-delta stop, then start with
 *   the new cap: a rerun continues from what its disk holds).
 * Shares only grow during a run, so a guest still running on its previous, smaller cap never
 * pushes the sum over the total.
 */
export const MIN_SHARE_BPS = 64 * 1024

export interface PacingPlan {
  /** Transfers at once. */
  slots: number
  /** Each one's cap while others wait, bytes/s (undefined: no cap). */
  shareBps?: number
}

/** The arithmetic: how many at once, and each one's cap. */
export function planPacing(o: {totalBps?: number; perSiteBps?: number; parallel: number; count: number}): PacingPlan {
  const parallel = Math.max(1, Math.min(o.parallel, Math.max(1, o.count)))
  if (!o.totalBps) return {slots: parallel, ...(o.perSiteBps ? {shareBps: o.perSiteBps} : {})}
  const unit = Math.min(o.perSiteBps ?? MIN_SHARE_BPS, o.totalBps)
  const slots = Math.max(1, Math.min(parallel, Math.floor(o.totalBps / unit)))
  return {slots, shareBps: shareOf(o.totalBps, o.perSiteBps, slots)}
}

/** total ÷ n, at most the per-site cap, whole bytes/s. */
export function shareOf(totalBps: number, perSiteBps: number | undefined, n: number): number {
  const fair = Math.floor(totalBps / Math.max(1, n))
  return perSiteBps ? Math.min(perSiteBps, fair) : fair
}

/**
 * The run's scheduler: `acquire` waits for a slot (first come, first served), `capFor` is the
 * cap a holder should run at now, `release` frees the slot, `forgo` says an establishment will
 * not transfer (already staged, full transfer, failed before starting).
 */
export class TransferPacer {
  readonly plan: PacingPlan
  private readonly holders = new Set<string>()
  private readonly queue: {uai: string; go: () => void}[] = []
  private remaining: number

  constructor(private readonly o: {totalBps?: number; perSiteBps?: number; parallel: number; count: number}) {
    this.plan = planPacing(o)
    this.remaining = o.count
  }

  get totalBps(): number | undefined {
    return this.o.totalBps
  }

  /** Establishments not yet finished that hold no slot. */
  get waiting(): number {
    return this.remaining - this.holders.size
  }

  async acquire(uai: string): Promise<void> {
    // the slot is handed over in release, so no newcomer can take it in between
    if (this.holders.size >= this.plan.slots) return new Promise<void>((go) => this.queue.push({uai, go}))
    this.holders.add(uai)
  }

  /** A slot now, or false when all are held (for runs that do not wait). */
  tryAcquire(uai: string): boolean {
    if (this.holders.size >= this.plan.slots) return false
    this.holders.add(uai)
    return true
  }

  /** The cap `uai` should run at now (bytes/s; undefined: no cap). */
  capFor(uai: string): number | undefined {
    if (!this.holders.has(uai)) return undefined
    if (!this.o.totalBps) return this.o.perSiteBps
    // while others wait, the slot's fixed share; after, the total split between those left
    return this.waiting > 0 ? this.plan.shareBps : shareOf(this.o.totalBps, this.o.perSiteBps, this.holders.size)
  }

  release(uai: string): void {
    if (!this.holders.delete(uai)) return
    this.remaining--
    const next = this.queue.shift()
    if (next) {
      this.holders.add(next.uai)
      next.go()
    }
  }

  forgo(): void {
    this.remaining--
  }
}
