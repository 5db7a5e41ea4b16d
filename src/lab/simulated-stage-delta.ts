import {DATA, fail, iso, ok, sha256, type GuestEnv, type RunResult, type SimStageDelta} from './simulated-guest-state.js'

/**
 * pgi-stage-delta in the simulated guest, for the lab's simulated images that carry it
 * (SimulatedOptions.guestStageDelta); the 1.0.0-like default has none (exit 127). It follows the
 * real tool's command line and progress JSON (images/pgi-tryton/files/usr/local/sbin/pgi-stage-delta:
 * start, status, stop; `active`, `state`, `rate_limit_bps`, …) and the store probe pgi sends with
 * python3. No disk is assembled: a run "fetches" the guest's delta (`bytes` of the option) at its
 * --rate-limit-bps in simulated time (the lab's time scale), continues from where a stopped run
 * was, and ends `done` with the signed raw sha256. Every start's arguments are appended to
 * STARTS_FILE on the data disk: what a test reads to see the caps pgi gave each guest. A guest
 * given `refuses` runs an older tool: a start with one of those options fails as argparse fails
 * (exit 2, "unrecognized arguments: …" with their values) and is not recorded.
 */

export const STAGE_DELTA_DIR = `${DATA}/.pgi/stage-delta`
export const STARTS_FILE = `${STAGE_DELTA_DIR}/starts.jsonl`
const PROGRESS = `${STAGE_DELTA_DIR}/progress.json`
export const STORE_PROBE_MARK = 'import hashlib, sys, urllib.request'

interface Run {
  state: string
  phase: string
  raw_sha256: string
  disk_total: number
  rate_limit_bps: number
  runs: number
  started: string
  /** Bytes fetched by earlier runs of this version, and when (ms) this one started. */
  base: number
  t0: number
  stopped?: boolean
  /** Stopped by --until rather than by `stop`. */
  window?: boolean
  /** --until, Unix seconds: the run stops itself then (the transfer window's close). */
  until?: number
}

function read(env: GuestEnv): Run | undefined {
  const f = env.disk?.files.get(PROGRESS)
  return f ? (JSON.parse(f.data.toString()) as Run) : undefined
}

function write(env: GuestEnv, r: Run): void {
  env.disk?.files.set(PROGRESS, {data: Buffer.from(JSON.stringify(r)), mtime: env.now()})
}

function fetched(env: GuestEnv, sim: SimStageDelta, r: Run, at = env.now()): number {
  const want = sim.bytes ?? 4 * 2 ** 20
  if (r.stopped || r.state !== 'running') return Math.min(want, r.base)
  const simSeconds = sim.timeScale > 0 ? (at - r.t0) / 1000 / sim.timeScale : Infinity
  return Math.min(want, r.rate_limit_bps ? r.base + Math.floor(r.rate_limit_bps * simSeconds) : want)
}

/** The progress JSON as `pgi-stage-delta status` prints it. */
function statusOf(env: GuestEnv, sim: SimStageDelta): Record<string, unknown> {
  const r = read(env)
  if (!r) return {state: 'none', active: false}
  if (r.state === 'running' && !r.stopped && r.until && env.now() >= r.until * 1000) {
    // stopped at --until with what it had fetched by then
    const base = fetched(env, sim, {...r, t0: r.t0}, r.until * 1000)
    Object.assign(r, {base, stopped: true, window: true})
    write(env, r)
  }
  const want = sim.bytes ?? 4 * 2 ** 20
  const got = fetched(env, sim, r)
  if (r.state === 'running' && !r.stopped && got >= want) {
    Object.assign(r, {state: 'done', phase: 'done', base: got})
    write(env, r)
  }
  const active = r.state === 'running' && !r.stopped
  const out: Record<string, unknown> = {
    state: r.stopped && r.state === 'running' ? 'interrupted' : r.state,
    phase: r.phase,
    active,
    raw_sha256: r.raw_sha256,
    disk_total: r.disk_total,
    disk_done: Math.floor((r.disk_total * got) / want),
    fetched_bytes: got,
    fetched_total: got,
    runs: r.runs,
    started: r.started,
    updated: iso(env.now()),
    rate_limit_bps: r.rate_limit_bps,
  }
  if (r.state === 'done') out.sha256 = r.raw_sha256
  if (r.stopped && r.state === 'running') out.error = r.window ? 'stopped at the end of the transfer window; start again to resume' : 'the run ended before finishing; start again to resume'
  return out
}

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : undefined
}

export function simulatedStageDelta(env: GuestEnv, sim: SimStageDelta, args: string[]): RunResult {
  if (!env.disk || !env.boot.datadisk.ok) return fail('pgi-stage-delta: /srv/pgi is not mounted')
  const verb = args[0]
  if (verb === 'status') return ok(JSON.stringify(statusOf(env, sim)) + '\n')
  if (verb === 'stop') {
    const r = read(env)
    if (r && r.state === 'running' && !r.stopped) write(env, {...r, base: fetched(env, sim, r), stopped: true})
    return ok(JSON.stringify(statusOf(env, sim)) + '\n')
  }
  if (verb !== 'start') return fail(`pgi-stage-delta: the simulated guest knows start, status and stop`, 2)
  const unknown = args.flatMap((a, i) => (sim.refuses?.includes(a) ? [a, ...(args[i + 1] !== undefined && !args[i + 1]!.startsWith('--') ? [args[i + 1]!] : [])] : []))
  if (unknown.length) return fail(`usage: pgi-stage-delta [-h] {start,status,stop} ...\npgi-stage-delta: error: unrecognized arguments: ${unknown.join(' ')}`, 2)
  const raw = option(args, '--raw-sha256') ?? ''
  const size = Number(option(args, '--raw-size'))
  const rate = Number(option(args, '--rate-limit-bps') ?? 0)
  const until = Number(option(args, '--until') ?? 0)
  if (!/^[0-9a-f]{64}$/.test(raw) || !(size > 0) || !(rate >= 0)) return fail('pgi-stage-delta: bad usage', 2)
  const cur = read(env)
  if (cur && cur.state === 'running' && !cur.stopped) return ok(JSON.stringify({...statusOf(env, sim), active: true}) + '\n')
  const starts = env.disk.files.get(STARTS_FILE)?.data.toString() ?? ''
  env.disk.files.set(STARTS_FILE, {data: Buffer.from(starts + JSON.stringify({at: iso(env.now()), args: args.slice(1), rate_limit_bps: rate}) + '\n'), mtime: env.now()})
  const same = cur?.raw_sha256 === raw
  write(env, {state: 'running', phase: 'extract', raw_sha256: raw, disk_total: size, rate_limit_bps: rate, runs: (same ? cur!.runs : 0) + 1, started: iso(env.now()), base: same ? fetched(env, sim, cur!) : 0, t0: env.now(), ...(until ? {until} : {})})
  return ok(JSON.stringify({state: 'started', active: true}) + '\n')
}

/** pgi's store probe (src/fleet/stage-delta.ts STORE_PROBE): the delivery.json's sha256, or exit 3. */
export function simulatedStoreProbe(sim: SimStageDelta, url: string): RunResult {
  const b = sim.fetch(url)
  return b ? ok(`${sha256(b)}\n`) : fail('[Errno 111] Connection refused', 3)
}
