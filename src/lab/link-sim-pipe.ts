import type {Socket} from 'node:net'
import {performance} from 'node:perf_hooks'

import {mulberry32, xmur3} from './faults.js'
import type {LinkProfile} from './link-sim-config.js'

/**
 * One direction of one site's link in the lab's link simulator (src/lab/link-sim.ts, where the
 * model is described): a serial link of the profile's rate shared round robin by the site's
 * connections, a delay line for the latency, segment losses drawn from the configuration's seed,
 * and the cut at a byte count.
 */

/** A TCP segment's payload on a 1500-byte MTU. */
const MSS = 1448
const SOURCE_HIGH = 256 * 1024
const SOURCE_LOW = 64 * 1024
const SINK_HIGH = 1024 * 1024
const MIN_RTO_MS = 200
const BURST_MS = 20
/** How far a backlogged link catches up with a late timer (a busy machine), at most. */
const CATCH_UP_MS = 500


/** What a pipe needs of its site's link (src/lab/link-sim.ts's Link). */
export interface PipeLink {
  readonly profile: LinkProfile
  readonly key: string
  readonly seed: number
  cut: boolean
  bytesSinceProfile: number
  readonly stats: {lostSegments: number}
  countWire(dir: 'down' | 'up', n: number): void
  countDelivered(dir: 'down' | 'up', n: number): void
  cutNow(reason: string): void
}

export interface Flow {
  pending: Buffer[]
  pendingBytes: number
  /** The source sent its end: end the destination once everything was delivered. */
  ended: boolean
  endSent: boolean
  blockedUntil: number
  lastDeliverAt: number
  inflight: number
  sink: Socket
  source: Socket
}

interface Delivery {
  at: number
  flow: Flow
  data: Buffer
  cutAfter: boolean
}

/** One direction of one site's link. */
export class Pipe {
  readonly flows: Flow[] = []
  #rr = 0
  #linkFree = 0
  #timer: NodeJS.Timeout | undefined
  #timerAt = Infinity
  readonly #line: Delivery[] = []
  #lineTimer: NodeJS.Timeout | undefined
  #draws = 0
  /** The last pump left data ready for the link: the next one is a continuation, not a new burst. */
  #backlogged = false

  constructor(
    readonly link: PipeLink,
    readonly dir: 'down' | 'up',
  ) {}

  get rate(): number {
    return this.dir === 'down' ? this.link.profile.downBytesPerS : this.link.profile.upBytesPerS
  }

  add(flow: Flow): void {
    this.flows.push(flow)
  }

  remove(flow: Flow): void {
    const i = this.flows.indexOf(flow)
    if (i >= 0) this.flows.splice(i, 1)
  }

  push(flow: Flow, data: Buffer): void {
    flow.pending.push(data)
    flow.pendingBytes += data.length
    if (flow.pendingBytes > SOURCE_HIGH) flow.source.pause()
    this.kick()
  }

  end(flow: Flow): void {
    flow.ended = true
    this.kick()
  }

  kick(): void {
    this.#schedule(0)
  }

  #schedule(delayMs: number): void {
    const at = performance.now() + delayMs
    if (this.#timer && this.#timerAt <= at) return
    if (this.#timer) clearTimeout(this.#timer)
    this.#timerAt = at
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.#timerAt = Infinity
      this.#pump()
    }, Math.max(0, Math.ceil(delayMs)))
  }

  #draw(): number {
    return mulberry32((xmur3(`${this.link.seed}:${this.link.key}:${this.dir}`) + this.#draws++ * 0x6d2b79f5) | 0)
  }

  #ready(f: Flow, now: number): boolean {
    return f.pendingBytes > 0 && f.blockedUntil <= now && f.sink.writableLength < SINK_HIGH && !f.sink.destroyed
  }

  #take(f: Flow, max: number): Buffer {
    const head = f.pending[0]!
    let seg: Buffer
    if (head.length <= max) {
      seg = head
      f.pending.shift()
    } else {
      seg = head.subarray(0, max)
      f.pending[0] = head.subarray(max)
    }
    f.pendingBytes -= seg.length
    if (f.pendingBytes < SOURCE_LOW && f.source.isPaused()) f.source.resume()
    return seg
  }

  #pump(): void {
    const link = this.link
    if (link.cut) return
    const p = link.profile
    const now = performance.now()
    // an idle link saves no credit beyond a 20 ms burst, so that a link that was quiet for long
    // never sends faster than its rate; a link that had data waiting when this wake-up was set
    // catches up with the timer's lateness on a busy machine (up to 500 ms), else a loaded
    // machine would make every link slower than its rate
    const credit = this.#backlogged ? CATCH_UP_MS : BURST_MS
    if (this.#linkFree < now - credit) this.#linkFree = now - credit
    const rate = this.rate
    // a segment: one MSS when losses are modelled, else about 5 ms of link time (bounded)
    const seg = p.loss > 0 ? MSS : Number.isFinite(rate) ? Math.min(64 * 1024, Math.max(MSS, Math.floor(rate * 0.005))) : 64 * 1024
    const rto = Math.max(MIN_RTO_MS, 2 * p.latencyMs + MIN_RTO_MS)
    let guard = 0
    while (this.#linkFree <= now + 1 && guard++ < 10_000) {
      let flow: Flow | undefined
      for (let i = 0; i < this.flows.length; i++) {
        const f = this.flows[(this.#rr + i) % this.flows.length]!
        if (this.#ready(f, now)) {
          flow = f
          this.#rr = (this.#rr + i + 1) % this.flows.length
          break
        }
      }
      if (!flow) break
      let data = this.#take(flow, seg)
      let cutAfter = false
      if (p.cutAtByte !== undefined) {
        const left = p.cutAtByte - link.bytesSinceProfile
        if (left <= 0) {
          link.cutNow('cut_at_byte reached')
          return
        }
        if (data.length >= left) {
          data = data.subarray(0, left)
          cutAfter = true
        }
      }
      const n = data.length
      this.#linkFree += Number.isFinite(rate) ? (n / rate) * 1000 : 0
      link.bytesSinceProfile += n
      link.countWire(this.dir, n)
      if (p.loss > 0 && !cutAfter && this.#draw() < p.loss) {
        // lost on the way: the link time is spent, the segment comes again after the timeout
        flow.pending.unshift(data)
        flow.pendingBytes += n
        flow.blockedUntil = this.#linkFree + rto
        link.stats.lostSegments++
        continue
      }
      // the segment leaves the link when it is serialised, never before now (the burst credit
      // above may put #linkFree in the past): its latency counts from then
      const at = Math.max(Math.max(this.#linkFree, now) + p.latencyMs, flow.lastDeliverAt)
      flow.lastDeliverAt = at
      flow.inflight++
      this.#deliver({at, flow, data, cutAfter})
      if (cutAfter) return
    }
    for (const f of this.flows) this.#maybeEnd(f)
    // next wake-up: the link is free again, or a stalled flow may go on
    let next = Infinity
    for (const f of this.flows) {
      if (f.pendingBytes === 0 || f.sink.destroyed) continue
      if (f.sink.writableLength >= SINK_HIGH) continue // woken by the sink's drain
      next = Math.min(next, Math.max(this.#linkFree, f.blockedUntil))
    }
    this.#backlogged = next < Infinity && next <= this.#linkFree + 0.5
    if (next < Infinity) this.#schedule(next - performance.now())
  }

  #deliver(d: Delivery): void {
    const now = performance.now()
    if (d.at <= now + 0.5 && this.#line.length === 0) {
      this.#write(d)
      return
    }
    // the delay line is ordered by time (a lower latency set while data is in flight may reorder)
    let i = this.#line.length
    while (i > 0 && this.#line[i - 1]!.at > d.at) i--
    this.#line.splice(i, 0, d)
    if (i === 0) this.#armLine()
  }

  #armLine(): void {
    if (this.#lineTimer) clearTimeout(this.#lineTimer)
    const head = this.#line[0]
    if (!head) return
    this.#lineTimer = setTimeout(() => {
      this.#lineTimer = undefined
      const now = performance.now()
      while (this.#line.length > 0 && this.#line[0]!.at <= now + 0.5) this.#write(this.#line.shift()!)
      this.#armLine()
    }, Math.max(0, Math.ceil(head.at - performance.now())))
  }

  #write(d: Delivery): void {
    d.flow.inflight--
    if (d.flow.sink.destroyed) return
    this.link.countDelivered(this.dir, d.data.length)
    d.flow.sink.write(d.data)
    if (d.cutAfter) {
      this.link.cutNow('cut_at_byte reached')
      return
    }
    this.#maybeEnd(d.flow)
  }

  #maybeEnd(f: Flow): void {
    if (f.ended && !f.endSent && f.pendingBytes === 0 && f.inflight === 0 && !f.sink.destroyed) {
      f.endSent = true
      f.sink.end()
    }
  }

  clear(): void {
    if (this.#timer) clearTimeout(this.#timer)
    if (this.#lineTimer) clearTimeout(this.#lineTimer)
    this.#timer = undefined
    this.#lineTimer = undefined
    this.#timerAt = Infinity
    this.#line.length = 0
    this.flows.length = 0
  }
}

