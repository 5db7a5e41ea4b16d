/**
 * Each command's result as a ReportSuite (src/report/types.ts): one case per establishment
 * (rollout start/resume, deploy, status) or per inventory problem (inventory validate), with the
 * reason. Only types are imported from the services: this module sits between them and the CLI.
 */
import type {DeployReport} from '../deploy/service.js'
import type {PgiError} from '../errors.js'
import type {ValidationReport} from '../inventory/report.js'
import type {EstablishmentResult, Outcome} from '../rollout/establishment.js'
import type {RolloutResult} from '../rollout/run.js'
import type {RolloutPlanRow} from '../rollout/service.js'
import type {StatusReport, Verdict} from '../status/types.js'
import type {CaseStatus, ReportCase, ReportSuite} from './types.js'

const ROLLOUT_STATUS: Record<Outcome, CaseStatus> = {
  updated: 'passed',
  already: 'passed',
  'rolled-back': 'failed',
  failed: 'failed',
  blocked: 'failed',
  aborted: 'failed',
  // needs a person, or a `pgi rollout resume`: not a verdict on the new version
  'rollback-failed': 'error',
  interrupted: 'error',
  paused: 'skipped',
  deferred: 'skipped',
  'not-started': 'skipped',
}

const where = (e: {hypervisor: string; node: string; vmid: number}) => `${e.hypervisor}/${e.node} VM ${e.vmid}`

function rolloutCase(e: EstablishmentResult): ReportCase {
  const why = e.reason ? `: ${e.reason}` : ''
  return {
    classname: `pgi.rollout.${e.ring}`,
    name: `${e.uai} ${e.name} (${where(e)})`,
    status: ROLLOUT_STATUS[e.outcome],
    kind: e.outcome,
    message: `${e.outcome}${e.step ? ` at step ${e.step}` : ''}${why}`,
    ...(e.manifest ? {detail: `backup manifest: ${e.manifest}`} : {}),
    durationMs: e.durationMs,
    columns: {UAI: e.uai, name: e.name, wave: e.ring, 'from → to': `${e.from ?? '?'} → ${e.to}`, outcome: e.outcome, step: e.step ?? '', why: e.reason ?? ''},
  }
}

export function rolloutSuite(command: string, r: RolloutResult, startedAt: Date, opts: {stopped?: string} = {}): ReportSuite {
  const counts = Object.entries(r.counts).map(([k, v]) => `${v} ${k}`).join(', ')
  const waves = r.waves.map((w) => `${w.ring} ${Object.entries(w.counts).map(([k, v]) => `${v} ${k}`).join('/') || '0'}`).join('; ')
  return {
    name: command,
    summary: `Rollout ${r.id} of ${r.version}: ${r.state}${r.reason ? ` (${r.reason})` : ''}. ${counts || 'no establishment'}.${waves ? ` Waves: ${waves}.` : ''}${opts.stopped ? ` ${opts.stopped}` : ''}`,
    timestamp: startedAt.toISOString(),
    durationMs: r.wallMs,
    exitCode: r.exitCode,
    properties: {rollout: r.id, version: r.version, state: r.state, failures: String(r.failures), threshold: String(r.threshold)},
    cases: r.establishments.map(rolloutCase),
  }
}

export function deploySuite(command: string, r: DeployReport, startedAt: Date, exitCode: number): ReportSuite {
  const cases: ReportCase[] = r.result
    ? r.result.outcomes.map((o) => ({
        classname: `pgi.deploy.${o.hypervisor}`,
        name: `${o.uai} ${o.name} (${where(o)})`,
        status: o.outcome === 'failed' ? (o.error?.code ? 'failed' : 'error') : o.outcome === 'blocked' ? 'failed' : 'passed',
        kind: o.error?.code ?? o.outcome,
        message: `${o.outcome}: ${o.detail}`,
        ...(o.error ? {detail: [`[${o.error.code}] ${o.error.message}`, ...o.error.suggestions].join('\n')} : {}),
        durationMs: o.durationMs,
        columns: {UAI: o.uai, name: o.name, image: o.image, outcome: o.outcome, detail: o.error ? `[${o.error.code}] ${o.detail}` : o.detail},
      }))
    : r.plan.map((p) => ({
        classname: `pgi.deploy.${p.hypervisor}`,
        name: `${p.uai} ${p.name} (${where(p)})`,
        status: p.action === 'blocked' ? 'failed' : 'passed',
        kind: p.blocked?.code ?? p.action,
        message: `plan ${p.action}: ${p.blocked ? p.blocked.message : p.detail}`,
        ...(p.blocked ? {detail: p.blocked.suggestions.join('\n')} : {}),
        columns: {UAI: p.uai, name: p.name, image: p.image, outcome: `plan: ${p.action}`, detail: p.blocked ? `[${p.blocked.code}] ${p.blocked.message}` : p.detail},
      }))
  const counts = r.result ? Object.entries(r.result.counts).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`).join(', ') : `dry run of ${r.plan.length} establishment(s): nothing changed`
  return {
    name: command,
    summary: `Deploy: ${counts || 'no establishment'}.`,
    timestamp: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    exitCode,
    properties: {'dry-run': String(r.dryRun), 'handoff-dir': r.handoffDir},
    cases,
  }
}

const VERDICT_STATUS: Record<Verdict, CaseStatus> = {healthy: 'passed', degraded: 'failed', down: 'failed', unknown: 'error'}

export function statusSuite(command: string, r: StatusReport, exitCode: number): ReportSuite {
  return {
    name: command,
    summary: `Status of ${r.summary.total} establishment(s): ${r.summary.healthy} healthy, ${r.summary.degraded} degraded, ${r.summary.down} down, ${r.summary.unknown} unknown.`,
    timestamp: r.checkedAt,
    durationMs: r.durationMs,
    exitCode,
    properties: {hypervisors: String(r.hypervisors.length), unreachable: String(r.hypervisors.filter((h) => !h.reachable).length)},
    cases: r.establishments.map((e) => ({
      classname: `pgi.status.${e.hypervisor}`,
      name: `${e.uai} ${e.name} (${where(e)})`,
      status: VERDICT_STATUS[e.verdict],
      kind: e.verdict,
      message: `${e.verdict}: ${e.reason}`,
      ...(e.reasons.length > 1 || e.notes.length > 0 ? {detail: [...e.reasons.slice(1), ...e.notes.map((n) => `note: ${n}`)].join('\n')} : {}),
      columns: {UAI: e.uai, name: e.name, verdict: e.verdict, image: e.image.running ?? e.image.recorded ?? '', why: e.reason},
    })),
  }
}

/** One case per problem (errors fail, warnings pass with their text), or one passing case per file when there is none. */
export function validationSuite(command: string, r: ValidationReport, startedAt: Date, exitCode: number): ReportSuite {
  const problems: ReportCase[] = r.problems.map((p) => ({
    classname: `pgi.inventory.${p.file}`,
    name: `${p.file}:${p.line}:${p.column} ${p.rule}`,
    status: p.severity === 'error' ? 'failed' : 'passed',
    kind: p.rule,
    message: `${p.severity === 'warning' ? 'warning: ' : ''}${p.message}`,
    ...(p.suggestion ? {detail: p.suggestion} : {}),
    columns: {place: `${p.file}:${p.line}:${p.column}`, rule: p.rule, severity: p.severity, problem: `${p.message}${p.suggestion ? ` (${p.suggestion})` : ''}`},
  }))
  const clean = r.files.filter((f) => !r.problems.some((p) => p.file === f && p.severity === 'error'))
  const files: ReportCase[] = clean
    .filter((f) => !r.problems.some((p) => p.file === f))
    .map((f) => ({classname: `pgi.inventory.${f}`, name: `${f} is valid`, status: 'passed', kind: 'valid', message: 'no problem found', columns: {place: f, rule: '', severity: '', problem: 'no problem found'}}))
  return {
    name: command,
    summary: `Inventory ${r.path}: ${r.files.length} file(s), ${r.hypervisors} hypervisor(s), ${r.establishments} establishment(s): ${r.valid ? 'valid' : `${r.errors} error(s)`}${r.warnings ? `, ${r.warnings} warning(s)` : ''}.`,
    timestamp: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    exitCode,
    properties: {inventory: r.path, errors: String(r.errors), warnings: String(r.warnings)},
    cases: [...problems, ...files],
  }
}

/** A command that stopped with an error before it had a result (a lock held, an unreadable inventory): one errored case saying why. */
export function errorSuite(command: string, err: PgiError, startedAt: Date): ReportSuite {
  const w = (err.constructor as {formatWhere?: (x: PgiError['where']) => string}).formatWhere?.(err.where) ?? ''
  return {
    name: command,
    summary: `${command} stopped: ${err.message}`,
    timestamp: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    exitCode: err.exitCode,
    properties: {error: err.code},
    cases: [
      {
        classname: 'pgi',
        name: command,
        status: 'error',
        kind: err.code,
        message: `[${err.code}]${w ? ` at ${w}` : ''}: ${err.message}`,
        ...(err.suggestions.length ? {detail: err.suggestions.join('\n')} : {}),
        columns: {command, error: err.code, why: err.message},
      },
    ],
  }
}

const PLAN_STATUS: Record<RolloutPlanRow['action'], CaseStatus> = {update: 'passed', 'up-to-date': 'passed', blocked: 'failed', excluded: 'skipped'}

/** A rollout plan (the merge request's view): one case per establishment, blocked ones failing with their blockers. */
export function planSuite(command: string, r: {version: string; rows: RolloutPlanRow[]}, startedAt: Date, exitCode: number): ReportSuite {
  const n = (a: RolloutPlanRow['action']) => r.rows.filter((x) => x.action === a).length
  return {
    name: command,
    summary: `Plan for ${r.version}: ${n('update')} to update, ${n('up-to-date')} up to date, ${n('blocked')} blocked, ${n('excluded')} not in the waves; ${r.rows.filter((x) => x.action === 'update' && !x.staged).length} not staged yet.`,
    timestamp: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    exitCode,
    properties: {version: r.version},
    cases: r.rows.map((x) => ({
      classname: `pgi.plan.${x.wave}`,
      name: `${x.uai} ${x.name} (${where(x)})`,
      status: PLAN_STATUS[x.action],
      kind: x.action,
      message: `${x.action}: ${x.current ?? '?'} → ${x.target}${x.blockers.length ? `: ${x.blockers.join('; ')}` : ''}`,
      columns: {UAI: x.uai, name: x.name, wave: x.waveIndex ? `${x.waveIndex}. ${x.wave}` : `${x.wave} (not in waves)`, 'current → target': `${x.current ?? '?'} → ${x.target}`, staged: x.staged ? 'yes' : 'no', plan: x.action, blockers: x.blockers.join('; ')},
    })),
  }
}
