/**
 * The record of restore drills (`pgi backup drill`, docs/backups.md), kept in the Région's state
 * folder on this machine (`<state dir>/drills/<UAI>.json`): the last drill and the last good one
 * of each establishment. The drill writes it; `pgi status` reads it (the age of the last good
 * drill, `pgi_restore_drill_age_seconds`).
 */
import {mkdir, readFile, rename, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {stateDir} from '../paths.js'

/** One drill of one establishment. */
export interface DrillOutcome {
  uai: string
  /** When the drill ended. */
  at: string
  /** The snapshot restored (short id), when it was taken; null when none could be chosen. */
  snapshot: string | null
  snapshotTime: string | null
  /** The databases restored, with their checks. */
  databases: {name: string; rowCountsMatch: boolean; login: boolean | null}[]
  ok: boolean
  /** Why it failed (the check, or the step, that did not pass). */
  reason?: string
  /** Where the scratch VM was, and whether it was removed. */
  scratch: {hypervisor: string; node: string; vmid: number | null; removed: boolean; removeError?: string}
  seconds: number
}

export interface DrillRecord {
  v: 1
  uai: string
  last: DrillOutcome
  /** The last drill that passed (absent: none yet). */
  lastGood?: DrillOutcome
}

export function drillDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(stateDir(env), 'drills')
}

/** The record of `uai`, undefined when it never had a drill (or the file cannot be read). */
export async function readDrillRecord(uai: string, env: NodeJS.ProcessEnv = process.env): Promise<DrillRecord | undefined> {
  try {
    const r = JSON.parse(await readFile(join(drillDir(env), `${uai}.json`), 'utf8')) as DrillRecord
    return r && r.v === 1 && r.uai === uai && r.last ? r : undefined
  } catch {
    return undefined
  }
}

/** Records a drill's outcome (atomically: written beside, then renamed). */
export async function writeDrillOutcome(o: DrillOutcome, env: NodeJS.ProcessEnv = process.env): Promise<DrillRecord> {
  const before = await readDrillRecord(o.uai, env)
  const lastGood = o.ok ? o : before?.lastGood
  const record: DrillRecord = {v: 1, uai: o.uai, last: o, ...(lastGood ? {lastGood} : {})}
  const dir = drillDir(env)
  await mkdir(dir, {recursive: true})
  const file = join(dir, `${o.uai}.json`)
  await writeFile(`${file}.tmp`, JSON.stringify(record, null, 2) + '\n', {mode: 0o600})
  await rename(`${file}.tmp`, file)
  return record
}
