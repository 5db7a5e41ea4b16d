/**
 * One establishment's rollout, as a state machine whose state lives on the hypervisor: the VM's
 * config (which disk is virtio0, which are unusedN) and the `rollout` mark in its pgi-meta
 * description. Every mark write is a compare-and-swap on the config digest, and every write
 * first checks that the mark still names this rollout and this runner: two runners can never both
 * drive one VM. Each step is idempotent and re-entrant: after a kill at any point, running the
 * same rollout again (`pgi rollout resume`) reads the mark and the VM and carries on, or rolls
 * back.
 *
 *   claimed → checked → backed-up → stopped → swapped → started → gated → committed
 *                                      └──────── any failure ────────┘→ rolling-back → rolled-back
 *
 * checked:   healthy on the current version, new image staged on the node
 * backed-up: pgi-backup, pgi-backup --verify (restore into a scratch database, row counts), the
 *            manifest copied off the guest into the local journal
 * stopped:   clean shutdown; the old OS disk's volume recorded in the mark (the way back)
 * swapped:   virtio0 detached (PVE keeps it as unusedN), a new virtio0 imported from the staged
 *            image, grown to the inventory size, cloud-init regenerated. virtio1 (the data disk)
 *            is never named in any request.
 * started:   VM started
 * gated:     guest agent, pgi-health healthy on the new version, the data disk upgraded for it,
 *            every database of the manifest opens with the same key-table row counts, a Tryton
 *            login works — within the health timeout
 * committed: new version recorded (tags + description, one CAS write), then the old OS disk
 *            removed (unless --keep-old-disk)
 * Rollback:  old OS disk back as virtio0 (the new one detached and removed), start, restore the
 *            databases from the verified backup if the new OS had upgraded them, health and row
 *            counts checked again, reason recorded in the mark.
 */
import {createHash} from 'node:crypto'

import {TRYTON_ADMIN_LOGIN} from '../fleet/secrets.js'
import {backupGuest, guestHealth, verifyGuestBackup, waitForAgent, waitForHealthy} from '../fleet/guest.js'
import {formatDescription, type RolloutMark, type StagedDisk, type VmMeta} from '../fleet/vm-meta.js'
import {importVolid, parseDisk} from '../fleet/images.js'
import {ErrorCode, UserError, asPgiError} from '../errors.js'
import type {Establishment} from '../inventory/types.js'
import type {PveVmConfig} from '../proxmox/types.js'
import {sleep} from '../sleep.js'
import {majorInGuest, probeGuest, restoreInGuest, waitForBoot, waitForDataDisk, type MajorInfo} from './guest-scripts.js'
import {compareData, manifestDbs, readManifest} from './data-check.js'
import {waitForMigration} from './major.js'
import {inWindow, describeWindow} from './window.js'

import {
  attempt,
  AbortRequested,
  cas,
  checkKilled,
  describe,
  FINAL_STEPS,
  GateFailed,
  Killed,
  owns,
  readVm,
  RunnerConflict,
  STEPS,
  Stop,
  unreachable,
  where,
  writeMark,
  type EstablishmentCtx,
  type EstablishmentResult,
  type ForwardStep,
  type Outcome,
  type Run,
} from './mark.js'

export {FINAL_STEPS, GateFailed, Killed, RunnerConflict, STEPS, type EstablishmentCtx, type EstablishmentResult, type ForwardStep, type Outcome} from './mark.js'

const stepIndex = (s: string | undefined): number => STEPS.indexOf(s as ForwardStep)
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

export async function rolloutEstablishment(est: Establishment, ctx: EstablishmentCtx): Promise<EstablishmentResult> {
  const started = Date.now()
  const api = await ctx.hypervisors.get(est.hypervisor)
  const r: Run = {est, api, t: {api, node: est.node, vmid: est.vmid, uai: est.uai}, ctx, id: ctx.rolloutId, to: ctx.image.version}
  const result = (outcome: Outcome, extra: Partial<EstablishmentResult> = {}): EstablishmentResult => ({
    uai: est.uai,
    name: est.name,
    hypervisor: est.hypervisor,
    node: est.node,
    vmid: est.vmid,
    ring: est.ring,
    from: r.from,
    to: r.to,
    outcome,
    ...(r.manifestLocal ? {manifest: r.manifestLocal} : {}),
    durationMs: Date.now() - started,
    ...extra,
  })

  let mark: RolloutMark | undefined
  try {
    const {meta} = await readVm(r)
    mark = meta.rollout
    r.from = mark && mark.id === r.id ? mark.from : meta.image
    if (!mark || mark.id !== r.id) {
      if (mark && !FINAL_STEPS.has(mark.step)) {
        return result('blocked', {step: mark.step, reason: `rollout ${mark.id} (${mark.from} → ${mark.to}) is mid-way at step ${mark.step}, run by ${mark.runner ?? '?'}: resume or abort it first`})
      }
      if (meta.image === r.to) return result('already', {reason: `already on ${r.to}`})
      if (ctx.window === 'inventory' && !inWindow(est.maintenanceWindow, ctx.now())) {
        return result('deferred', {reason: `outside its maintenance window (${describeWindow(est.maintenanceWindow)})`})
      }
      const c = await ctx.control()
      if (c) return result('not-started', {reason: `rollout ${c === 'pause' ? 'paused' : 'aborted'} before this establishment's turn`})
      await writeMark(r, {step: 'claimed'}, {claim: true})
      mark = (await readVm(r)).meta.rollout
    } else if (FINAL_STEPS.has(mark.step)) {
      const abortedRb = mark.step === 'rolled-back' && (mark.reason ?? '').startsWith('aborted by')
      const outcome: Outcome = mark.step === 'committed' ? 'updated' : abortedRb ? 'aborted' : mark.step === 'rolled-back' ? 'rolled-back' : mark.step === 'rollback-failed' ? 'rollback-failed' : mark.step === 'aborted' ? 'aborted' : 'failed'
      if (mark.step === 'committed' && !mark.cleaned && !ctx.keepOldDisk) {
        if (mark.runner !== ctx.runner) await writeMark(r, {}, {claim: true})
        await cleanupOldDisk(r, mark)
      }
      // a run stopped between the commit and the handoff: written now (nothing when current)
      const handoff = mark.step === 'committed' ? await afterUpdate(r) : undefined
      return result(outcome, {step: mark.step, reason: mark.reason, ...(handoff ? {handoff} : {})})
    } else if (mark.runner !== ctx.runner) {
      if (!ctx.takeover) return result('blocked', {step: mark.step, reason: `held by runner ${mark.runner ?? '?'} at step ${mark.step}: run \`pgi rollout resume\` if that run is gone`})
      ctx.io.info(`${est.uai}: taking over from ${mark.runner ?? '?'} at step ${mark.step}`)
      await writeMark(r, {}, {claim: true})
      mark = (await readVm(r)).meta.rollout
    }
    if (mark?.backup) r.manifestLocal = (await ctx.journal.readEstablishment(est.uai))?.manifest ?? ctx.journal.manifestPath(est.uai)
    if (mark?.step === 'rolling-back') return await rollback(r, mark.reason ?? 'an earlier rollback was interrupted', result)
    return await forward(r, mark!, result)
  } catch (err) {
    const step = r.step ?? mark?.step
    if (err instanceof Killed) return result('interrupted', {step, reason: 'runner stopped'})
    if (err instanceof RunnerConflict) return result('blocked', {step, reason: err.message})
    const e = asPgiError(err)
    return result(unreachable(e) ? 'interrupted' : 'failed', {step, reason: e.message})
  }
}

async function forward(r: Run, start: RolloutMark, result: (o: Outcome, x?: Partial<EstablishmentResult>) => EstablishmentResult): Promise<EstablishmentResult> {
  const {ctx, est, t} = r
  let mark = start
  const update = (s: string) => ctx.update?.(s)
  try {
    for (;;) {
      checkKilled(r)
      const step = mark.step as ForwardStep
      const ctl = await ctx.control()
      if (ctl && stepIndex(step) < stepIndex('backed-up') + 1 && step !== 'committed') {
        // the PGI still runs the old version untouched: stop here
        if (ctl === 'pause') throw new Stop('paused')
        await writeMark(r, {step: 'aborted', reason: 'aborted by `pgi rollout abort` before any change'})
        return result('aborted', {step: 'aborted', reason: 'aborted before any change'})
      }
      if (ctl === 'abort' && stepIndex(step) < stepIndex('gated')) throw new AbortRequested(where(r))
      switch (step) {
        case 'claimed': {
          update('checking health and staging')
          await attempt(r, 'pre-check', () => precheck(r)).catch(async (err) => {
            if (err instanceof Killed || err instanceof RunnerConflict || unreachable(err)) throw err
            await writeMark(r, {step: 'precheck-failed', reason: describe(err)})
            throw new Finished(result('failed', {step: 'precheck-failed', reason: describe(err)}))
          })
          await writeMark(r, {step: 'checked'})
          break
        }
        case 'checked': {
          const major = await attempt(r, 'major check', () => majorOf(r))
          update(major ? `backing up the databases (major upgrade: PostgreSQL ${major.fromPg} → ${major.toPg}, Tryton ${major.fromTryton ?? '?'} → ${major.toTryton ?? '?'})` : 'backing up the databases')
          const b = await attempt(r, 'backup', () => (major ? majorBackup(r, major) : backup(r))).catch(async (err) => {
            if (err instanceof Killed || err instanceof RunnerConflict || unreachable(err)) throw err
            // the PGI keeps its old version: what the major backup stopped serves again
            if (major) await majorInGuest(r.t, {action: 'wake'}).catch((e) => ctx.io.warn(`${est.uai}: trytond and the console could not be started again: ${describe(e)}`))
            await writeMark(r, {step: 'backup-failed', reason: describe(err)})
            throw new Finished(result('failed', {step: 'backup-failed', reason: `backup: ${describe(err)}`}))
          })
          await writeMark(r, {step: 'backed-up', backup: b.path, backupSha256: b.sha256, ...(major ? {major} : {})})
          break
        }
        case 'backed-up': {
          update('shutting down')
          const old = await attempt(r, 'shutdown', () => shutdown(r))
          await writeMark(r, {step: 'stopped', oldDisk: old})
          break
        }
        case 'stopped': {
          update(`swapping the OS disk for ${r.to}`)
          const nd = await attempt(r, 'swap', () => swap(r, mark))
          await writeMark(r, {step: 'swapped', newDisk: nd})
          break
        }
        case 'swapped': {
          update('starting')
          await attempt(r, 'start', async () => {
            const st = await r.api.vmStatus(est.node, est.vmid)
            if (st?.status !== 'running') await r.api.startVm(est.node, est.vmid, {timeoutMs: 600_000})
          })
          await writeMark(r, {step: 'started'})
          break
        }
        case 'started': {
          update('gate: health, databases, login')
          await gate(r, mark)
          await writeMark(r, {step: 'gated'})
          break
        }
        case 'gated': {
          update('recording the new version')
          // the way back closes here: the migration recorded committed in the guest (the old
          // cluster stays, read-only, until `pgi rollout prune`)
          if (mark.major) await attempt(r, 'commit the migration', () => majorInGuest(r.t, {action: 'commit', id: r.id}))
          await attempt(r, 'commit', () => writeMark(r, {step: 'committed', reason: undefined}, {image: ctx.image}))
          mark = (await readVm(r)).meta.rollout!
          if (!ctx.keepOldDisk) await attempt(r, 'cleanup', () => cleanupOldDisk(r, mark)).catch((err) => ctx.io.warn(`${est.uai}: updated, but the old OS disk was not removed: ${describe(err)}`))
          const handoff = await afterUpdate(r)
          return result('updated', {step: 'committed', ...(handoff ? {handoff} : {})})
        }
        default:
          throw new UserError(ErrorCode.INTERNAL, `unknown rollout step "${step}" on VM ${est.vmid}`)
      }
      mark = (await readVm(r)).meta.rollout!
      if (!owns(r, mark)) throw new RunnerConflict(`another runner took VM ${est.vmid} over`, where(r))
    }
  } catch (err) {
    if (err instanceof Finished) return err.result
    // stopped by a signal: whatever the interrupted wait threw, nothing failed — the mark says
    // where the VM stands and `pgi rollout resume` carries on from there (no rollback started now,
    // no failure recorded: a CI job has seconds before it is killed)
    if (r.ctx.signal?.aborted) throw new Killed()
    if (err instanceof Stop) return result('paused', {step: mark.step, reason: 'paused before the VM was stopped'})
    if (err instanceof Killed || err instanceof RunnerConflict) throw err
    if (stepIndex(mark.step) < stepIndex('backed-up') + 1 && !(mark.step === 'backed-up' && (await vmStopped(r)))) {
      // nothing was changed yet: the PGI runs its old version
      if (unreachable(err)) throw err
      const reason = describe(err)
      await writeMark(r, {step: 'precheck-failed', reason}).catch(() => undefined)
      return result('failed', {step: mark.step, reason})
    }
    if (unreachable(err)) throw err
    const reason = err instanceof AbortRequested ? err.message : err instanceof GateFailed ? `gate: ${err.message}` : `${mark.step}: ${describe(err)}`
    ctx.io.warn(`${est.uai}: rolling back to ${r.from}: ${reason}`)
    void t
    const rb = await rollback(r, reason, result)
    return err instanceof AbortRequested && rb.outcome === 'rolled-back' ? {...rb, outcome: 'aborted'} : rb
  }
}

class Finished extends Error {
  constructor(readonly result: EstablishmentResult) {
    super('finished')
  }
}

async function vmStopped(r: Run): Promise<boolean> {
  try {
    return (await r.api.vmStatus(r.est.node, r.est.vmid))?.status !== 'running'
  } catch {
    return true
  }
}

async function precheck(r: Run): Promise<void> {
  const {api, est, ctx} = r
  const hv = ctx.hypervisors.definition(est.hypervisor)
  const volid = importVolid(hv, ctx.image)
  // staged by delta (a verified disk on the VM) needs nothing on the import storage
  const {cfg, meta} = await readVm(r)
  const staged = stagedDiskFor(r, cfg, meta.staged) ? undefined : (await api.storageContent(est.node, hv.storage.import, 'import')).find((c) => c.volid === volid)
  if (!stagedDiskFor(r, cfg, meta.staged) && (!staged || staged.size !== ctx.image.size)) {
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `image ${r.to} is not staged on ${est.node} (${volid}${staged ? `: ${staged.size} bytes, expected ${ctx.image.size}` : ' missing'})`, {
      where: where(r),
      suggestions: [`Run \`pgi rollout stage ${r.to}\` first.`],
    })
  }
  const st = await api.vmStatus(est.node, est.vmid)
  if (st?.status !== 'running') throw new UserError(ErrorCode.UNHEALTHY, `VM ${est.vmid} is not running: not updating an establishment that was not healthy`, {where: where(r)})
  const h = await guestHealth(r.t)
  if (h.exitcode !== 0 || !h.health?.healthy) {
    throw new UserError(ErrorCode.UNHEALTHY, `not healthy on ${r.from} before the update: ${h.health?.problems?.join('; ') || `pgi-health exit ${h.exitcode}`}`, {where: where(r), suggestions: ['Fix it first (pgi status), then run the rollout again.']})
  }
  if (h.health.image?.version && h.health.image.version !== r.from) {
    throw new UserError(ErrorCode.REFUSED, `the guest runs ${h.health.image.version} but its VM records ${r.from}`, {where: where(r), suggestions: ['Run `pgi status` and `pgi deploy` to reconcile before a rollout.']})
  }
}

async function backup(r: Run): Promise<{path: string; sha256: string}> {
  const path = await backupGuest(r.t)
  await verifyGuestBackup(r.t, path)
  const text = await r.api.agentFileRead(r.est.node, r.est.vmid, path)
  JSON.parse(text) // a manifest that is not JSON is no backup
  r.manifestLocal = await r.ctx.journal.writeManifest(r.est.uai, text)
  return {path, sha256: sha256(text)}
}

async function shutdown(r: Run): Promise<string> {
  const {api, est} = r
  const st = await api.vmStatus(est.node, est.vmid)
  if (st?.status === 'running') await api.shutdownVm(est.node, est.vmid, {timeoutMs: 900_000})
  const {cfg} = await readVm(r)
  const os = parseDisk(cfg.virtio0)
  if (!os?.volid) throw new UserError(ErrorCode.REFUSED, `VM ${est.vmid} has no OS disk on virtio0`, {where: where(r)})
  return os.volid
}

function unusedKeyOf(cfg: PveVmConfig, volid: string): string | undefined {
  return Object.keys(cfg).find((k) => /^unused\d+$/.test(k) && String(cfg[k]).split(',')[0] === volid)
}

async function swap(r: Run, mark: RolloutMark): Promise<string> {
  const {api, est, ctx} = r
  const hv = ctx.hypervisors.definition(est.hypervisor)
  const old = mark.oldDisk!
  // 1. detach the old OS disk: PVE keeps it as unusedN (the way back)
  let cfg = await cas(r, (c) => (parseDisk(c.virtio0)?.volid === old ? {delete: 'virtio0'} : undefined))
  cfg = (await readVm(r)).cfg
  if (!unusedKeyOf(cfg, old) && parseDisk(cfg.virtio0)?.volid !== old) {
    throw new UserError(ErrorCode.REFUSED, `the previous OS disk ${old} is no longer in VM ${est.vmid}'s config: not going on without a way back`, {where: where(r)})
  }
  // 2. a new OS disk: the disk staged by delta when one is verified for this version (detached
  // from its staging slot, PVE keeps it as unusedN, then attached as virtio0), else imported from
  // the image staged on the node
  const {meta} = await readVm(r)
  const staged = stagedDiskFor(r, cfg, meta.staged)
  if (staged) {
    ctx.io.info(`${est.uai}: switching to the OS disk staged by delta (${staged.volume})`)
    await cas(r, (c) => (parseDisk(c[staged.key] as string | undefined)?.volid === staged.volume ? {delete: staged.key} : undefined))
    await cas(r, (c) => (c.virtio0 === undefined ? {virtio0: staged.volume} : undefined))
  } else await cas(r, (c) => (c.virtio0 === undefined ? {virtio0: `${hv.storage.os}:0,import-from=${importVolid(hv, ctx.image)}`} : undefined))
  cfg = (await readVm(r)).cfg
  const nd = parseDisk(cfg.virtio0)
  if (!nd || nd.volid === old) throw new UserError(ErrorCode.PVE_HTTP, `VM ${est.vmid} has no new OS disk after the import`, {where: where(r)})
  if (nd.size !== undefined && nd.size < est.osDiskGb * 2 ** 30) await api.resizeDisk(est.node, est.vmid, 'virtio0', `${est.osDiskGb}G`)
  await cas(r, (c) => (String(c.boot ?? '').includes('virtio0') ? undefined : {boot: 'order=virtio0'}))
  // a VM deployed by an older pgi may lack it: PVE's cloud-init would then upgrade every package
  // of the new OS disk at its first boot (ciupgrade defaults to 1)
  await cas(r, (c) => (String(c.ciupgrade ?? '1') === '0' ? undefined : {ciupgrade: 0}))
  await api.regenerateCloudinit(est.node, est.vmid)
  // the staged disk is the OS disk now: no longer a staging (the rollout mark's newDisk names it)
  if (meta.staged) await cas(r, (c, m) => (m.staged ? {description: formatDescription(withoutStaged(m), est.name)} : undefined))
  return nd.volid
}

function withoutStaged(m: VmMeta): VmMeta {
  const {staged: _s, ...rest} = m
  return rest
}

/**
 * The disk `pgi rollout stage --transfer delta` assembled for this rollout's version, when the VM
 * records it verified (its sha256 the signed one, the same raw disk as the local image's) and
 * still holds it — attached on its staging slot, or already detached as unusedN by an interrupted
 * swap. Undefined otherwise: the swap imports the image staged on the node.
 */
function stagedDiskFor(r: Run, cfg: PveVmConfig, s: StagedDisk | undefined): StagedDisk | undefined {
  if (!s || s.state !== 'verified' || s.version !== r.to || s.name !== r.ctx.image.name) return undefined
  if (r.ctx.image.rawSha256 && s.rawSha256 !== r.ctx.image.rawSha256) return undefined
  const held = Object.keys(cfg).some((k) => (/^virtio\d+$/.test(k) || /^unused\d+$/.test(k)) && k !== 'virtio0' && String(cfg[k]).split(',')[0] === s.volume)
  return held || parseDisk(cfg.virtio0)?.volid === s.volume ? s : undefined
}

async function gate(r: Run, mark: RolloutMark): Promise<void> {
  const {ctx} = r
  const opts = {intervalMs: ctx.pollIntervalMs, signal: ctx.signal, onProgress: ctx.update}
  if (mark.major) {
    try {
      // a VM stopped mid-migration (a hard stop, a host crash) is started again: the guest
      // resumes the migration at boot (the unfinished database carried across again)
      if ((await r.api.vmStatus(r.est.node, r.est.vmid))?.status !== 'running') {
        ctx.io.warn(`${r.est.uai}: VM ${r.est.vmid} was stopped during the migration: starting it, the guest resumes the migration`)
        await r.api.startVm(r.est.node, r.est.vmid, {timeoutMs: 600_000})
      }
      await waitForAgent(r.t, {...opts, timeoutMs: ctx.agentTimeoutMs})
    } catch (err) {
      if (ctx.signal?.aborted) throw err
      throw new GateFailed(describe(err), where(r))
    }
    await waitForMigration(r, manifestDbs(await readManifest(r, mark)).length)
  }
  const deadline = Date.now() + ctx.healthTimeoutMs
  try {
    await waitForAgent(r.t, {...opts, timeoutMs: ctx.agentTimeoutMs})
    const h = await waitForHealthy(r.t, {...opts, timeoutMs: Math.max(1000, deadline - Date.now())})
    if (h.image?.version !== r.to) throw new GateFailed(`pgi-health reports version ${h.image?.version ?? '?'}, expected ${r.to}`, where(r))
  } catch (err) {
    if (err instanceof GateFailed || ctx.signal?.aborted) throw err
    throw new GateFailed(describe(err), where(r))
  }
  const secret = await ctx.trytonAdmin(r.est.uai)
  const manifest = manifestDbs(await readManifest(r, mark))
  for (;;) {
    let problems: string[]
    try {
      const probe = await probeGuest(r.t, mark.backup ?? '', secret ? {login: TRYTON_ADMIN_LOGIN, password: secret.reveal()} : undefined)
      problems = []
      if (probe.state.image?.version && probe.state.image.version !== r.to) problems.push(`the databases were not upgraded to ${r.to} (data disk says ${probe.state.image.version})`)
      if (probe.upgrade.ok === false) problems.push(`database upgrade failed: ${probe.upgrade.error ?? '?'}`)
      problems.push(...compareData(manifest, probe, secret !== undefined, mark.major !== undefined))
    } catch (err) {
      problems = [describe(err)]
    }
    if (problems.length === 0) {
      if (!secret && manifest.length > 0) ctx.io.warn(`${r.est.uai}: Tryton login not checked (no tryton-admin secret in the store)`)
      return
    }
    if (Date.now() >= deadline) throw new GateFailed(problems.join('; '), where(r))
    ctx.update?.(`gate: ${problems[0]}`)
    await sleep(ctx.pollIntervalMs)
  }
}

/**
 * After the commit: the Tryton series the VM runs now recorded and, when it changed (a major
 * upgrade), the AMI's new handoff naming the new desktop client (its path). The update is done
 * whatever happens here: a failure is a warning that says how to write the handoff by hand.
 */
async function afterUpdate(r: Run): Promise<string | undefined> {
  const {ctx, est} = r
  if (!ctx.credentials) return undefined
  try {
    const o = await ctx.credentials.refreshAfterUpdate(r.api, est)
    if (o.handoff) ctx.io.info(`${est.uai}: runs Tryton ${o.series} now: new handoff for the AMI ${o.handoff}`)
    return o.handoff
  } catch (err) {
    ctx.io.warn(`${est.uai}: updated, but the AMI's handoff could not be refreshed: ${describe(err)}; run \`pgi credentials handoff ${est.uai}\``)
    return undefined
  }
}

/**
 * A major upgrade when the guest's PostgreSQL major version (asked over the agent) differs from
 * the target image's, or the Tryton series does (the image manifests' packages): the databases
 * then have to be carried across at the new OS's first boot. Undefined for a minor update.
 */
async function majorOf(r: Run): Promise<NonNullable<RolloutMark['major']> | undefined> {
  const to = r.ctx.image.stack
  if (!to?.postgresql) return undefined
  const info = await majorInGuest<MajorInfo>(r.t, {action: 'info'})
  if (info.pg === to.postgresql) return undefined
  if (Number(info.pg) > Number(to.postgresql)) {
    throw new UserError(ErrorCode.REFUSED, `the establishment runs PostgreSQL ${info.pg}, the image ${r.to} PostgreSQL ${to.postgresql}: a rollout never moves a cluster to an older major version`, {
      where: where(r),
      suggestions: ['Roll out an image of the same line or newer.'],
    })
  }
  return {fromPg: info.pg, toPg: to.postgresql, ...(to.tryton ? {toTryton: to.tryton} : {})}
}

/**
 * The pre-swap backup of a major upgrade: trytond and the console stopped first (nothing written
 * after the backup: the databases are carried across from it), then pgi-backup and its verified
 * restore as for any rollout, then the request the new OS reads at its first boot, after the guest
 * checked that the data disk has room for the new cluster beside the old one.
 */
async function majorBackup(r: Run, major: NonNullable<RolloutMark['major']>): Promise<{path: string; sha256: string}> {
  await majorInGuest(r.t, {action: 'quiesce'})
  const b = await backup(r)
  await majorInGuest(r.t, {action: 'request', id: r.id, manifest: b.path, to_pg: major.toPg, from_version: r.from, to_version: r.to})
  return b
}

async function cleanupOldDisk(r: Run, mark: RolloutMark): Promise<void> {
  if (mark.oldDisk) await cas(r, (c) => {
    const k = unusedKeyOf(c, mark.oldDisk!)
    return k && parseDisk(c.virtio0)?.volid !== mark.oldDisk ? {delete: k} : undefined
  })
  await writeMark(r, {cleaned: true})
}

/** Back to the previous OS disk, data restored if it had been upgraded, healthy again. */
async function rollback(r: Run, reason: string, result: (o: Outcome, x?: Partial<EstablishmentResult>) => EstablishmentResult): Promise<EstablishmentResult> {
  const {api, est, ctx} = r
  const tries = Math.max(ctx.stepAttempts, 5)
  const retry = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    for (let i = 1; ; i++) {
      checkKilled(r)
      try {
        return await fn()
      } catch (err) {
        if (ctx.signal?.aborted) throw new Killed()
        if (err instanceof RunnerConflict || err instanceof Killed || i >= tries) throw err
        ctx.io.debug(`${est.uai}: rollback ${what} failed (attempt ${i}): ${describe(err)}`)
        await sleep(Math.min(5000, ctx.pollIntervalMs * 2 ** i))
      }
    }
  }
  try {
    await retry('mark', () => writeMark(r, {step: 'rolling-back', reason}))
    const mark = (await readVm(r)).meta.rollout!
    const old = mark.oldDisk
    const {cfg} = await readVm(r)
    if (old && parseDisk(cfg.virtio0)?.volid !== old) {
      await retry('stop', async () => {
        const st = await api.vmStatus(est.node, est.vmid)
        if (st?.status === 'running') await api.shutdownVm(est.node, est.vmid, {forceStopAfterS: ctx.shutdownTimeoutS})
      })
      await retry('detach the new OS disk', () => cas(r, (c) => (c.virtio0 !== undefined && parseDisk(c.virtio0)?.volid !== old ? {delete: 'virtio0'} : undefined)))
      await retry('re-attach the old OS disk', () => cas(r, (c) => (c.virtio0 === undefined ? {virtio0: old} : undefined)))
      await retry('boot order', () => cas(r, (c) => (String(c.boot ?? '').includes('virtio0') ? undefined : {boot: 'order=virtio0'})))
      await retry('cloud-init', () => api.regenerateCloudinit(est.node, est.vmid))
    }
    await retry('start', async () => {
      const st = await api.vmStatus(est.node, est.vmid)
      if (st?.status !== 'running') await api.startVm(est.node, est.vmid, {timeoutMs: 600_000})
    })
    const opts = {intervalMs: ctx.pollIntervalMs, signal: ctx.signal, onProgress: ctx.update}
    await retry('guest agent', () => waitForAgent(r.t, {...opts, timeoutMs: ctx.agentTimeoutMs}))
    if (mark.major) {
      // the old OS on the data disk the new one left: its cluster writable again (the new OS
      // made it read-only and never wrote it), the data disk's record back to the old version.
      // Done as soon as the data disk is mounted, not after the boot settles: the old OS cannot
      // start PostgreSQL on a read-only cluster, and what waits on it keeps the boot "starting"
      await waitForDataDisk(r.t, ctx.agentTimeoutMs, ctx.pollIntervalMs)
      const o = await retry('reopen the old cluster', () => majorInGuest<{reopened: string[]}>(r.t, {action: 'reopen', version: r.from ?? ''}))
      ctx.io.info(`${est.uai}: back on PostgreSQL ${mark.major.fromPg}${o.reopened.length ? ` (cluster ${o.reopened.join(', ')} writable again)` : ''}`)
    }
    // the data check must see the boot done (PostgreSQL up, the boot-time upgrade run or refused),
    // not a boot half-way (databases that do not open yet would look damaged)
    ctx.io.debug(`${est.uai}: boot after rollback: ${await waitForBoot(r.t, ctx.healthTimeoutMs)}`)
    const manifest = manifestDbs(await retry('manifest', () => readManifest(r, mark)))
    let restored: string[] = []
    if (mark.backup) {
      const probe = await retry('data check', () => probeGuest(r.t, mark.backup!))
      const dataVersion = probe.state.image?.version
      if ((dataVersion && r.from && dataVersion !== r.from) || compareData(manifest, probe, false).length > 0) {
        ctx.io.warn(`${est.uai}: the databases had been upgraded to ${dataVersion ?? '?'}: restoring them from the backup ${mark.backup}`)
        restored = await retry('restore', () => restoreInGuest(r.t, mark.backup!, r.from ?? ''))
      }
    }
    const h = await retry('health', () => waitForHealthy(r.t, {...opts, timeoutMs: ctx.healthTimeoutMs}))
    if (r.from && h.image?.version && h.image.version !== r.from) throw new UserError(ErrorCode.UNHEALTHY, `after rollback the guest reports ${h.image.version}, expected ${r.from}`, {where: where(r)})
    if (mark.backup) {
      const probe = await retry('data check', () => probeGuest(r.t, mark.backup!))
      const problems = compareData(manifest, probe, false)
      if (problems.length > 0) throw new UserError(ErrorCode.UNHEALTHY, `after rollback: ${problems.join('; ')}`, {where: where(r)})
    }
    if (mark.newDisk && mark.newDisk !== old) {
      await retry('remove the failed OS disk', () => cas(r, (c) => {
        const k = unusedKeyOf(c, mark.newDisk!)
        return k ? {delete: k} : undefined
      })).catch((err) => ctx.io.warn(`${est.uai}: the failed OS disk ${mark.newDisk} was left attached as unused: ${describe(err)}`))
    }
    const why = `${reason}${restored.length ? `; databases restored from ${mark.backup}: ${restored.join(', ')}` : ''}`
    await retry('mark', () => writeMark(r, {step: 'rolled-back', reason: why}))
    return result('rolled-back', {step: 'rolled-back', reason: why})
  } catch (err) {
    // a signal mid-rollback leaves the mark at rolling-back: resume finishes the rollback
    if (err instanceof Killed || ctx.signal?.aborted) throw new Killed()
    if (err instanceof RunnerConflict) throw err
    if (unreachable(err)) return result('interrupted', {step: 'rolling-back', reason: `${reason}; rollback interrupted: ${describe(err)}`})
    const why = `${reason}; ROLLBACK FAILED: ${describe(err)}`
    await writeMark(r, {step: 'rollback-failed', reason: why}).catch(() => undefined)
    return result('rollback-failed', {step: 'rollback-failed', reason: why})
  }
}
