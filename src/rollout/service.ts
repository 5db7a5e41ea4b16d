/**
 * The use cases behind `pgi rollout plan|stage|start|resume|status|pause|abort`: open the fleet
 * (src/fleet/open.ts: inventory, selection, secret store, hypervisors), then call the engine
 * (src/rollout/run.ts, establishment.ts). Deploy's pieces are reused: Stager (staging, checksum
 * verified by PVE on arrival), importVolid, the verified image description (resolveDeployImage).
 */
import {createHash, randomBytes} from 'node:crypto'
import {setMaxListeners} from 'node:events'
import {join} from 'node:path'

import {storeCredentials, type ConnectionSource} from '../fleet/credentials.js'
import {acquireLock} from '../fleet/locks.js'
import {importVolid, type DeployImage} from '../fleet/images.js'
import {describeProgress, stagingState, type DeltaTarget} from '../fleet/stage-delta.js'
import {runParallel} from '../progress.js'
import {readStageRecord} from './stage-record.js'
import {ErrorCode, UsageError, UserError, asPgiError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {parseDescription, type RolloutMark, type VmMeta} from '../fleet/vm-meta.js'
import {settleAll} from '../fleet/pool.js'
import {withFleet, type FleetRequest, type FleetSession} from '../fleet/open.js'
import {establishmentSecretKey} from '../fleet/secrets.js'
import {DEFAULT_IMAGE, type ImageRef} from '../image/images.js'
import type {Establishment, Inventory} from '../inventory/types.js'
import {journalDir, stateDir} from '../paths.js'
import {sleep} from '../sleep.js'
import {FINAL_STEPS, type EstablishmentResult} from './establishment.js'
import {majorInGuest, type MajorInfo} from './guest-scripts.js'
import {describeMigration, migrationPlan, type MigrationPlan} from './major.js'

export {stageRollout, stagingOf, type StagePacing, type StageRequest, type StageRow, type StagingStatus} from './stage.js'
import {stagingOf, type StagingStatus} from './stage.js'
export {describeMigration, migrationPlan, pruneOldClusters, type MigrationPlan, type PruneRequest, type PruneRow} from './major.js'
import {RolloutJournal, listRollouts, type RolloutRecord} from './journal.js'
import {RUNNER, parseMaxFailures, runRollout, type RolloutResult} from './run.js'
import {acquireFleetLock, type HeldFleetLock} from './fleet-lock.js'
import {describeWindow, inWindow} from './window.js'

export type {FleetRequest} from '../fleet/open.js'

function wavesFor(inventory: Inventory, waves: string[] | undefined): string[] {
  if (!waves || waves.length === 0) return inventory.rings
  const unknown = waves.filter((w) => !inventory.rings.includes(w))
  if (unknown.length > 0) throw new UsageError(`--waves names unknown ring(s): ${unknown.join(', ')}`, {suggestions: [`The inventory's rings: ${inventory.rings.join(', ')}.`]})
  return waves
}

// ---- plan ------------------------------------------------------------------------------------

export interface RolloutPlanRow {
  uai: string
  name: string
  hypervisor: string
  node: string
  vmid: number
  current?: string
  target: string
  wave: string
  /** 1-based position of the wave, 0 when the ring is not among --waves. */
  waveIndex: number
  window: string
  inWindowNow: boolean
  staged: boolean
  action: 'update' | 'up-to-date' | 'blocked' | 'excluded'
  blockers: string[]
  /** A major upgrade (PostgreSQL major version change): what it carries across and the space it needs. */
  migration?: MigrationPlan
  rollout?: {id: string; step: string; runner?: string; reason?: string}
}

export interface PlanRequest extends FleetRequest {
  /** The image to roll out (parsed at the command line). */
  image: ImageRef
  resolveImage: (ref: ImageRef) => Promise<DeployImage>
  waves?: string[]
  window?: 'now' | 'inventory'
}

export async function planRollout(req: PlanRequest): Promise<{version: string; image?: DeployImage; rows: RolloutPlanRow[]}> {
  return withFleet(req, async (fleet) => {
    const version = req.image.version
    const waves = wavesFor(fleet.inventory, req.waves)
    let image: DeployImage | undefined
    let imageProblem: string | undefined
    try {
      image = await req.resolveImage(req.image)
    } catch (err) {
      imageProblem = `image ${req.image.name} ${version}: ${asPgiError(err).message}`
    }
    const staged = new Map<string, Promise<Set<string> | string>>()
    const stagedOn = (e: Establishment) => {
      const key = `${e.hypervisor}/${e.node}`
      if (!staged.has(key)) {
        const hv = fleet.hypervisors.definition(e.hypervisor)
        staged.set(
          key,
          fleet.hypervisors
            .get(e.hypervisor)
            .then((api) => api.storageContent(e.node, hv.storage.import, 'import'))
            .then((list) => new Set(list.filter((c) => !image || c.size === image.size).map((c) => c.volid)))
            .catch((err) => asPgiError(err).message),
        )
      }
      return staged.get(key)!
    }
    const now = new Date()
    const rows = await Promise.all(
      fleet.establishments.map(async (e): Promise<RolloutPlanRow> => {
        const waveIndex = waves.indexOf(e.ring) + 1
        const row: RolloutPlanRow = {
          uai: e.uai,
          name: e.name,
          hypervisor: e.hypervisor,
          node: e.node,
          vmid: e.vmid,
          target: version,
          wave: e.ring,
          waveIndex,
          window: describeWindow(e.maintenanceWindow),
          inWindowNow: inWindow(e.maintenanceWindow, now),
          staged: false,
          action: 'update',
          blockers: [],
        }
        if (imageProblem) row.blockers.push(imageProblem)
        try {
          const api = await fleet.hypervisors.get(e.hypervisor)
          const cfg = await api.vmConfig(e.node, e.vmid)
          const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
          if (!cfg) row.blockers.push(`VM ${e.vmid} does not exist: deploy it first`)
          else if (!meta) row.blockers.push(`VM ${e.vmid} was not deployed by pgi`)
          else {
            row.current = meta.image
            const m = meta.rollout
            if (m) row.rollout = {id: m.id, step: m.step, ...(m.runner ? {runner: m.runner} : {}), ...(m.reason ? {reason: m.reason} : {})}
            if (m && !FINAL_STEPS.has(m.step)) row.blockers.push(`rollout ${m.id} (${m.from} → ${m.to}) is mid-way at step ${m.step}: resume or abort it`)
            if (cfg.lock) row.blockers.push(`VM is locked (${cfg.lock})`)
          }
          if (image?.stack?.postgresql && cfg && meta && row.current !== version) {
            // a major upgrade? the guest says which PostgreSQL it runs and how much room its data disk has
            const st = await api.vmStatus(e.node, e.vmid)
            if (st?.status !== 'running') row.blockers.push(`VM ${e.vmid} is not running: cannot check whether this is a major upgrade (PostgreSQL ${image.stack.postgresql})`)
            else {
              const info = await majorInGuest<MajorInfo>({api, node: e.node, vmid: e.vmid, uai: e.uai}, {action: 'info'}, 120_000)
              if (info.pg !== image.stack.postgresql) {
                row.migration = migrationPlan(info, image.stack.postgresql)
                if (Number(info.pg) > Number(image.stack.postgresql)) row.blockers.push(`runs PostgreSQL ${info.pg}, newer than the image's ${image.stack.postgresql}`)
                else if (row.migration.freeBytes < row.migration.needBytes) {
                  row.blockers.push(`data disk too small for the major upgrade: ${describeMigration(row.migration)}; grow the data disk by ${Math.ceil((row.migration.needBytes - row.migration.freeBytes) / 2 ** 30)} GiB at least`)
                }
              }
            }
          }
          // staged by delta: a disk verified for this version recorded on the VM needs no import
          const byDelta = meta?.staged?.state === 'verified' && meta.staged.version === version && (!image?.rawSha256 || meta.staged.rawSha256 === image.rawSha256)
          const s = image && !byDelta ? await stagedOn(e) : undefined
          if (byDelta) row.staged = true
          else if (typeof s === 'string') row.blockers.push(`import storage: ${s}`)
          else if (s && image) row.staged = s.has(importVolid(fleet.hypervisors.definition(e.hypervisor), image))
        } catch (err) {
          row.blockers.push(asPgiError(err).message)
        }
        if (row.current === version && row.blockers.length === 0) row.action = 'up-to-date'
        else if (waveIndex === 0) row.action = 'excluded'
        else if (row.blockers.length > 0) row.action = 'blocked'
        if (req.window === 'inventory' && !row.inWindowNow && row.action === 'update') row.blockers.push('outside its maintenance window now (it would wait for it)')
        return row
      }),
    )
    rows.sort((a, b) => (a.waveIndex || 99) - (b.waveIndex || 99))
    return {version, image, rows}
  })
}

// ---- start / resume --------------------------------------------------------------------------

export interface StartRequest extends FleetRequest {
  /** The image to roll out (parsed at the command line). */
  image: ImageRef
  resolveImage: (ref: ImageRef) => Promise<DeployImage>
  waves?: string[]
  maxParallel?: number
  maxPerHypervisor?: number
  maxFailures?: string
  window?: 'now' | 'inventory'
  keepOldDisk?: boolean
  agentTimeoutMs?: number
  healthTimeoutMs?: number
  /** A major upgrade's migration in the guest (default: migrationTimeoutFor, from the number of databases). */
  migrationTimeoutMs?: number
  pollIntervalMs?: number
  shutdownTimeoutMs?: number
  confirm: (question: string) => Promise<void>
  signal?: AbortSignal
  onStep?: (uai: string, step: string) => void | Promise<void>
  onResult?: (r: EstablishmentResult) => void
  /** Runner name written in the marks (default host:pid). */
  runner?: string
  /** How long to wait for the rollout lock another runner holds (default 0: refuse at once, exit 7). */
  lockWaitMs?: number
  /** Lease of the fleet lock on the hypervisors (default 5 minutes; tests shorten it). */
  lockLeaseMs?: number
  /**
   * Where the AMIs' new handoffs go when an update changes what they say (a major upgrade: the new
   * Tryton desktop client). Default: where deploy wrote each one, else <state dir>/handoffs.
   */
  handoffDir?: string
  /** How the AMI reaches each VM when it is not the inventory address (a lab's forwarded ports). */
  connection?: ConnectionSource
}

function lockFile(inventory: Inventory, env: NodeJS.ProcessEnv): string {
  const h = createHash('sha256').update(inventory.path).digest('hex').slice(0, 16)
  return join(stateDir(env), 'locks', `rollout-${h}.lock`)
}

function newId(now: Date): string {
  return `${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(3).toString('hex')}`
}

/** This machine's lock file, waited for up to `waitMs` (another pgi here may be finishing). */
async function acquireLocalLock(file: string, what: string, waitMs: number, signal?: AbortSignal): Promise<() => Promise<void>> {
  const deadline = Date.now() + waitMs
  for (;;) {
    try {
      return await acquireLock(file, what)
    } catch (err) {
      if (asPgiError(err).code !== ErrorCode.LOCKED || Date.now() >= deadline || signal?.aborted) throw err
      await sleep(Math.min(2000, Math.max(0, deadline - Date.now())), signal).catch(() => undefined)
    }
  }
}

async function execute(fleet: FleetSession, record: RolloutRecord, journal: RolloutJournal, image: DeployImage, req: StartRequest, takeover: boolean, establishments: Establishment[], announce?: string): Promise<RolloutResult> {
  const waitMs = req.lockWaitMs ?? 0
  const release = await acquireLocalLock(lockFile(fleet.inventory, fleet.env), `rollout ${record.id} of ${fleet.inventory.path}`, waitMs, req.signal)
  // every bounded wait of every establishment in flight listens on the stop signal (each removes
  // its listener when done): more than Node's default 10 at once is expected, not a leak
  if (req.signal) setMaxListeners(0, req.signal)
  let fleetLock: HeldFleetLock | undefined
  try {
    // the lock every runner sees, on the hypervisors: a runner on another machine waits or is refused
    fleetLock = await acquireFleetLock({
      inventory: fleet.inventory,
      hypervisors: fleet.hypervisors,
      establishments,
      rollout: record.id,
      owner: req.runner ?? RUNNER,
      io: req.io,
      waitMs,
      leaseMs: req.lockLeaseMs,
      signal: req.signal,
    })
    await journal.writeRecord(record)
    // said once the lock is held and the journal exists (a refused rollout names no journal)
    if (announce) req.io.info(announce)
    return await runRollout({
      record,
      journal,
      establishments,
      onResult: req.onResult,
      ctx: {
        hypervisors: fleet.hypervisors,
        io: req.io,
        image,
        takeover,
        window: record.window,
        keepOldDisk: record.keepOldDisk,
        agentTimeoutMs: req.agentTimeoutMs ?? 600_000,
        healthTimeoutMs: req.healthTimeoutMs ?? 1_200_000,
        ...(req.migrationTimeoutMs ? {migrationTimeoutMs: req.migrationTimeoutMs} : {}),
        pollIntervalMs: req.pollIntervalMs ?? 5000,
        // PVE takes the shutdown's timeout in seconds (the mark keeps what was sent)
        shutdownTimeoutS: Math.ceil((req.shutdownTimeoutMs ?? 180_000) / 1000),
        stepAttempts: 3,
        trytonAdmin: (uai) => fleet.secrets.tryGet(establishmentSecretKey(uai, 'tryton-admin')),
        credentials: storeCredentials({
          store: fleet.secrets,
          handoffDir: req.handoffDir ?? join(stateDir(fleet.env), 'handoffs'),
          explicitDir: req.handoffDir !== undefined,
          recordDir: join(journalDir(fleet.env), 'handoffs'),
          io: req.io,
          connection: req.connection,
        }),
        signal: req.signal,
        now: () => new Date(),
        onStep: req.onStep,
        runner: req.runner ?? RUNNER,
      },
    })
  } finally {
    await fleetLock?.release()
    await release()
  }
}

export async function startRollout(req: StartRequest): Promise<RolloutResult> {
  return withFleet(req, async (fleet) => {
    const version = req.image.version
    const waves = wavesFor(fleet.inventory, req.waves)
    const image = await req.resolveImage(req.image)
    const inWaves = fleet.establishments.filter((e) => waves.includes(e.ring))
    if (inWaves.length === 0) throw new UsageError(`no selected establishment is in the waves ${waves.join(', ')}`)
    const maxFailures = req.maxFailures ?? '0'
    parseMaxFailures(maxFailures, inWaves.length)
    await req.confirm(`Roll out ${version} to ${inWaves.length} establishment(s) in waves ${waves.join(' → ')} (${req.maxParallel ?? 10} at once, halt after more than ${maxFailures} failure(s))? Each one is backed up, stopped, updated and gated; failures roll back.`)
    const now = new Date()
    const id = newId(now)
    const journal = new RolloutJournal(journalDir(fleet.env), id)
    const record: RolloutRecord = {
      id,
      version,
      ...(req.image.name !== DEFAULT_IMAGE ? {imageName: req.image.name} : {}),
      uais: inWaves.map((e) => e.uai),
      waves,
      maxParallel: req.maxParallel ?? 10,
      maxPerHypervisor: req.maxPerHypervisor ?? 4,
      maxFailures,
      window: req.window ?? 'now',
      keepOldDisk: req.keepOldDisk ?? false,
      inventoryPath: fleet.inventory.path,
      runner: req.runner ?? RUNNER,
      startedAt: now.toISOString(),
      updatedAt: now.toISOString(),
      state: 'running',
    }
    return execute(fleet, record, journal, image, req, false, inWaves, `rollout ${id}: ${req.image.name} ${version} to ${inWaves.length} establishment(s); journal ${journal.dir}`)
  })
}

export interface ResumeRequest extends Omit<StartRequest, 'image' | 'confirm'> {
  /** Rollout id (default: the newest unfinished one in the local journal, else the marks found on the VMs). */
  id?: string
  /** Nothing unfinished is not an error: an empty result, exit 0 (a CI job that resumes before it starts). */
  ifUnfinished?: boolean
}

/** What `resume --if-unfinished` returns when there is nothing to resume. */
function nothingToResume(): RolloutResult {
  return {id: '', version: '', state: 'done', reason: 'nothing to resume', waves: [], establishments: [], counts: {}, failures: 0, threshold: 0, exitCode: ExitCode.OK, wallMs: 0}
}

/**
 * Continues a rollout: from the local journal when this machine has it (every establishment of
 * the rollout, with its options), otherwise from the marks on the VMs of the selection (the
 * establishments it touched; their target version is in the mark).
 */
export async function resumeRollout(req: ResumeRequest): Promise<RolloutResult> {
  return withFleet(req, async (fleet) => {
    const root = journalDir(fleet.env)
    const local = (await listRollouts(root)).filter((r) => (req.id ? r.id === req.id : r.state !== 'done'))
    let record = local[0]
    let establishments: Establishment[]
    if (record) {
      const want = new Set(record.uais)
      establishments = fleet.inventory.establishments.filter((e) => want.has(e.uai))
    } else {
      // another machine: find what the marks say
      const marks = await readMarks(fleet)
      const open = marks.filter((m) => m.mark && !FINAL_STEPS.has(m.mark.step) && (!req.id || m.mark.id === req.id))
      if (open.length === 0) {
        if (req.ifUnfinished) {
          req.io.info(req.id ? `no rollout ${req.id} left unfinished: nothing to resume` : 'no unfinished rollout in the local journal nor on the selected VMs: nothing to resume')
          return nothingToResume()
        }
        throw new UserError(ErrorCode.USAGE, req.id ? `no rollout ${req.id} found in the journal nor on the selected VMs` : 'no unfinished rollout in the local journal nor on the selected VMs', {
          exitCode: ExitCode.USAGE,
          suggestions: ['Run `pgi rollout status --all` to see what the VMs record.'],
        })
      }
      const id = open[0]!.mark!.id
      const mine = open.filter((m) => m.mark!.id === id)
      establishments = mine.map((m) => m.est)
      const now = new Date().toISOString()
      record = {
        id,
        version: mine[0]!.mark!.to,
        uais: establishments.map((e) => e.uai),
        waves: [...new Set([...fleet.inventory.rings, ...establishments.map((e) => e.ring)])],
        maxParallel: req.maxParallel ?? 10,
        maxPerHypervisor: req.maxPerHypervisor ?? 4,
        maxFailures: req.maxFailures ?? `${establishments.length}`,
        window: 'now',
        keepOldDisk: req.keepOldDisk ?? false,
        inventoryPath: fleet.inventory.path,
        runner: req.runner ?? RUNNER,
        startedAt: now,
        updatedAt: now,
        state: 'running',
      }
      req.io.info(`rollout ${id}: no local journal here; finishing the ${establishments.length} establishment(s) its marks name`)
    }
    const journal = new RolloutJournal(root, record.id)
    // after `abort`, resume only finishes the rollbacks (nothing new starts); after `pause`, it goes on
    if ((await journal.control()) === 'abort' || record.state === 'aborted') await journal.setControl('abort')
    else await journal.setControl(undefined)
    const ref: ImageRef = {name: record.imageName ?? DEFAULT_IMAGE, version: record.version}
    const image = await req.resolveImage(ref)
    record = {...record, state: 'running', runner: req.runner ?? RUNNER, updatedAt: new Date().toISOString(), ...(req.maxParallel ? {maxParallel: req.maxParallel} : {}), ...(req.maxFailures ? {maxFailures: req.maxFailures} : {})}
    req.io.info(`resuming rollout ${record.id} (${record.version})`)
    return execute(fleet, record, journal, image, {...req, image: ref, confirm: async () => undefined}, true, establishments)
  })
}

// ---- status / pause / abort ------------------------------------------------------------------

interface MarkRow {
  est: Establishment
  image?: string
  mark?: RolloutMark
  meta?: VmMeta
  error?: string
}

async function readMarks(fleet: FleetSession): Promise<MarkRow[]> {
  const out = await settleAll(
    fleet.establishments,
    (e) => e.hypervisor,
    async (e): Promise<MarkRow> => {
      const api = await fleet.hypervisors.get(e.hypervisor)
      const cfg = await api.vmConfig(e.node, e.vmid)
      const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
      return {est: e, image: meta?.image, mark: meta?.rollout, ...(meta ? {meta} : {})}
    },
    {max: 20, perKey: 8},
  )
  return out.map((o) => (o.ok ? o.value : {est: o.item, error: asPgiError(o.error).message}))
}

export interface StatusRow {
  uai: string
  image?: string
  rollout?: string
  from?: string
  to?: string
  step?: string
  state: 'done' | 'rolled-back' | 'failed' | 'in-progress' | 'none' | 'unknown'
  runner?: string
  at?: string
  reason?: string
  /** Where the staging of a next version stands (pgi rollout stage). */
  staging?: StagingStatus
}

export interface RolloutStatus {
  /** The newest rollout in the local journal (or the one asked for). */
  journal?: RolloutRecord & {control?: string}
  establishments: StatusRow[]
}

export async function rolloutStatus(req: FleetRequest & {id?: string; now?: () => Date}): Promise<RolloutStatus> {
  return withFleet(req, async (fleet) => {
    const root = journalDir(fleet.env)
    const rec = (await listRollouts(root)).find((r) => !req.id || r.id === req.id)
    const marks = await readMarks(fleet)
    const record = await readStageRecord(fleet.inventory.path, fleet.env)
    const now = req.now?.() ?? new Date()
    const rows: StatusRow[] = await Promise.all(
      marks.map(async (m): Promise<StatusRow> => {
        if (m.error) return {uai: m.est.uai, state: 'unknown', reason: m.error}
        const staging = await stagingOf(fleet, m.est, m.image, m.meta, record[m.est.uai], now)
        const k = m.mark
        if (!k || (req.id && k.id !== req.id)) return {uai: m.est.uai, image: m.image, state: 'none', ...(staging ? {staging} : {})}
        const state: StatusRow['state'] = k.step === 'committed' ? 'done' : k.step === 'rolled-back' ? 'rolled-back' : FINAL_STEPS.has(k.step) ? 'failed' : 'in-progress'
        return {uai: m.est.uai, image: m.image, rollout: k.id, from: k.from, to: k.to, step: k.step, state, runner: k.runner, at: k.at, reason: k.reason, ...(staging ? {staging} : {})}
      }),
    )
    const control = rec ? await new RolloutJournal(root, rec.id).control() : undefined
    return {...(rec ? {journal: {...rec, ...(control ? {control} : {})}} : {}), establishments: rows}
  })
}

/**
 * Follows every delta staging of the selection still running in its guest until it ends, with
 * one progress line per establishment (listr2 on a terminal, plain lines in CI); returns the
 * status once they all ended.
 */
export async function followStaging(req: FleetRequest & {id?: string; pollIntervalMs?: number; signal?: AbortSignal}): Promise<RolloutStatus> {
  const first = await rolloutStatus(req)
  const running = first.establishments.filter((e) => e.staging?.transfer === 'delta' && e.staging.state === 'running')
  if (running.length === 0) return first
  await withFleet(req, async (fleet) => {
    const byUai = new Map(fleet.establishments.map((e) => [e.uai, e]))
    await runParallel(
      req.io,
      running.map((row) => {
        const est = byUai.get(row.uai)!
        return {
          title: `${row.uai}: staging ${row.staging!.version} by delta`,
          key: est.hypervisor,
          run: async (update: (t: string) => void) => {
            const t: DeltaTarget = {api: await fleet.hypervisors.get(est.hypervisor), est, hv: fleet.hypervisors.definition(est.hypervisor)}
            for (;;) {
              const cfg = await t.api.vmConfig(est.node, est.vmid)
              const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
              const st = meta ? await stagingState(t, meta, new Date()) : undefined
              const p = st?.progress
              if (!p) return st?.error ?? 'no longer running'
              update(describeProgress(p))
              if (p.state !== 'running') {
                if (p.state === 'failed' || p.state === 'interrupted') throw new UserError(ErrorCode.STAGE_FAILED, p.error ?? p.state, {where: {uai: est.uai}})
                return describeProgress(p)
              }
              await sleep(req.pollIntervalMs ?? 10_000, req.signal)
            }
          },
        }
      }),
      {max: 20, perKey: 8},
    )
  })
  return rolloutStatus(req)
}

/** Asks the running rollout (this machine's journal) to pause or abort at its next step boundary. */
export async function controlRollout(what: 'pause' | 'abort', opts: {env?: NodeJS.ProcessEnv; id?: string}): Promise<{id: string; control: string}> {
  const root = journalDir(opts.env ?? process.env)
  const rec = (await listRollouts(root)).find((r) => (opts.id ? r.id === opts.id : r.state === 'running' || r.state === 'paused'))
  if (!rec) throw new UserError(ErrorCode.USAGE, opts.id ? `no rollout ${opts.id} in the local journal` : 'no running rollout in the local journal', {exitCode: ExitCode.USAGE, suggestions: ['Run `pgi rollout status` to see the rollouts.']})
  await new RolloutJournal(root, rec.id).setControl(what)
  return {id: rec.id, control: what}
}
