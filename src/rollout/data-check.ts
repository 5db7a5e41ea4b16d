/**
 * What a rollout compares with the pre-swap backup (the gate after an update, the rollback after
 * it): the backup manifest — the local copy, else read again from the guest and checked against
 * the sha256 its mark recorded — and, per database of the manifest, whether it opens, its row
 * counts, its business figures and the Tryton login the guest's probe reports.
 */
import {createHash} from 'node:crypto'
import {readFile} from 'node:fs/promises'

import {ErrorCode, UserError} from '../errors.js'
import type {RolloutMark} from '../fleet/vm-meta.js'
import type {ProbeResult} from './guest-scripts.js'
import {where, type Run} from './mark.js'

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

export interface ManifestDb {
  name: string
  row_counts?: Record<string, number>
}

export function manifestDbs(text: string | undefined): ManifestDb[] {
  if (!text) return []
  try {
    const m = JSON.parse(text) as {databases?: ManifestDb[]}
    return Array.isArray(m.databases) ? m.databases : []
  } catch {
    return []
  }
}

/**
 * The backup manifest: the local copy, else (resuming on another machine) read again from the
 * guest — the VM must be running — checked against the sha256 the mark recorded, and kept locally.
 */
export async function readManifest(r: Run, mark: RolloutMark): Promise<string | undefined> {
  if (r.manifestLocal) {
    try {
      return await readFile(r.manifestLocal, 'utf8')
    } catch {
      // not on this machine
    }
  }
  if (!mark.backup) return undefined
  const text = await r.api.agentFileRead(r.est.node, r.est.vmid, mark.backup)
  if (mark.backupSha256 && sha256(text) !== mark.backupSha256) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `the backup manifest ${mark.backup} in VM ${r.est.vmid} no longer matches the sha256 recorded in its rollout mark`, {where: where(r)})
  }
  r.manifestLocal = await r.ctx.journal.writeManifest(r.est.uai, text)
  return text
}

/** Databases of the manifest: open, same row counts and business figures, login. Returns the problems (empty = fine). */
export function compareData(manifest: ManifestDb[], probe: ProbeResult, loginChecked: boolean, figuresOnly = false): string[] {
  const problems: string[] = []
  for (const db of manifest) {
    const p = probe.databases.find((d) => d.name === db.name)
    if (!p) problems.push(`database ${db.name} was not checked`)
    else if (!p.opens) problems.push(`database ${db.name} does not open: ${p.error ?? '?'}`)
    else {
      const want = JSON.stringify(Object.entries(db.row_counts ?? {}).sort())
      const have = JSON.stringify(Object.entries(p.row_counts ?? {}).sort())
      // a major upgrade's migration rewrites tables of the key-table list (users, accounts, modules
      // of Tryton's own): only the business figures, which it must leave unchanged, are compared
      if (want !== have && !figuresOnly) problems.push(`database ${db.name}: row counts ${have} differ from the backup's ${want}`)
      if (p.figure_differences?.length) problems.push(`database ${db.name}: business figures differ from the backup's: ${p.figure_differences.join('; ')}`)
      if (loginChecked && p.login === false) problems.push(`database ${db.name}: Tryton login failed (${p.login_error ?? '?'})`)
    }
  }
  return problems
}
