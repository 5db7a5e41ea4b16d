/**
 * How `pgi status` shows a report: a table for people (problems first, colour only on a TTY),
 * the node-exporter textfile format for monitoring, and one line per changed establishment for
 * `--watch` without a terminal. Pure functions of the report (tested in test/unit/status).
 */
import {rename, writeFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import {compareIds} from '../compare.js'
import {formatDecimalBytes} from '../size.js'
import {styleText} from 'node:util'

import Table from 'cli-table3'

import type {DatabaseStatus, EstablishmentStatus, StatusReport, Verdict} from './types.js'
import {VERDICTS} from './types.js'
import {humanDuration, sortStatuses} from './verdict.js'

type Colour = 'green' | 'yellow' | 'red' | 'magenta' | 'gray' | 'cyan'
const VERDICT_COLOUR: Record<Verdict, Colour> = {healthy: 'green', degraded: 'yellow', down: 'red', unknown: 'magenta'}

export interface TableOptions {
  /** Colour the verdicts (only on a TTY, and never when NO_COLOR is set). */
  colour: boolean
  /** Width of the terminal, to shorten long reasons (default: no limit). */
  width?: number
}

/** Should output be coloured: a TTY, NO_COLOR unset, and not TERM=dumb. */
export function useColour(stream: {isTTY?: boolean}, env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(stream.isTTY) && (env.NO_COLOR === undefined || env.NO_COLOR === '') && env.TERM !== 'dumb'
}

function paint(colour: boolean, c: Colour, s: string): string {
  return colour ? styleText(c, s, {validateStream: false}) : s
}

function vmText(e: EstablishmentStatus): string {
  if (e.vm.present === false) return 'absent'
  if (!e.vm.state) return '?'
  const up = e.vm.state === 'running' && e.vm.uptimeS !== null ? ` ${humanDuration(e.vm.uptimeS)}` : ''
  return `${e.vm.state}${up}${e.vm.lock ? ` (locked: ${e.vm.lock})` : ''}`
}

function imageText(e: EstablishmentStatus): string {
  const have = e.image.running ?? e.image.recorded
  if (!have) return e.image.wanted ? `? (wants ${e.image.wanted})` : ''
  if (e.image.wanted && e.image.wanted !== have) return `${have} → ${e.image.wanted}`
  return have
}

function truncate(s: string, max: number | undefined): string {
  return max !== undefined && s.length > max ? `${s.slice(0, Math.max(1, max - 1))}…` : s
}

export const TABLE_HEAD = ['UAI', 'Establishment', 'Status', 'Why', 'VM', 'Image', 'Hypervisor']

/** One row per establishment, problems first. */
export function tableRows(report: StatusReport): string[][] {
  return sortStatuses(report.establishments).map((e) => [
    e.uai,
    e.name,
    e.verdict,
    e.verdict === 'healthy' ? (e.notes[0] ?? '') : e.reason,
    vmText(e),
    imageText(e),
    `${e.hypervisor}/${e.node}`,
  ])
}

/** "5 establishments: 3 healthy, 1 degraded, 1 down (checked in 0.4 s)". */
export function summaryLine(report: StatusReport): string {
  const parts = VERDICTS.filter((v) => report.summary[v] > 0).map((v) => `${report.summary[v]} ${v}`)
  const n = report.summary.total
  return `${n} establishment${n === 1 ? '' : 's'}: ${parts.join(', ') || 'none selected'} (checked in ${(report.durationMs / 1000).toFixed(1)} s)`
}

/** The table as text (cli-table3), verdicts coloured when asked, reasons shortened to fit `width`. */
export function renderTable(report: StatusReport, opts: TableOptions): string {
  const rows = tableRows(report)
  // give "Why" what the other columns leave, so a line never wraps on a terminal
  let whyMax: number | undefined
  if (opts.width) {
    const others = rows.reduce((m, r) => r.map((c, i) => (i === 3 ? 0 : Math.max(m[i] ?? 0, c.length))), TABLE_HEAD.map((h) => h.length))
    whyMax = Math.max(20, opts.width - others.reduce((a, b) => a + b, 0) - 3 * TABLE_HEAD.length - 1)
  }
  const t = new Table({
    head: TABLE_HEAD,
    style: {head: opts.colour ? ['cyan'] : [], border: []},
    chars: {mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': ''},
  })
  for (const r of rows) {
    const verdict = r[2] as Verdict
    t.push([r[0], r[1], paint(opts.colour, VERDICT_COLOUR[verdict], verdict), truncate(r[3], whyMax), r[4], r[5], r[6]])
  }
  return `${t.toString()}\n${summaryLine(report)}`
}

/** Bytes for people: "41.2 MB". */
function humanBytes(n: number): string {
  return formatDecimalBytes(n, {kilo: 'kB', digits: () => 1})
}

/** "pgi  41.9 MB  login ok  last backup 2026-12-04T02:30:12Z (nightly)  modules: account, account_fr, …". */
export function databaseLine(d: DatabaseStatus): string {
  const mods = Object.keys(d.modules).sort()
  return [
    d.name,
    d.sizeBytes === null ? 'size ?' : humanBytes(d.sizeBytes),
    ...(d.company ? [`company "${d.company}"`] : []),
    d.login === null ? undefined : d.login ? 'login ok' : 'login FAILING',
    d.lastBackup ? `last backup ${d.lastBackup.date} (${d.lastBackup.kind})` : d.sizeBytes === null ? undefined : 'no backup yet',
    `modules: ${mods.length > 8 ? `${mods.slice(0, 8).join(', ')}, … (${mods.length})` : mods.join(', ') || 'none'}`,
  ]
    .filter(Boolean)
    .join('  ')
}

/** The details of one establishment that are not in the table (for a single-UAI run: what an AMI reads). */
export function detailLines(e: EstablishmentStatus): string[] {
  const lines: string[] = []
  for (const r of e.reasons.slice(1)) lines.push(`  also: ${r}`)
  for (const n of e.notes) lines.push(`  note: ${n}`)
  const checks = Object.entries(e.checks)
    .filter(([, v]) => v !== null)
    .map(([k, v]) => `${k} ${v ? 'ok' : 'FAILING'}`)
  if (checks.length > 0) lines.push(`  checks: ${checks.join(', ')}`)
  if (e.dataDisk) lines.push(`  data disk: ${Math.round(e.dataDisk.usedRatio * 100)} % used`)
  if (e.backup) lines.push(`  last backup: ${e.backup.ageS === null ? 'none' : `${humanDuration(e.backup.ageS)} ago`}`)
  if (e.offsite?.configured) lines.push(`  last off-site copy: ${e.offsite.ageS === null ? 'none yet' : `${humanDuration(e.offsite.ageS)} ago`}${e.offsite.errorClass ? ` (last push failed: ${e.offsite.errorClass})` : ''}`)
  if (e.drill) lines.push(`  last good restore drill: ${e.drill.ageS === null ? 'none yet' : `${humanDuration(e.drill.ageS)} ago`}${e.drill.lastOk ? '' : ` (last drill FAILED: ${e.drill.lastReason ?? ''})`}`)
  if (e.databases) {
    if (e.databases.length === 0) lines.push('  databases: none')
    else lines.push(`  databases (${e.databases.length}):`)
    for (const d of e.databases) lines.push(`    ${databaseLine(d)}`)
  }
  if (e.rollout) lines.push(`  update ${e.rollout.from} → ${e.rollout.to}: ${e.rollout.state} (step ${e.rollout.step}, ${e.rollout.at})`)
  const hc = e.healthCheck
  if (hc) {
    lines.push(
      hc.via === 'agent-exec'
        ? '  health: pgi-health run now through the guest agent'
        : `  health: the server's record of ${hc.recordedAt ?? '?'}${hc.ageS === null ? '' : `, ${humanDuration(hc.ageS)} old`}${hc.stale ? ' (STALE: not used)' : ''} (/run/pgi/health.json, read through the guest agent)`,
    )
  }
  return lines
}

// ---- Prometheus node-exporter textfile format ----------------------------------------------------

/** Label value escaping of the text exposition format: backslash, double quote, newline. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
  return parts.length > 0 ? `{${parts.join(',')}}` : ''
}

function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

interface Family {
  help: string
  samples: string[]
}

/**
 * The report in the Prometheus text exposition format, as node-exporter's textfile collector reads
 * it (write to a `*.prom` file atomically: to a temp file, then rename). One HELP/TYPE block per
 * metric; every establishment sample has the labels uai, hypervisor and node. Facts pgi could not
 * observe are left out (no sample), never reported as 0.
 */
export function renderPrometheus(report: StatusReport): string {
  const fam = new Map<string, Family>()
  const add = (name: string, help: string, l: Record<string, string>, v: number) => {
    let f = fam.get(name)
    if (!f) fam.set(name, (f = {help, samples: []}))
    f.samples.push(`${name}${labels(l)} ${num(v)}`)
  }
  for (const e of sortStatuses(report.establishments).sort((a, b) => compareIds(a.uai, b.uai))) {
    const l = {uai: e.uai, hypervisor: e.hypervisor, node: e.node}
    add('pgi_up', 'Whether the establishment PGI server is healthy (1) or not (0).', l, e.verdict === 'healthy' ? 1 : 0)
    for (const v of VERDICTS) add('pgi_verdict', 'The status verdict of the establishment (1 for the current verdict).', {...l, verdict: v}, e.verdict === v ? 1 : 0)
    add('pgi_hypervisor_reachable', 'Whether the hypervisor of the establishment answered.', l, e.hypervisorReachable ? 1 : 0)
    if (e.vm.present !== null) add('pgi_vm_present', 'Whether the VM exists on the hypervisor.', l, e.vm.present ? 1 : 0)
    if (e.vm.state !== null) add('pgi_vm_running', 'Whether the VM is running.', l, e.vm.state === 'running' ? 1 : 0)
    if (e.vm.uptimeS !== null && e.vm.state === 'running') add('pgi_vm_uptime_seconds', 'Time since the VM started.', l, e.vm.uptimeS)
    if (e.agent.answering !== null) add('pgi_guest_agent_up', 'Whether the guest agent answered.', l, e.agent.answering ? 1 : 0)
    for (const [check, ok] of Object.entries(e.checks)) {
      if (ok !== null) add('pgi_health_check', 'Result of one pgi-health check in the guest (1 ok, 0 failing).', {...l, check}, ok ? 1 : 0)
    }
    if (e.dataDisk) {
      add('pgi_data_disk_used_ratio', 'Used fraction of the data disk (0..1).', l, Number(e.dataDisk.usedRatio.toFixed(4)))
      if (e.dataDisk.sizeBytes > 0 && e.dataDisk.source !== undefined) {
        add('pgi_data_disk_used_bytes', 'Bytes used on the data disk.', l, e.dataDisk.usedBytes)
        add('pgi_data_disk_size_bytes', 'Size of the data disk in bytes.', l, e.dataDisk.sizeBytes)
      }
    }
    if (e.backup?.ageS !== null && e.backup?.ageS !== undefined) add('pgi_last_backup_age_seconds', 'Age of the last database backup.', l, Math.round(e.backup.ageS))
    if (e.offsite?.ageS !== null && e.offsite?.ageS !== undefined) add('pgi_offsite_backup_age_seconds', 'Age of the last good off-site copy of the backups (pgi-offsite).', l, Math.round(e.offsite.ageS))
    if (e.drill?.ageS !== null && e.drill?.ageS !== undefined) add('pgi_restore_drill_age_seconds', 'Age of the last good restore drill of the off-site copy (pgi backup drill).', l, e.drill.ageS)
    if (e.databases) add('pgi_databases', 'Number of Tryton databases on the server.', l, e.databases.length)
    if (e.image.running ?? e.image.recorded ?? e.image.wanted) {
      add('pgi_image_info', 'Image version running (from the guest, else the VM metadata) and the one the inventory wants.', {
        ...l,
        running: e.image.running ?? e.image.recorded ?? '',
        wanted: e.image.wanted ?? '',
      }, 1)
    }
    if (e.healthCheck?.via === 'health-record' && e.healthCheck.ageS !== null) {
      add('pgi_health_record_age_seconds', 'Age of the health record read from the server (when the token may not run pgi-health).', l, e.healthCheck.ageS)
    }
    if (e.rollout) {
      add('pgi_rollout_pending', 'Whether an update of this establishment is half-way.', l, e.rollout.state === 'pending' ? 1 : 0)
      add('pgi_rollout_failed', 'Whether the last update of this establishment failed.', l, e.rollout.state === 'failed' ? 1 : 0)
    }
  }
  for (const h of report.hypervisors) {
    add('pgi_hypervisor_up', 'Whether the hypervisor answered its API calls.', {hypervisor: h.name}, h.reachable ? 1 : 0)
  }
  add('pgi_status_duration_seconds', 'Wall time of the pgi status run.', {}, report.durationMs / 1000)
  add('pgi_status_timestamp_seconds', 'When the pgi status run started (Unix time).', {}, Math.floor(Date.parse(report.checkedAt) / 1000))
  const out: string[] = []
  for (const [name, f] of fam) {
    out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} gauge`, ...f.samples)
  }
  return out.join('\n') + '\n'
}

// ---- --watch ------------------------------------------------------------------------------------

/** What changed for one establishment between two runs. */
export interface StatusChange {
  uai: string
  name: string
  before: {verdict: string; reason: string} | null
  after: {verdict: string; reason: string} | null
}

/**
 * Establishments whose verdict or main reason changed (or that appeared/disappeared), in the
 * order of `next` (problems first). A change of uptime or disk usage alone is not a change.
 */
export function diffStatuses(prev: StatusReport | undefined, next: StatusReport): StatusChange[] {
  const before = new Map((prev?.establishments ?? []).map((e) => [e.uai, e]))
  const changes: StatusChange[] = []
  for (const e of sortStatuses(next.establishments)) {
    const b = before.get(e.uai)
    before.delete(e.uai)
    if (!b || b.verdict !== e.verdict || b.reason !== e.reason) {
      changes.push({uai: e.uai, name: e.name, before: b ? {verdict: b.verdict, reason: b.reason} : null, after: {verdict: e.verdict, reason: e.reason}})
    }
  }
  for (const b of before.values()) changes.push({uai: b.uai, name: b.name, before: {verdict: b.verdict, reason: b.reason}, after: null})
  return changes
}

/** "2026-11-22T07:01:00Z 0130040Y Lycée Georges Colomb: healthy → degraded (PostgreSQL is not running on the server)". */
export function changeLine(c: StatusChange, at: string): string {
  const stamp = at.replace(/\.\d{3}Z$/, 'Z')
  if (!c.after) return `${stamp} ${c.uai} ${c.name}: no longer selected`
  const from = c.before ? `${c.before.verdict} → ` : ''
  const why = c.after.verdict === 'healthy' ? '' : ` (${c.after.reason})`
  return `${stamp} ${c.uai} ${c.name}: ${from}${c.after.verdict}${why}`
}

/**
 * The prometheus textfile written atomically (a temp file, then rename): node-exporter reads the
 * file at any time and must never see half of it.
 */
export async function writeTextfile(out: string, text: string): Promise<void> {
  const tmp = join(dirname(out), `.${basename(out)}.${process.pid}.tmp`)
  await writeFile(tmp, text, {mode: 0o644})
  await rename(tmp, out)
}

/**
 * A refused call is not a crash: one warning per missing privilege (and where), with the
 * establishments concerned, and what to do; empty when nothing was refused.
 */
export function refusalNotes(report: StatusReport): {warnings: string[]; advice?: string} {
  const seen = new Map<string, string[]>()
  for (const e of report.establishments) {
    for (const err of e.errors) {
      if (err.code !== 'PGI_PVE_PERMISSION') continue
      const key = `${err.privilege ?? '?'} on ${err.path ?? '?'}`
      seen.set(key, [...(seen.get(key) ?? []), e.uai])
    }
  }
  const warnings = [...seen].map(([what, list]) => `this API token lacks ${what} (${list.slice(0, 5).join(', ')}${list.length > 5 ? ', …' : ''}): what needs it was not checked`)
  return seen.size > 0 ? {warnings, advice: 'Ask a Région technician to grant it (see docs/proxmox-role.md), or run pgi status with the Région\'s token.'} : {warnings}
}
