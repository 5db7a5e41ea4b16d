/**
 * `pgi destroy UAI`: remove an establishment's VM and its disks — the data disk included — which
 * is why it refuses unless asked twice (`--destroy-data` and a typed confirmation), and why it
 * first takes a final backup of every database, verifies it in the guest (restore + row counts),
 * copies it off the VM and checks every file's checksum locally. Only then: stop, delete (purge).
 */
import {writeFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import {backupGuest, verifyGuestBackup, waitForAgent, type GuestTarget} from '../fleet/guest.js'
import {copyFromGuest} from '../fleet/guest-copy.js'
import {parseDescription} from '../fleet/vm-meta.js'
import {ErrorCode, SafetyRefusal, UserError} from '../errors.js'
import type {Hypervisors} from '../hypervisors.js'
import type {Establishment} from '../inventory/types.js'
import type {Io} from '../io.js'

export interface DestroyOptions {
  hypervisors: Hypervisors
  io: Io
  /** The explicit `--destroy-data` flag. */
  destroyData: boolean
  /** Asked after the checks, before anything changes (typed UAI, or --yes); throws to refuse. */
  confirm: (question: string, expected: string) => Promise<void>
  /** Local folder of final backups; the backup goes to `<backupDir>/<UAI>/<stamp>/`. */
  backupDir: string
  agentTimeoutMs?: number
  update?: (text: string) => void
}

export interface DestroyResult {
  uai: string
  hypervisor: string
  node: string
  vmid: number
  destroyed: boolean
  detail: string
  backup?: {dir: string; files: {file: string; bytes: number; sha256: string}[]; databases: {name: string; rowCounts?: Record<string, number>}[]}
}

interface Manifest {
  roles?: {file: string; sha256: string}
  databases: {name: string; file: string; sha256: string; size?: number; row_counts?: Record<string, number>}[]
}

export async function destroyEstablishment(est: Establishment, opts: DestroyOptions): Promise<DestroyResult> {
  const where = {uai: est.uai, hypervisor: est.hypervisor, node: est.node, vmid: est.vmid}
  const base = {uai: est.uai, hypervisor: est.hypervisor, node: est.node, vmid: est.vmid}
  if (!opts.destroyData) {
    throw new SafetyRefusal(`destroying ${est.uai} deletes its data disk and every database on it: refused without --destroy-data`, {
      where,
      suggestions: [`If you really mean it: pgi destroy ${est.uai} --destroy-data (a final backup is taken and copied here first).`],
    })
  }
  const update = opts.update ?? (() => undefined)
  const api = await opts.hypervisors.get(est.hypervisor)
  const cfg = await api.vmConfig(est.node, est.vmid)
  if (!cfg) return {...base, destroyed: false, detail: `no VM ${est.vmid} on ${est.hypervisor}/${est.node}: nothing to destroy`}
  const meta = parseDescription(typeof cfg.description === 'string' ? cfg.description : undefined)
  if (!meta || meta.uai !== est.uai) {
    throw new SafetyRefusal(`VM ${est.vmid} on ${est.hypervisor}/${est.node} was not created by pgi for ${est.uai}${meta ? ` (it belongs to ${meta.uai})` : ''}: refused`, {
      where,
      suggestions: ['pgi only destroys VMs it created. Check `vmid:` in the inventory.'],
    })
  }
  await opts.confirm(`This deletes VM ${est.vmid} (${cfg.name ?? ''}) of ${est.name} on ${est.hypervisor}/${est.node}, with its data disk and every database. A final backup is taken and copied here first.`, est.uai)

  const t: GuestTarget = {api, node: est.node, vmid: est.vmid, uai: est.uai}
  const status = await api.vmStatus(est.node, est.vmid)
  if (status?.status !== 'running') {
    update('starting the VM for its final backup')
    await api.startVm(est.node, est.vmid)
  }
  update('waiting for the guest agent')
  await waitForAgent(t, {timeoutMs: opts.agentTimeoutMs ?? 600_000, onProgress: update})

  update('taking the final backup (pgi-backup)')
  const manifestPath = await backupGuest(t)
  update('verifying the backup in the guest (restore + row counts)')
  const verified = await verifyGuestBackup(t, manifestPath)

  const stamp = basename(dirname(manifestPath))
  const dir = join(opts.backupDir, est.uai, stamp || new Date().toISOString().replace(/[:.]/g, ''))
  const manifestText = await api.agentFileRead(est.node, est.vmid, manifestPath)
  let manifest: Manifest
  try {
    manifest = JSON.parse(manifestText) as Manifest
    if (!Array.isArray(manifest.databases)) throw new Error('no "databases" list')
  } catch (err) {
    throw new UserError(ErrorCode.BACKUP_FAILED, `the backup manifest ${manifestPath} cannot be read: ${(err as Error).message}`, {where, suggestions: ['Nothing was deleted.']})
  }
  const guestDir = dirname(manifestPath)
  const files: {file: string; bytes: number; sha256: string}[] = []
  const wanted = [...(manifest.roles ? [{file: manifest.roles.file, sha256: manifest.roles.sha256}] : []), ...manifest.databases.map((d) => ({file: d.file, sha256: d.sha256}))]
  for (const f of wanted) {
    if (basename(f.file) !== f.file) throw new UserError(ErrorCode.BACKUP_FAILED, `unexpected file name in the backup manifest: ${f.file}`, {where})
    const r = await copyFromGuest(t, `${guestDir}/${f.file}`, join(dir, f.file), {expectSha256: f.sha256, onProgress: update})
    files.push({file: f.file, ...r})
  }
  await writeFile(join(dir, 'manifest.json'), manifestText, {mode: 0o600})
  opts.io.info(`${est.uai}: final backup verified and copied`, {dir, files: files.length})

  update('stopping the VM')
  await api.stopVm(est.node, est.vmid)
  update('deleting the VM and its disks')
  await api.deleteVm(est.node, est.vmid, {purge: true, destroyUnreferencedDisks: true})
  return {
    ...base,
    destroyed: true,
    detail: `VM ${est.vmid} deleted; final backup of ${manifest.databases.length} database(s) in ${dir}`,
    backup: {dir, files, databases: verified.map((v) => ({name: v.name, rowCounts: v.row_counts}))},
  }
}
