/**
 * Restore drills in `pgi status`: the age of each establishment's last good drill (recorded by
 * `pgi backup drill` in the state folder: src/fleet/drill-record.ts), judged against the
 * inventory's offsite.drill.max_age_days. A server that is otherwise healthy is degraded when its
 * last drill failed (its off-site copy did not become a working server), or its last good drill is
 * older than the threshold; never drilled is only a note (drills sample the fleet a few at a time).
 */
import {readDrillRecord} from '../fleet/drill-record.js'
import type {DrillSettings} from '../inventory/types.js'
import type {EstablishmentStatus, StatusReport} from './types.js'
import {humanDuration, summarize} from './verdict.js'

export async function applyDrills(report: StatusReport, drill: DrillSettings | undefined, env: NodeJS.ProcessEnv, now: Date): Promise<void> {
  for (const e of report.establishments) {
    const r = await readDrillRecord(e.uai, env)
    e.drill = r
      ? {
          lastAt: r.last.at,
          lastOk: r.last.ok,
          lastReason: r.last.reason ?? null,
          lastGoodAt: r.lastGood?.at ?? null,
          ageS: r.lastGood ? Math.max(0, Math.round((now.getTime() - Date.parse(r.lastGood.at)) / 1000)) : null,
        }
      : null
    if (drill) judge(e, drill)
  }
  report.summary = summarize(report.establishments)
}

function judge(e: EstablishmentStatus, d: DrillSettings): void {
  const reasons: string[] = []
  if (!e.drill || e.drill.lastGoodAt === null) {
    if (e.drill && !e.drill.lastOk) reasons.push(`the last restore drill failed: ${e.drill.lastReason ?? 'see pgi backup drill'}`)
    else e.notes.push('no restore drill yet')
  } else if (!e.drill.lastOk) reasons.push(`the last restore drill failed: ${e.drill.lastReason ?? 'see pgi backup drill'}`)
  else if (e.drill.ageS !== null && e.drill.ageS > d.maxAgeS) reasons.push(`the last good restore drill is ${humanDuration(e.drill.ageS)} old`)
  if (reasons.length === 0) return
  e.reasons.push(...reasons)
  if (e.verdict === 'healthy') {
    e.verdict = 'degraded'
    e.reason = reasons[0]!
  }
}
