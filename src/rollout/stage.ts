/**
 * `pgi rollout stage`: the next version within reach of each establishment ahead of the
 * maintenance window — by delta (src/fleet/stage-delta.ts: the guest assembles a staging disk
 * from the chunk store) or whole (src/fleet/stage.ts: the qcow2 on the node's import storage) —
 * and where each establishment's staging stands, for `pgi rollout status`.
 */
import {ErrorCode, UsageError, UserError, asPgiError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {DeployImage} from '../fleet/images.js'
import {withFleet, type FleetRequest, type FleetSession} from '../fleet/open.js'
import {settleAll} from '../fleet/pool.js'
import {Stager, type StageOutcome} from '../fleet/stage.js'
import {loadDelivery, probeDelta, stageDelta, stagingState, type DeltaOutcome, type DeltaTarget, type StageProgress, type Transfer, type VerifiedDelivery} from '../fleet/stage-delta.js'
import {parseDescription, type VmMeta} from '../fleet/vm-meta.js'
import type {ImageRef} from '../image/images.js'
import type {Establishment} from '../inventory/types.js'
import {runParallel} from '../progress.js'
import {FINAL_STEPS} from './mark.js'
import {writeStageRecord, type StageRecordEntry} from './stage-record.js'

export interface StageRow {
  uai: string
  hypervisor: string
  node: string
  vmid: number
  /** How the version travels to this establishment. */
  transfer: 'delta' | 'full'
  outcome: StageOutcome | DeltaOutcome | 'failed'
  /** Why a full transfer when delta was possible to ask for (auto), in words. */
  fallback?: string
  /** Delta: disk bytes assembled / total, bytes fetched from the store. */
  bytes?: {done: number; total: number; fetched: number}
  detail: string
  error?: {code: string; message: string; suggestions: string[]}
}

export interface StageRequest extends FleetRequest {
  /** The image to stage (parsed at the command line). */
  image: ImageRef
  resolveImage: (ref: ImageRef) => Promise<DeployImage>
  imageUrl?: string
  /** Rate cap, KiB/s: per node for a full upload, per establishment (in the guest) for delta. */
  bwlimitKiB?: number
  maxParallel?: number
  /** delta, full or auto (default: auto when a store is known, else full). */
  transfer?: Transfer
  /** The store as the VMs reach it (default: the inventory's delivery.store_url). */
  storeUrl?: string
  /** The store as this machine reads it (default: the inventory's delivery.region_store, else the store URL). */
  store?: string
  /** The images folder (its trusted keys verify delivery.json). */
  imagesRoot: string
  /** Delta: wait for the assembly to be verified (default) or return once it runs. */
  wait?: boolean
  pollIntervalMs?: number
  signal?: AbortSignal
}

/**
 * Puts the verified image within reach of every establishment of the selection, touching no
 * running service: by delta (a staging disk the guest assembles from the chunk store, recorded
 * on the VM) or whole (once per node, on its import storage). Resumable: what is staged is
 * skipped, a delta staging cut mid-way continues from what its disk holds.
 */
export async function stageRollout(req: StageRequest): Promise<{version: string; transfer: Transfer; rows: StageRow[]; exitCode: number}> {
  const transferAsked = req.transfer
  if (transferAsked === 'full' && req.storeUrl) throw new UsageError('--store-url is for --transfer delta or auto', {where: {flag: 'store-url'}, suggestions: ['Drop --store-url, or use --transfer delta|auto.']})
  return withFleet(req, async (fleet) => {
    const storeUrl = req.storeUrl ?? fleet.inventory.delivery?.storeUrl
    const transfer: Transfer = transferAsked ?? (storeUrl ? 'auto' : 'full')
    if (transfer !== 'full' && !storeUrl) {
      throw new UsageError(`--transfer ${transfer} needs the chunk store's URL as the VMs reach it`, {
        where: {flag: 'store-url'},
        suggestions: ['Pass --store-url https://…/ (where `pgi image publish` output is served), or set delivery.store_url in the inventory (docs/delivery.md).', 'Or use --transfer full.'],
      })
    }
    if (storeUrl && !/^https?:\/\/[^\s]+$/.test(storeUrl)) throw new UsageError(`--store-url ${storeUrl} is not an http:// or https:// URL`, {where: {flag: 'store-url'}})
    const regionStore = req.store ?? (req.storeUrl ? undefined : fleet.inventory.delivery?.regionStore) ?? storeUrl
    // refuses --bwlimit with --image-url, for what goes whole
    const stager = transfer === 'delta' ? undefined : new Stager({io: req.io, imageUrl: req.imageUrl, bwlimitKiB: req.bwlimitKiB, onProgress: (k, t) => req.io.debug(`${k}: ${t}`)})
    const image = await req.resolveImage(req.image)
    let delivery: VerifiedDelivery | undefined
    let noDelta: string | undefined
    if (transfer !== 'full') {
      try {
        delivery = await loadDelivery({store: regionStore!, name: image.name, version: image.version, imagesRoot: req.imagesRoot, rawSha256: image.rawSha256, flag: req.store ? 'store' : 'store-url'})
      } catch (err) {
        // delta asked for: nothing is touched with a store that cannot be read or trusted
        if (transfer === 'delta') throw err
        noDelta = `store: ${asPgiError(err).message}`
      }
    }
    const rows = new Map<string, StageRow>()
    const base = (e: Establishment) => ({uai: e.uai, hypervisor: e.hypervisor, node: e.node, vmid: e.vmid})
    const full: Establishment[] = []
    const fallbacks = new Map<string, string>()
    await runParallel(
      req.io,
      fleet.establishments.map((e) => ({
        title: `${e.uai} (${e.hypervisor}/${e.node} VM ${e.vmid})`,
        key: e.hypervisor,
        run: async (update: (t: string) => void) => {
          if (transfer === 'full' || !delivery) {
            if (noDelta) fallbacks.set(e.uai, noDelta)
            full.push(e)
            return noDelta ? `full transfer (${noDelta})` : 'full transfer'
          }
          const t: DeltaTarget = {api: await fleet.hypervisors.get(e.hypervisor), est: e, hv: fleet.hypervisors.definition(e.hypervisor)}
          try {
            const cfg = await t.api.vmConfig(e.node, e.vmid)
            const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
            if (meta?.rollout && !FINAL_STEPS.has(meta.rollout.step)) throw new UserError(ErrorCode.REFUSED, `rollout ${meta.rollout.id} is mid-way at step ${meta.rollout.step}: not staging under it`, {exitCode: ExitCode.REFUSED, where: {uai: e.uai}, suggestions: ['Resume or abort that rollout first.']})
            if (meta?.image === image.version) {
              rows.set(e.uai, {...base(e), transfer: 'delta', outcome: 'already-there', detail: `already runs ${image.version}`})
              return `already runs ${image.version}`
            }
            update('probing the guest')
            const probe = await probeDelta(t, storeUrl!, delivery)
            if (!probe.delta) {
              if (transfer === 'delta') throw new UserError(ErrorCode.STAGE_FAILED, `cannot stage by delta: ${probe.reason}`, {where: {uai: e.uai, hypervisor: e.hypervisor, node: e.node, vmid: e.vmid}, suggestions: ['Use --transfer auto (falls back to the full transfer) or --transfer full.']})
              fallbacks.set(e.uai, probe.reason)
              full.push(e)
              return `full transfer (${probe.reason})`
            }
            const r = await stageDelta(t, {storeUrl: storeUrl!, delivery, rateLimitBps: req.bwlimitKiB ? req.bwlimitKiB * 1024 : undefined, wait: req.wait ?? true, pollMs: req.pollIntervalMs ?? 10_000, io: req.io, update, signal: req.signal})
            const p = r.progress
            const detail = r.outcome === 'already-staged' ? `${image.version} already staged on ${r.volume}, verified` : r.outcome === 'started' ? `assembling ${image.version} on ${r.volume} (pgi rollout status shows its progress)` : `${image.version} assembled on ${r.volume}, sha256 verified (${((p?.fetched ?? 0) / 1e6).toFixed(1)} MB fetched)`
            rows.set(e.uai, {...base(e), transfer: 'delta', outcome: r.outcome, ...(p ? {bytes: {done: p.diskDone, total: p.diskTotal, fetched: p.fetched}} : {}), detail})
            return detail
          } catch (err) {
            const pe = asPgiError(err)
            const progress = (pe.details?.progress ?? undefined) as StageProgress | undefined
            rows.set(e.uai, {...base(e), transfer: 'delta', outcome: 'failed', ...(progress ? {bytes: {done: progress.diskDone, total: progress.diskTotal, fetched: progress.fetched}} : {}), detail: pe.message, error: {code: pe.code, message: pe.message, suggestions: pe.suggestions}})
            throw err
          }
        },
      })),
      {max: req.maxParallel ?? 4, perKey: req.maxParallel ?? 4},
    )
    // the whole image, once per node, for the establishments that need it
    if (full.length > 0) {
      const nodes = new Map<string, {hv: string; node: string; ests: Establishment[]}>()
      for (const e of full) {
        const k = `${e.hypervisor}/${e.node}`
        const cur = nodes.get(k) ?? {hv: e.hypervisor, node: e.node, ests: []}
        cur.ests.push(e)
        nodes.set(k, cur)
      }
      const out = await settleAll(
        [...nodes.values()],
        (x) => x.hv,
        async (x) => stager!.stage(await fleet.hypervisors.get(x.hv), fleet.hypervisors.definition(x.hv), x.node, image),
        {max: req.maxParallel ?? 4, perKey: 1},
      )
      for (const o of out) {
        for (const e of o.item.ests) {
          const fb = fallbacks.get(e.uai)
          const pe = o.ok ? undefined : asPgiError(o.error)
          rows.set(e.uai, {
            ...base(e),
            transfer: 'full',
            outcome: o.ok ? o.value : 'failed',
            ...(fb ? {fallback: fb} : {}),
            detail: o.ok ? (o.value === 'already-there' ? `${image.file} already on ${o.item.node}` : `${image.file} ${o.value} to ${o.item.node}, checksum verified`) : pe!.message,
            ...(pe ? {error: {code: pe.code, message: pe.message, suggestions: pe.suggestions}} : {}),
          })
        }
      }
    }
    const list = fleet.establishments.map((e) => rows.get(e.uai) ?? {...base(e), transfer: 'full' as const, outcome: 'failed' as const, detail: 'not staged'})
    const at = new Date().toISOString()
    await writeStageRecord(fleet.inventory.path, fleet.env, Object.fromEntries(list.map((x) => [x.uai, {version: image.version, transfer: x.transfer, outcome: x.outcome, ...(x.fallback ? {fallback: x.fallback} : {}), detail: x.detail, at}]))).catch((err) =>
      req.io.warn(`the staging record of this machine was not written: ${asPgiError(err).message}`),
    )
    const failed = list.filter((r) => r.outcome === 'failed').length
    return {version: image.version, transfer, rows: list, exitCode: failed === 0 ? ExitCode.OK : failed === list.length && list.length > 0 ? ExitCode.FAILURE : ExitCode.PARTIAL}
  })
}

export interface StagingStatus {
  version: string
  transfer: 'delta' | 'full'
  /** delta: staging, verified, failed (as the VM records it); full: the outcome of the last stage run here. */
  state: string
  phase?: string
  /** delta: disk bytes assembled / total and bytes fetched from the store. */
  done?: number
  total?: number
  fetched?: number
  /** Seconds left at the rate observed since the guest's run started. */
  etaS?: number
  /** Why the full transfer (auto), or why the delta staging failed. */
  reason?: string
  /** The staging disk (delta). */
  volume?: string
}

/**
 * The staging of an establishment: a delta staging as its VM records it (with the guest's live
 * progress while it runs), else the last full transfer this machine made for it — unless the VM
 * already runs that version.
 */
export async function stagingOf(fleet: FleetSession, est: Establishment, image: string | undefined, meta: VmMeta | undefined, local: StageRecordEntry | undefined, now: Date): Promise<StagingStatus | undefined> {
  const s = meta?.staged
  if (s && meta && s.version !== image) {
    const api = await fleet.hypervisors.get(est.hypervisor)
    const st = await stagingState({api, est, hv: fleet.hypervisors.definition(est.hypervisor)}, meta, now)
    const p = st?.progress
    return {
      version: s.version,
      transfer: 'delta',
      state: p && s.state === 'staging' ? (p.state === 'done' ? 'assembled (not yet recorded: run stage again)' : p.state) : s.state,
      ...(p?.phase ? {phase: p.phase} : {}),
      done: p ? p.diskDone : s.state === 'verified' ? s.rawBytes : 0,
      total: p?.diskTotal || s.rawBytes,
      ...(p ? {fetched: p.fetched} : {}),
      ...(p?.etaS !== undefined ? {etaS: p.etaS} : {}),
      ...((p?.error ?? s.error ?? st?.error) ? {reason: p?.error ?? s.error ?? st?.error} : {}),
      volume: s.volume,
    }
  }
  if (local && local.version !== image && (local.transfer === 'full' || local.outcome === 'failed')) {
    return {version: local.version, transfer: local.transfer, state: local.outcome, ...((local.fallback ?? (local.outcome === 'failed' ? local.detail : undefined)) ? {reason: local.fallback ?? local.detail} : {})}
  }
  return undefined
}

