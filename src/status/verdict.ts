/**
 * From observations to one verdict per establishment, with the reasons in plain words an AMI
 * understands. Pure functions only (no I/O, the clock is a parameter): unit-tested in
 * test/unit/status/verdict.test.ts.
 *
 * The verdicts:
 * - down:     the PGI cannot be serving: no VM, VM stopped or paused.
 * - degraded: the VM runs but something in it is wrong (PostgreSQL, Tryton, web client, data disk
 *             full or missing, backups stale, a failed or stalled update, a guest that stopped answering,
 *             a server running another image than the one its VM records).
 * - unknown:  pgi could not tell: hypervisor unreachable, TLS mismatch, token refused or lacking a
 *             privilege, node offline, VM still booting, health check unreadable.
 * - healthy:  the VM runs and pgi-health says every check passed.
 */
import {compareIds} from '../compare.js'
import {ErrorCode} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import type {RolloutMark} from '../fleet/vm-meta.js'
import {formatSeconds, unreachableCause} from './probe-error.js'
import type {DatabaseStatus, EstablishmentStatus, Observation, PgiHealthReport, ProbeError, RolloutMarkState, Verdict, VerdictPolicy} from './types.js'

export const DEFAULT_POLICY: VerdictPolicy = {
  diskFullRatio: 0.9,
  // nightly backups: more than two days without one is a problem
  backupMaxAgeS: 48 * 3600,
  backupGraceS: 36 * 3600,
  agentBootGraceS: 300,
  rolloutStallS: 6 * 3600,
  // the image records its health every 2 minutes: 5 missed runs
  healthRecordMaxAgeS: 600,
}

/** Severity order for sorting: problems first (down, degraded, unknown), healthy last. */
export const VERDICT_RANK: Record<Verdict, number> = {down: 0, degraded: 1, unknown: 2, healthy: 3}

/** "45 s", "12 min", "5 h", "3 days": an age in the unit a person would use. */
export function humanDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  if (s < 90) return `${s} s`
  if (s < 90 * 60) return `${Math.round(s / 60)} min`
  if (s < 48 * 3600) return `${Math.round(s / 3600)} h`
  return `${Math.round(s / 86400)} days`
}

// ---- reading what the guest and the VM metadata say --------------------------------------------

/** Steps after which a rollout is over and fine / over and failed (others: half-way). */
const DONE_STEPS = new Set(['committed', 'done', 'completed', 'finished'])
const FAILED_STEPS = new Set(['failed', 'rolled-back', 'rollback-failed', 'aborted', 'gate-failed'])

export function rolloutState(mark: RolloutMark): RolloutMarkState {
  const step = mark.step
  const state: RolloutMarkState['state'] = DONE_STEPS.has(step) ? 'done' : FAILED_STEPS.has(step) || step.endsWith('-failed') ? 'failed' : 'pending'
  return {
    id: mark.id,
    from: mark.from,
    to: mark.to,
    step,
    at: mark.at,
    ...(mark.runner ? {runner: mark.runner} : {}),
    ...(mark.reason ? {reason: mark.reason} : {}),
    state,
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Parses pgi-health's stdout (the guest contract). Lenient on extra fields, strict on the shape of
 * what the verdict reads: `healthy` must be a boolean and `checks` an object of {ok: boolean}.
 * Returns an error text instead of throwing, so a broken guest becomes a reason, not a crash.
 */
export function parseHealthOutput(stdout: string): {report: PgiHealthReport} | {error: string} {
  const text = stdout.trim()
  if (text === '') return {error: 'pgi-health printed nothing'}
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    // a stray line before the JSON (a warning on stdout) must not hide the report: take the last JSON object line
    const last = text.split('\n').reverse().find((l) => l.trim().startsWith('{'))
    try {
      raw = last ? JSON.parse(last) : undefined
    } catch {
      raw = undefined
    }
    if (raw === undefined) return {error: 'pgi-health did not print JSON'}
  }
  return healthReportFrom(raw)
}

/** pgi-health's JSON (already parsed: from its stdout, or from the server's health record) as a report. */
export function healthReportFrom(raw: unknown): {report: PgiHealthReport} | {error: string} {
  if (!isRecord(raw) || typeof raw.healthy !== 'boolean') return {error: 'pgi-health output has no "healthy" field'}
  const checks: PgiHealthReport['checks'] = {}
  if (isRecord(raw.checks)) {
    for (const [name, c] of Object.entries(raw.checks)) {
      if (isRecord(c) && typeof c.ok === 'boolean') checks[name] = c as {ok: boolean}
    }
  }
  const databases: PgiHealthReport['databases'] = Array.isArray(raw.databases)
    ? raw.databases.filter(isRecord).map((d) => ({
        name: String(d.name ?? ''),
        ...(isRecord(d.modules) ? {modules: Object.fromEntries(Object.entries(d.modules).map(([k, v]) => [k, String(v)]))} : {}),
      }))
    : []
  const problems = Array.isArray(raw.problems) ? raw.problems.map(String) : []
  const image = isRecord(raw.image)
    ? {
        ...(typeof raw.image.name === 'string' ? {name: raw.image.name} : {}),
        ...(typeof raw.image.version === 'string' ? {version: raw.image.version} : {}),
      }
    : undefined
  const o = raw.offsite
  const str = (v: unknown) => (typeof v === 'string' ? v : null)
  const offsite: PgiHealthReport['offsite'] = isRecord(o) && typeof o.configured === 'boolean'
    ? {configured: o.configured, state: str(o.state), last_success_at: str(o.last_success_at), age_s: typeof o.age_s === 'number' && Number.isFinite(o.age_s) ? o.age_s : null, error_class: str(o.error_class), error: str(o.error)}
    : undefined
  return {report: {healthy: raw.healthy, ...(image ? {image} : {}), checks, databases, problems, ...(offsite ? {offsite} : {})}}
}

/**
 * The server's databases: names and module versions from pgi-health, each one's login from its
 * tryton_login check, and — when `pgi-db list` ran — size, company and last backup.
 */
export function databaseStatuses(h: PgiHealthReport, list: Observation['dbList']): DatabaseStatus[] {
  const logins = new Map<string, boolean>()
  const tl = h.checks.tryton_login as {databases?: unknown} | undefined
  if (Array.isArray(tl?.databases)) for (const r of tl.databases) if (isRecord(r) && typeof r.name === 'string' && typeof r.ok === 'boolean') logins.set(r.name, r.ok)
  const byName = new Map((list ?? []).map((d) => [d.name, d]))
  const names = [...new Set([...h.databases.map((d) => d.name), ...(list ?? []).map((d) => d.name)])].sort()
  return names.map((name) => {
    const fromHealth = h.databases.find((d) => d.name === name)
    const l = byName.get(name)
    return {
      name,
      modules: fromHealth?.modules ?? Object.fromEntries((l?.modules ?? []).map((m) => [m, ''])),
      sizeBytes: l ? l.size : null,
      lastBackup: l?.last_backup ? {date: l.last_backup.date, kind: l.last_backup.kind} : null,
      login: logins.get(name) ?? null,
      ...(l && l.company !== undefined ? {company: l.company} : {}),
    }
  })
}

// ---- the verdict -------------------------------------------------------------------------------

export interface Judgement {
  verdict: Verdict
  reasons: string[]
  notes: string[]
}

/** Why a call was refused, naming the privilege PVE asked for. */
export function permissionText(e: ProbeError, what: string): string {
  // PVE names the alternatives of an "any" check with "|": "VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted"
  const privilege = e.privilege?.split('|').join(' or ')
  return privilege ? `${what}: this token lacks the privilege ${privilege}${e.path ? ` on ${e.path}` : ''}` : `${what}: permission denied (${e.message})`
}

/** The age of the server's health record at `now`, when the health came from one. */
export function healthRecordAge(obs: Observation, now: Date, p: VerdictPolicy): {ageS: number; aheadS: number; stale: boolean} | undefined {
  if (obs.healthVia !== 'health-record' || !obs.healthRecordAt) return undefined
  const t = Date.parse(obs.healthRecordAt)
  if (Number.isNaN(t)) return undefined
  const delta = (now.getTime() - t) / 1000
  // a record "from the future" is a clock difference between the server and this machine
  const ageS = Math.max(0, delta)
  return {ageS, aheadS: Math.max(0, -delta), stale: ageS > p.healthRecordMaxAgeS}
}

function hypervisorReason(e: ProbeError): string {
  switch (e.code) {
    case ErrorCode.TLS_MISMATCH:
      return "hypervisor's TLS certificate does not match the pinned fingerprint (not contacted; check with `pgi inventory trust`)"
    case ErrorCode.PVE_AUTH:
      return 'the hypervisor refused the API token (wrong or expired token)'
    case ErrorCode.PVE_PERMISSION:
      return permissionText(e, 'cannot list the VMs')
    case ErrorCode.SECRET_MISSING:
    case ErrorCode.SECRET_DECRYPT:
      return `no API token for this hypervisor: ${e.message}`
    case ErrorCode.UNREACHABLE:
      return `hypervisor not reachable (${unreachableCause(e)})`
    default:
      return `hypervisor did not answer correctly (${e.message})`
  }
}

function dataDiskUsage(obs: Observation): {used: number; size: number} | undefined {
  const d = obs.health?.checks.data_disk
  if (d && typeof d.used_bytes === 'number' && typeof d.size_bytes === 'number' && d.size_bytes > 0) return {used: d.used_bytes, size: d.size_bytes}
  if (d && typeof d.used_pct === 'number') return {used: d.used_pct, size: 100}
  if (obs.fsDataDisk && obs.fsDataDisk.sizeBytes > 0) return {used: obs.fsDataDisk.usedBytes, size: obs.fsDataDisk.sizeBytes}
  return undefined
}

/** Seconds since `iso` at `now`, or undefined when `iso` is not a date. */
function ageS(iso: string | undefined | null, now: Date): number | undefined {
  if (!iso) return undefined
  const t = Date.parse(iso)
  return Number.isNaN(t) ? undefined : Math.max(0, (now.getTime() - t) / 1000)
}

function backupAgeS(h: PgiHealthReport, now: Date): number | undefined {
  const b = h.checks.backup
  if (!b) return undefined
  if (typeof b.age_s === 'number') return b.age_s
  return ageS(b.last, now)
}

function offsiteAgeS(h: PgiHealthReport, now: Date): number | undefined {
  const o = h.offsite
  if (!o) return undefined
  if (typeof o.age_s === 'number') return o.age_s
  return ageS(o.last_success_at, now)
}

/**
 * The off-site copy, judged only when the inventory asks for one (policy.offsiteMaxAgeS): not
 * configured on the server, or its last good copy older than the threshold (with the last
 * failure's class: unreachable, wrong_key, repository_full…), is degraded. A server younger than
 * the first night's grace with no copy yet only gets a note. pgi-health itself never judges it
 * (an unreachable Région must not fail a rollout's gate).
 */
function offsiteReasons(obs: Observation, h: PgiHealthReport, now: Date, p: VerdictPolicy, reasons: string[], notes: string[]): void {
  const o = h.offsite
  if (p.offsiteMaxAgeS === undefined || !o) return
  if (!o.configured) {
    reasons.push('off-site copies are not configured on the server (pgi deploy gives it its settings)')
    return
  }
  const age = offsiteAgeS(h, now)
  const failing = o.error_class ? ` (last push: ${o.error_class})` : ''
  const young = (ageS(obs.deployedAt, now) ?? obs.uptimeS ?? Infinity) < p.backupGraceS + p.offsiteMaxAgeS
  if (age === undefined) {
    if (young) notes.push(`no off-site copy yet${failing}`)
    else reasons.push(`no off-site copy was ever made${failing}`)
  } else if (age > p.offsiteMaxAgeS) reasons.push(`the last off-site copy is ${humanDuration(age)} old${failing}`)
  else if (o.error_class) notes.push(`the last off-site push failed (${o.error_class}); the copy of ${humanDuration(age)} ago is the latest`)
}

/** What the running server's own checks say is wrong (degraded reasons), in a fixed order. */
function healthReasons(obs: Observation, h: PgiHealthReport, now: Date, p: VerdictPolicy): {reasons: string[]; notes: string[]} {
  const reasons: string[] = []
  const notes: string[] = []
  const c = h.checks
  if (c.postgresql && !c.postgresql.ok) reasons.push('PostgreSQL is not running on the server')
  if (c.trytond && !c.trytond.ok) reasons.push('the Tryton server is not answering')
  if (c.web && !c.web.ok) reasons.push('the web client is not served')
  const disk = c.data_disk
  if (disk && disk.mounted === false) reasons.push('the data disk is not mounted')
  const usage = dataDiskUsage(obs)
  if (usage && usage.used / usage.size >= p.diskFullRatio) reasons.push(`the data disk is ${Math.round((usage.used / usage.size) * 100)} % full`)
  else if (disk && !disk.ok && disk.mounted !== false) reasons.push('the data disk has a problem')
  const backup = c.backup
  if (backup) {
    const age = backupAgeS(h, now)
    // a server deployed (or booted for the first time) less than the grace period ago has had no night yet
    const young = (ageS(obs.deployedAt, now) ?? obs.uptimeS ?? Infinity) < p.backupGraceS
    if (age === undefined) {
      if (young) notes.push('no backup yet (the first nightly backup has not run)')
      else reasons.push('no backup of the databases was found')
    } else if (age > p.backupMaxAgeS) reasons.push(`the last backup is ${humanDuration(age)} old`)
    else if (!backup.ok) reasons.push('the last backup failed')
  }
  for (const [name, check] of Object.entries(c)) {
    if (check && !check.ok && !['postgresql', 'trytond', 'web', 'data_disk', 'backup'].includes(name)) reasons.push(`the server's check "${name}" fails`)
  }
  offsiteReasons(obs, h, now, p, reasons, notes)
  if (reasons.length === 0 && !h.healthy) {
    reasons.push(h.problems[0] ? `the server reports: ${h.problems[0]}` : 'the server reports a problem (pgi-health failed)')
  }
  return {reasons, notes}
}

/**
 * The verdict for one establishment. Order matters: what makes the PGI unreachable or absent is
 * decided first; a running VM is then judged on its own checks; an update that failed or stalled
 * degrades an otherwise healthy server.
 */
export function judge(obs: Observation, now: Date, p: VerdictPolicy = DEFAULT_POLICY): Judgement {
  const notes: string[] = []
  const done = (verdict: Verdict, reasons: string[]): Judgement => ({verdict, reasons, notes})

  if (!obs.hypervisorReachable) return done('unknown', [hypervisorReason(obs.hypervisorError ?? {code: ErrorCode.UNREACHABLE, call: 'cluster/resources', message: 'no answer'})])

  if (obs.vmPresent === undefined) {
    const e = obs.vmError
    if (e?.code === ErrorCode.PVE_PERMISSION) return done('unknown', [permissionText(e, 'cannot see the VM')])
    if (e && (e.code === ErrorCode.UNREACHABLE || e.code === ErrorCode.TLS_MISMATCH)) return done('unknown', [hypervisorReason(e)])
    return done('unknown', [`the VM's state could not be read${e ? ` (${e.message})` : ''}`])
  }
  if (!obs.vmPresent) return done('down', [`no VM ${obs.vmid} on ${obs.node} (not deployed yet, or destroyed)`])

  if (obs.vmNode && obs.vmNode !== obs.node) notes.push(`the VM is on node ${obs.vmNode}, the inventory says ${obs.node}`)
  if (obs.lock) notes.push(`the VM is locked (${obs.lock})`)
  if (obs.metaError?.code === ErrorCode.PVE_PERMISSION) notes.push(permissionText(obs.metaError, 'VM metadata not read'))
  const running = obs.health?.image?.version
  const recorded = obs.metaImage ?? obs.tagImage
  if (obs.wantedImage && (running ?? recorded) && (running ?? recorded) !== obs.wantedImage && obs.rollout?.state !== 'pending') {
    notes.push(`runs image ${running ?? recorded}, the inventory wants ${obs.wantedImage}`)
  }
  // the image the VM records (deploy, rollout) and the one its server says it runs must agree: when
  // they differ, what the fleet believes about this server is wrong (an OS disk changed outside
  // pgi, a rollout that recorded one version and booted another). Expected only half-way through
  // an update that is still running.
  const mismatch = running && recorded && running !== recorded ? `the VM metadata says image ${recorded} but the server runs ${running}` : undefined
  if (mismatch && obs.rollout?.state === 'pending') notes.push(mismatch)

  if (obs.template) return done('down', [`VM ${obs.vmid} is a template, not a server`])
  switch (obs.vmState) {
    case 'running':
      break
    case 'stopped':
      return done('down', ['VM is stopped'])
    case 'paused':
    case 'suspended':
      return done('down', [`VM is ${obs.vmState}`])
    case 'unknown':
    case undefined:
      return done('unknown', [`node ${obs.vmNode ?? obs.node} is offline or not answering for its VMs`])
    default:
      return done('unknown', [`VM is in state "${obs.vmState}"`])
  }

  const reasons: string[] = []
  let verdict: Verdict = 'healthy'
  const record = healthRecordAge(obs, now, p)
  if (record && record.aheadS > 60) notes.push(`the server's clock is ${humanDuration(record.aheadS)} ahead of this machine's`)
  if (record?.stale) {
    // the recorder stopped (or the server's clock is wrong): an old result is not today's health
    verdict = 'unknown'
    // the time it was written, not its age: the reason stays the same from one run to the next (--watch)
    const at = `${new Date(Date.parse(obs.healthRecordAt!)).toISOString().slice(0, 16).replace('T', ' ')} UTC`
    reasons.push(`the server's health record is stale: last written ${at} (over ${humanDuration(p.healthRecordMaxAgeS)} ago; its pgi-health timer may have stopped)`)
    if (obs.health) notes.push(`that record said: ${healthReasons(obs, obs.health, now, p).reasons[0] ?? 'all checks passed'}`)
  } else if (obs.health) {
    const hr = healthReasons(obs, obs.health, now, p)
    notes.push(...hr.notes)
    if (hr.reasons.length > 0) {
      verdict = 'degraded'
      reasons.push(...hr.reasons)
    }
  } else {
    const he = obs.healthError
    const ae = obs.agentError
    const re = obs.healthRecordError
    if (he?.code === ErrorCode.PVE_PERMISSION && obs.agentAnswering !== false) {
      // may not run pgi-health, and its record could not be read either
      verdict = 'unknown'
      if (obs.healthRecordMissing) {
        reasons.push(
          (obs.uptimeS ?? Infinity) < p.agentBootGraceS
            ? `VM is starting (up ${humanDuration(obs.uptimeS ?? 0)}; the server has not recorded its health yet)`
            : 'PGI health not known: the server has no health record (/run/pgi/health.json: an image without the pgi-health timer, or the timer is stopped)',
        )
      } else if (re?.code === ErrorCode.PVE_PERMISSION) reasons.push(permissionText(re, 'PGI health not checked'))
      else if (re) reasons.push(`PGI health not known: ${re.code === ErrorCode.GUEST_COMMAND_FAILED ? re.message : `the server's health record could not be read (${re.message})`}`)
      else reasons.push(permissionText(he, 'PGI health not checked'))
      if (obs.agentAnswering) notes.push('the VM runs and its guest agent answers')
    } else if (obs.agentAnswering === false || (!he && ae)) {
      if (ae?.code === ErrorCode.PVE_PERMISSION) {
        verdict = 'unknown'
        reasons.push(permissionText(ae, 'guest agent not asked'))
      } else if ((obs.uptimeS ?? 0) < p.agentBootGraceS) {
        verdict = 'unknown'
        reasons.push(`VM is starting (up ${humanDuration(obs.uptimeS ?? 0)}; guest agent not answering yet)`)
      } else {
        verdict = 'degraded'
        reasons.push('the server does not answer pgi (guest agent not responding): it may be hung')
      }
    } else if (he && (he.code === ErrorCode.UNREACHABLE || he.code === ErrorCode.TLS_MISMATCH || he.code === ErrorCode.PVE_AUTH)) {
      verdict = 'unknown'
      reasons.push(hypervisorReason(he))
    } else if (he?.timeoutMs !== undefined) {
      verdict = 'degraded'
      reasons.push(`the health check did not finish within ${formatSeconds(he.timeoutMs)}`)
    } else if (obs.healthExitCode === 127 || /No such file|not found/i.test(he?.message ?? '')) {
      verdict = 'unknown'
      reasons.push('pgi-health is missing on the server (not a pgi image?)')
    } else {
      verdict = 'unknown'
      reasons.push(`the health check failed to run${he ? ` (${he.message})` : ''}`)
    }
  }

  if (mismatch && obs.rollout?.state !== 'pending') {
    reasons.push(mismatch)
    if (verdict === 'healthy') verdict = 'degraded'
  }

  if (record && !record.stale) notes.push(`health recorded by the server ${humanDuration(record.ageS)} ago`)

  const r = obs.rollout
  if (r && r.state === 'failed') {
    reasons.push(`the update to ${r.to} failed${r.step === 'rolled-back' ? ' and was rolled back' : ` (step ${r.step})`}${r.reason ? `: ${r.reason}` : ''}`)
    if (verdict === 'healthy') verdict = 'degraded'
  } else if (r && r.state === 'pending') {
    const age = ageS(r.at, now)
    if (age !== undefined && age > p.rolloutStallS) {
      reasons.push(`the update to ${r.to} stopped half-way (step ${r.step}, ${humanDuration(age)} ago): resume it with pgi rollout`)
      if (verdict === 'healthy') verdict = 'degraded'
    } else notes.push(`update to ${r.to} in progress (step ${r.step})`)
  }
  return done(verdict, reasons)
}

/** The observation plus its verdict, as `pgi status` reports it. */
export function toEstablishmentStatus(observed: Observation, now: Date, p: VerdictPolicy = DEFAULT_POLICY): EstablishmentStatus {
  const j = judge(observed, now, p)
  const record = healthRecordAge(observed, now, p)
  // a stale record's checks are not today's: shown as unknown, never as facts
  const obs: Observation = record?.stale ? {...observed, health: undefined} : observed
  const h = obs.health
  const checks: Record<string, boolean | null> = {}
  for (const name of ['postgresql', 'trytond', 'web', 'data_disk', 'backup']) checks[name] = h ? (h.checks[name]?.ok ?? null) : null
  if (h) for (const [name, c] of Object.entries(h.checks)) if (c) checks[name] = c.ok
  const usage = dataDiskUsage(obs)
  const disk = h?.checks.data_disk
  const fromHealth = Boolean(disk && ((typeof disk.used_bytes === 'number' && typeof disk.size_bytes === 'number') || typeof disk.used_pct === 'number'))
  const errors = [obs.hypervisorError, obs.vmError, obs.metaError, obs.agentError, obs.healthError, obs.healthRecordError].filter((e): e is ProbeError => e !== undefined)
  return {
    uai: obs.uai,
    name: obs.name,
    hypervisor: obs.hypervisor,
    node: obs.vmNode ?? obs.node,
    vmid: obs.vmid,
    verdict: j.verdict,
    reason: j.reasons[0] ?? 'all checks passed',
    reasons: j.reasons,
    notes: j.notes,
    hypervisorReachable: obs.hypervisorReachable,
    vm: {present: obs.vmPresent ?? null, state: obs.vmState ?? null, uptimeS: obs.uptimeS ?? null, lock: obs.lock ?? null},
    image: {wanted: obs.wantedImage ?? null, recorded: obs.metaImage ?? obs.tagImage ?? null, running: h?.image?.version ?? null},
    agent: {answering: obs.agentAnswering ?? null},
    checks,
    dataDisk: usage
      ? {
          usedBytes: fromHealth && disk?.used_bytes === undefined ? 0 : usage.used,
          sizeBytes: fromHealth && disk?.size_bytes === undefined ? 0 : usage.size,
          usedRatio: usage.used / usage.size,
          source: fromHealth ? 'pgi-health' : 'agent-fsinfo',
        }
      : null,
    backup: h?.checks.backup ? {last: h.checks.backup.last ?? null, ageS: backupAgeS(h, now) ?? null} : null,
    offsite: h?.offsite
      ? {configured: h.offsite.configured, state: h.offsite.state ?? null, lastSuccess: h.offsite.last_success_at ?? null, ageS: offsiteAgeS(h, now) ?? null, errorClass: h.offsite.error_class ?? null}
      : null,
    databases: h ? databaseStatuses(h, obs.dbList) : null,
    rollout: obs.rollout ?? null,
    problems: h?.problems ?? [],
    healthCheck:
      observed.healthVia === 'health-record'
        ? {via: 'health-record', recordedAt: observed.healthRecordAt ?? null, ageS: record ? Math.round(record.ageS) : null, stale: record?.stale ?? false}
        : observed.healthVia === 'agent-exec'
          ? {via: 'agent-exec', recordedAt: null, ageS: null, stale: false}
          : null,
    errors,
  }
}

export function summarize(list: readonly EstablishmentStatus[]): Record<Verdict, number> & {total: number} {
  const s = {healthy: 0, degraded: 0, down: 0, unknown: 0, total: list.length}
  for (const e of list) s[e.verdict]++
  return s
}

/** Problems first (down, degraded, unknown, then healthy), then by hypervisor, then by UAI. */
export function sortStatuses(list: readonly EstablishmentStatus[]): EstablishmentStatus[] {
  return [...list].sort(
    (a, b) => VERDICT_RANK[a.verdict] - VERDICT_RANK[b.verdict] || compareIds(a.hypervisor, b.hypervisor) || compareIds(a.uai, b.uai),
  )
}

/**
 * The exit status of `pgi status` (the README's table): 0 when every selected establishment is
 * healthy; 8 when none could be checked because every one's hypervisor was unreachable or its
 * TLS certificate did not match the pin (as `pgi deploy`); 5 otherwise (at least one degraded,
 * down or unknown, including the establishments of one unreachable hypervisor among others).
 */
export function statusExitCode(list: readonly EstablishmentStatus[]): ExitCodeValue {
  if (list.every((e) => e.verdict === 'healthy')) return ExitCode.OK
  const cutOff = (e: EstablishmentStatus) => !e.hypervisorReachable && e.errors.some((x) => x.code === ErrorCode.UNREACHABLE || x.code === ErrorCode.TLS_MISMATCH)
  return list.every(cutOff) ? ExitCode.UNREACHABLE : ExitCode.UNHEALTHY
}
