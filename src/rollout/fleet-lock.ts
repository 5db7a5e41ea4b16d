/**
 * The rollout lock of a fleet, held on the hypervisors themselves so that every runner sees it —
 * two CI runners on two machines (two state folders) never both roll out: the second waits
 * (`--lock-wait`) or is refused (exit 7). A local file cannot do that.
 *
 * Where: PVE offers compare-and-swap (the config `digest`) on VM configs, and pgi's least-privilege
 * role may write only those; so the lock lives in the `pgi-meta` line of one VM per hypervisor —
 * the anchor: the inventory establishment with the smallest UAI on that hypervisor whose VM pgi
 * deployed (every runner with the same inventory reads the same hypervisors and so picks the same
 * VM). The lock records the rollout id, the owner (host:pid), since when and until when: it is
 * renewed every lease/4 while the rollout runs, released at its end, and a lock whose expiry
 * has passed (a runner killed with SIGKILL) is taken over — at once by `pgi rollout resume` of the
 * same rollout on the machine whose runner died (`deadLocalRunnerOf`). Taking, renewing and releasing are
 * each one `PUT …/config` carrying the digest of the config just read: of two runners racing,
 * exactly one write applies; the other re-reads and sees the lock. Hypervisors are locked in name
 * order and released in reverse, so two runners never hold halves and wait for each other.
 */
import {hostname} from 'node:os'

import {ErrorCode, UserError, asPgiError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {formatDescription, parseDescription, type FleetLock, type VmMeta} from '../fleet/vm-meta.js'
import type {Hypervisors} from '../hypervisors.js'
import type {Establishment, Inventory} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi} from '../proxmox/types.js'
import {sleep} from '../sleep.js'

export const DEFAULT_LEASE_MS = 5 * 60_000

export interface FleetLockOptions {
  inventory: Inventory
  hypervisors: Hypervisors
  /** Hypervisors whose establishments the rollout touches. */
  establishments: readonly Establishment[]
  rollout: string
  owner: string
  io: Io
  /** How long to wait for a lock another runner holds (0: refuse at once). */
  waitMs: number
  leaseMs?: number
  /** Poll interval while waiting. */
  pollMs?: number
  signal?: AbortSignal
  now?: () => Date
}

interface Anchor {
  hypervisor: string
  est: Establishment
  api: PveApi
}

export interface HeldFleetLock {
  /** Where the lock is held (hypervisor → UAI of the anchor VM). */
  anchors: {hypervisor: string; uai: string; vmid: number}[]
  release(): Promise<void>
}

class Held extends Error {
  constructor(
    readonly holder: FleetLock,
    readonly anchor: Anchor,
  ) {
    super('held')
  }
}

/** Takes the lock on every hypervisor of the selection (waiting up to waitMs), then keeps it renewed until release(). */
export async function acquireFleetLock(o: FleetLockOptions): Promise<HeldFleetLock> {
  const now = o.now ?? (() => new Date())
  const lease = o.leaseMs ?? DEFAULT_LEASE_MS
  const names = [...new Set(o.establishments.map((e) => e.hypervisor))].sort()
  const deadline = Date.now() + o.waitMs
  let said = false
  for (;;) {
    const taken: Anchor[] = []
    try {
      for (const hv of names) {
        const anchor = await findAnchor(o, hv)
        if (!anchor) continue // no pgi VM on it yet: nothing a rollout could change there
        await write(anchor, (meta) => {
          const l = meta.fleetLock
          const dead = l && l.owner !== o.owner && deadLocalRunnerOf(l, o.rollout)
          if (l && l.owner !== o.owner && Date.parse(l.expires) > now().getTime() && !dead) throw new Held(l, anchor)
          if (dead) o.io.warn(`the rollout lock on ${hv} (VM ${anchor.est.vmid}) is held for this rollout (${l.rollout}) by ${l.owner}, a runner of this machine that no longer runs: taking it over`)
          else if (l && l.owner !== o.owner) o.io.warn(`the rollout lock on ${hv} (VM ${anchor.est.vmid}) held by ${l.owner} for rollout ${l.rollout} expired at ${l.expires}: taking it over`)
          const t = now()
          return {...meta, fleetLock: {rollout: o.rollout, owner: o.owner, since: t.toISOString(), expires: new Date(t.getTime() + lease).toISOString()}}
        })
        taken.push(anchor)
      }
    } catch (err) {
      await releaseAll(taken, o).catch(() => undefined)
      if (!(err instanceof Held)) throw err
      const {holder, anchor} = err
      const what = `rollout ${holder.rollout} by ${holder.owner} (since ${holder.since}, lock expires ${holder.expires} unless renewed)`
      if (Date.now() >= deadline || o.signal?.aborted) {
        throw new UserError(ErrorCode.LOCKED, `another rollout of this fleet is running: ${what}; its lock is on hypervisor ${anchor.hypervisor} (VM ${anchor.est.vmid} of ${anchor.est.uai})`, {
          exitCode: ExitCode.REFUSED,
          where: {hypervisor: anchor.hypervisor, node: anchor.est.node, vmid: anchor.est.vmid},
          details: {holder},
          suggestions: [
            o.waitMs > 0 ? `It was still held after waiting ${Math.round(o.waitMs / 1000)} s; wait longer with --lock-wait (e.g. 30m).` : 'Wait for it with --lock-wait (e.g. --lock-wait 10m).',
            'A runner killed without a chance to release it leaves the lock until it expires (5 minutes after its last renewal); `pgi rollout resume` of that same rollout on the machine it ran on takes it over at once.',
          ],
        })
      }
      if (!said) o.io.info(`waiting for the rollout lock (held on ${anchor.hypervisor}: ${what}), up to ${Math.round(o.waitMs / 1000)} s`)
      said = true
      await sleep(Math.min(o.pollMs ?? 5000, Math.max(0, deadline - Date.now())), o.signal).catch(() => undefined)
      continue
    }
    o.io.debug(`rollout lock held on ${taken.map((a) => `${a.hypervisor} (VM ${a.est.vmid})`).join(', ') || 'no hypervisor (no pgi VM yet)'}`)
    // renewed well before it expires; a failed renewal is retried at the next tick (a lease is minutes long)
    const timer = setInterval(() => {
      for (const a of taken) {
        void write(a, (meta) => (meta.fleetLock?.owner === o.owner ? {...meta, fleetLock: {...meta.fleetLock, expires: new Date(now().getTime() + lease).toISOString()}} : undefined)).catch((err: unknown) =>
          o.io.warn(`could not renew the rollout lock on ${a.hypervisor}: ${asPgiError(err).message}`),
        )
      }
    }, Math.max(50, Math.floor(lease / 4)))
    timer.unref()
    return {
      anchors: taken.map((a) => ({hypervisor: a.hypervisor, uai: a.est.uai, vmid: a.est.vmid})),
      release: async () => {
        clearInterval(timer)
        await releaseAll(taken, o)
      },
    }
  }
}

/**
 * Whether `l` was left by a runner of this same rollout on this machine whose process has ended
 * (killed with SIGKILL, a lost terminal): `pgi rollout resume` of that rollout then takes the lock
 * over at once instead of waiting out the lease. Only for the same rollout id, the same host name
 * and a process id that no process of this machine has any more (`kill(pid, 0)` fails with
 * ESRCH): a live process, another rollout or another machine keep the lock until it expires.
 */
export function deadLocalRunnerOf(l: FleetLock, rollout: string, host: string = hostname()): boolean {
  if (l.rollout !== rollout) return false
  const m = /^(.*):(\d+)$/.exec(l.owner)
  if (!m || m[1] !== host) return false
  const pid = Number(m[2])
  if (pid === process.pid) return false
  try {
    process.kill(pid, 0)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH'
  }
}

async function findAnchor(o: FleetLockOptions, hv: string): Promise<Anchor | undefined> {
  const api = await o.hypervisors.get(hv)
  const candidates = o.inventory.establishments.filter((e) => e.hypervisor === hv).sort((a, b) => (a.uai < b.uai ? -1 : a.uai > b.uai ? 1 : 0))
  for (const est of candidates) {
    const cfg = await api.vmConfig(est.node, est.vmid)
    if (parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)) return {hypervisor: hv, est, api}
  }
  return undefined
}

/** One compare-and-swap write of the anchor's meta (`change` returns undefined when there is nothing to write). */
async function write(a: Anchor, change: (meta: VmMeta) => VmMeta | undefined): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const cfg = await a.api.vmConfig(a.est.node, a.est.vmid)
    const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
    if (!cfg || !meta) throw new UserError(ErrorCode.REFUSED, `VM ${a.est.vmid} (the rollout lock's place on ${a.hypervisor}) is no longer a pgi VM`, {exitCode: ExitCode.REFUSED, where: {hypervisor: a.hypervisor, vmid: a.est.vmid}})
    const next = change(meta)
    if (!next) return
    try {
      await a.api.updateVmConfig(a.est.node, a.est.vmid, {description: formatDescription(next, a.est.name), digest: cfg.digest})
      return
    } catch (err) {
      const e = asPgiError(err)
      const retry = e.code === ErrorCode.PVE_DIGEST_MISMATCH || e.code === ErrorCode.PVE_LOCKED || e.code === ErrorCode.PVE_SERVER_ERROR
      if (!retry || attempt >= 8) throw err
      await sleep(50 * 2 ** Math.min(attempt, 5))
    }
  }
}

async function releaseAll(taken: Anchor[], o: FleetLockOptions): Promise<void> {
  for (const a of [...taken].reverse()) {
    await write(a, (meta) => {
      if (meta.fleetLock?.owner !== o.owner) return undefined
      const {fleetLock: _, ...rest} = meta
      return rest
    }).catch((err: unknown) => o.io.warn(`could not release the rollout lock on ${a.hypervisor} (it expires by itself): ${asPgiError(err).message}`))
  }
}
