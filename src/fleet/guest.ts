/**
 * Talking to the pgi guest contract through the QEMU guest agent (never SSH): wait for the agent, wait for `pgi-health`, take a backup with `pgi-backup --verify`.
 * Every wait is bounded and says what it saw last when it gives up.
 */
import {ErrorCode, TimeoutError, UserError, type ErrorLocation} from '../errors.js'
import type {ExitCodeValue} from '../exit-codes.js'
import type {Establishment} from '../inventory/types.js'
import type {PveApi} from '../proxmox/types.js'
import {sleep} from '../sleep.js'

export const GUEST_HEALTH = '/usr/local/sbin/pgi-health'
export const GUEST_BACKUP = '/usr/local/sbin/pgi-backup'
/** What pgi-health.timer runs: pgi-health, its result written to /run/pgi/health.json. */
export const GUEST_HEALTH_RECORD_WRITER = '/usr/local/lib/pgi/health-record'

export interface GuestTarget {
  api: PveApi
  node: string
  vmid: number
  uai?: string
}

export interface WaitOpts {
  timeoutMs: number
  /** Delay between attempts (default 3 s). */
  intervalMs?: number
  signal?: AbortSignal
  onProgress?: (text: string) => void
}

/** Where an error about a guest happened: the establishment, its hypervisor, node and VM. */
export function guestWhere(t: GuestTarget): ErrorLocation {
  return {uai: t.uai, hypervisor: t.api.hypervisor, node: t.node, vmid: t.vmid}
}

/** Waits until the guest agent answers a ping. */
export async function waitForAgent(t: GuestTarget, opts: WaitOpts): Promise<number> {
  const start = Date.now()
  let last = 'no answer yet'
  for (;;) {
    try {
      if (await t.api.agentPing(t.node, t.vmid)) return Date.now() - start
    } catch (err) {
      last = err instanceof Error ? err.message : String(err)
    }
    const waited = Date.now() - start
    if (waited >= opts.timeoutMs) {
      throw new TimeoutError(`the guest agent of VM ${t.vmid} did not answer within ${Math.round(opts.timeoutMs / 1000)} s (last: ${last})`, {
        where: guestWhere(t),
        suggestions: ['Look at the VM console: is it still booting (software emulation is slow)? Raise --agent-timeout if so.', 'Check that the image has qemu-guest-agent enabled and the VM has `agent: 1`.'],
      })
    }
    opts.onProgress?.(`waiting for the guest agent (${Math.round(waited / 1000)} s)`)
    await sleep(Math.min(opts.intervalMs ?? 3000, Math.max(0, opts.timeoutMs - waited)), opts.signal)
  }
}

export interface GuestHealth {
  healthy: boolean
  image?: {name?: string; version?: string}
  checks?: Record<string, {ok: boolean; [k: string]: unknown}>
  databases?: {name: string; modules?: Record<string, string>}[]
  problems?: string[]
}

/**
 * Runs pgi-health once; undefined output when it printed no JSON. A slow guest (software
 * emulation, first boot) may take minutes: the call waits up to `timeoutMs` (default 5 min) rather
 * than start a second pgi-health while the first still runs.
 */
export async function guestHealth(t: GuestTarget, timeoutMs = 300_000, waitS = 0): Promise<{exitcode: number; health?: GuestHealth; stderr: string}> {
  // --wait: one pgi-health polls inside the guest and answers as soon as the server is healthy
  // (images before it ignore the option and answer at once)
  const command = waitS > 0 ? [GUEST_HEALTH, '--wait', String(waitS)] : [GUEST_HEALTH]
  const r = await t.api.agentExec(t.node, t.vmid, command, {timeoutMs: timeoutMs + waitS * 1000, idempotent: true})
  let health: GuestHealth | undefined
  try {
    health = JSON.parse(r.stdout) as GuestHealth
  } catch {
    health = undefined
  }
  return {exitcode: r.exitcode, health, stderr: r.stderr}
}

/** Waits until `pgi-health` says healthy (exit 0, healthy: true). */
export async function waitForHealthy(t: GuestTarget, opts: WaitOpts): Promise<GuestHealth> {
  const start = Date.now()
  let last = 'not run yet'
  for (;;) {
    try {
      // a new Python process per poll cost 9–33 s of the guest's CPU under emulation while it was
      // starting: each exec now waits inside the guest, up to a minute (never past the deadline)
      const waitS = Math.max(0, Math.min(60, Math.floor((opts.timeoutMs - (Date.now() - start)) / 1000)))
      const r = await guestHealth(t, Math.max(60_000, opts.timeoutMs - (Date.now() - start)), waitS)
      if (r.exitcode === 0 && r.health?.healthy) return r.health
      last = r.health?.problems?.length ? r.health.problems.join('; ') : `exit ${r.exitcode}${r.stderr ? `: ${r.stderr.trim().split('\n').slice(-1)[0]}` : ''}`
    } catch (err) {
      last = err instanceof Error ? err.message : String(err)
    }
    const waited = Date.now() - start
    if (waited >= opts.timeoutMs) {
      throw new TimeoutError(`VM ${t.vmid} did not become healthy within ${Math.round(opts.timeoutMs / 1000)} s (last: ${last})`, {
        where: guestWhere(t),
        suggestions: ['Run `pgi status` for the details, or raise --health-timeout if the VM is still starting (software emulation is slow).'],
      })
    }
    opts.onProgress?.(`waiting for pgi-health (${Math.round(waited / 1000)} s): ${last}`)
    await sleep(Math.min(opts.intervalMs ?? 5000, Math.max(0, opts.timeoutMs - waited)), opts.signal)
  }
}

/**
 * Has the guest write its health record now (what pgi-health.timer does every 2 minutes), so that
 * readers of /run/pgi/health.json (an AMI's status, the next deploy's plan) see a change made just
 * now, such as a new database. Best effort: false when it could not (the timer will).
 */
export async function refreshHealthRecord(t: GuestTarget, timeoutMs = 300_000): Promise<boolean> {
  try {
    const r = await t.api.agentExec(t.node, t.vmid, [GUEST_HEALTH_RECORD_WRITER], {timeoutMs, idempotent: true})
    return r.exitcode === 0
  } catch {
    return false
  }
}

/** Takes a backup of every database with `pgi-backup`; returns the manifest path in the guest. */
export async function backupGuest(t: GuestTarget, timeoutMs = 3600_000): Promise<string> {
  // may run twice: pgi-backup takes a lock, and a second run only adds one more backup
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_BACKUP], {timeoutMs, idempotent: true})
  const path = r.stdout.trim().split('\n').filter(Boolean).slice(-1)[0] ?? ''
  if (r.exitcode !== 0 || !path.startsWith('/')) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `pgi-backup failed in VM ${t.vmid} (exit ${r.exitcode}): ${lastLine(r.stderr || r.stdout)}`, {
      where: guestWhere(t),
      suggestions: ['Nothing was deleted. Check the data disk and PostgreSQL (pgi status), then retry.'],
    })
  }
  return path
}

/**
 * Verifies a backup in the guest with `pgi-backup --verify <manifest>`: checksums, then a restore
 * of each dump into a scratch database with row counts compared. Returns the per-database results.
 */
export async function verifyGuestBackup(t: GuestTarget, manifestPath: string, timeoutMs = 3600_000): Promise<{name: string; ok: boolean; row_counts?: Record<string, number>}[]> {
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_BACKUP, '--verify', manifestPath], {timeoutMs, idempotent: true})
  let out: {verified?: {name: string; ok: boolean; row_counts?: Record<string, number>}[]} | undefined
  try {
    out = JSON.parse(r.stdout.trim().split('\n').slice(-1)[0] ?? '') as typeof out
  } catch {
    out = undefined
  }
  if (r.exitcode !== 0 || !out?.verified || out.verified.some((v) => !v.ok)) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `the backup ${manifestPath} did not verify in VM ${t.vmid} (exit ${r.exitcode}): ${lastLine(r.stderr || r.stdout)}`, {
      where: guestWhere(t),
      suggestions: ['Nothing was deleted. Look at the guest journal (journalctl -t pgi-backup), fix the cause, then retry.'],
    })
  }
  return out.verified
}

function lastLine(s: string): string {
  return s.trim().split('\n').slice(-3).join(' | ').slice(0, 400) || '(no output)'
}

/**
 * Throws unless the establishment's VM exists and runs (its guest agent is what the caller needs):
 * a missing VM is PGI_UNKNOWN_ESTABLISHMENT, a stopped one PGI_UNHEALTHY saying `why` it must run.
 */
export async function requireRunningVm(api: PveApi, est: Establishment, why: string, exitCode?: ExitCodeValue): Promise<GuestTarget> {
  const where = {uai: est.uai, hypervisor: api.hypervisor, node: est.node, vmid: est.vmid}
  const status = await api.vmStatus(est.node, est.vmid)
  if (!status) {
    throw new UserError(ErrorCode.UNKNOWN_ESTABLISHMENT, `the VM of ${est.uai} (VM ${est.vmid}) does not exist on ${api.hypervisor}/${est.node}`, {
      where,
      suggestions: [`Deploy it first: \`pgi deploy ${est.uai}\`.`],
    })
  }
  if (status.status !== 'running') {
    throw new UserError(ErrorCode.UNHEALTHY, `the VM of ${est.uai} is ${status.status}${why}`, {
      ...(exitCode !== undefined ? {exitCode} : {}),
      where,
      suggestions: ['Start the VM (and wait for it to boot), then run the same command again.'],
    })
  }
  return {api, node: est.node, vmid: est.vmid, uai: est.uai}
}
