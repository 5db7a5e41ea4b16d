/**
 * What the last `pgi rollout stage` of this machine decided for each establishment (delta or
 * full, and why full), kept in the state folder per inventory: `pgi rollout status` shows it
 * beside what the VMs record (a delta staging lives on its VM; a full transfer leaves nothing on
 * the VM to read back, and the reason of a fallback nowhere else).
 */
import {createHash} from 'node:crypto'
import {mkdir, readFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {stateDir} from '../paths.js'
import {writeFileAtomic} from '../secrets/atomic.js'

export interface StageRecordEntry {
  version: string
  transfer: 'delta' | 'full'
  outcome: string
  fallback?: string
  detail?: string
  /** The cap the transfer was given and the run's total cap, bytes/s (--bwlimit, --total-bwlimit). */
  capBps?: number
  totalBps?: number
  /** The run's transfer window (`pgi rollout status` says when a paused staging continues). */
  window?: {spec: string; timezone: string}
  at: string
}

export type StageRecord = Record<string, StageRecordEntry>

function recordFile(inventoryPath: string, env: NodeJS.ProcessEnv): string {
  const h = createHash('sha256').update(inventoryPath).digest('hex').slice(0, 16)
  return join(stateDir(env), 'staging', `${h}.json`)
}

export async function readStageRecord(inventoryPath: string, env: NodeJS.ProcessEnv): Promise<StageRecord> {
  try {
    const v = JSON.parse(await readFile(recordFile(inventoryPath, env), 'utf8')) as unknown
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as StageRecord) : {}
  } catch {
    return {}
  }
}

/** Merges this run's entries into the record (the establishments it did not select keep theirs). */
export async function writeStageRecord(inventoryPath: string, env: NodeJS.ProcessEnv, entries: StageRecord): Promise<void> {
  const file = recordFile(inventoryPath, env)
  const cur = await readStageRecord(inventoryPath, env)
  await mkdir(dirname(file), {recursive: true})
  await writeFileAtomic(file, JSON.stringify({...cur, ...entries}, null, 2) + '\n')
}
