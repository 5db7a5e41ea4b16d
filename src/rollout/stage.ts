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
import {DEFAULT_TIMEZONE, isOpen, localTime, nextClosing, nextOpening, parseTransferWindow, type TransferWindow} from '../inventory/transfer-window.js'
import {sleep} from '../sleep.js'
import {planPacing, TransferPacer} from './pacing.js'
import {FINAL_STEPS} from './mark.js'
import {writeStageRecord, type StageRecordEntry} from './stage-record.js'

export interface StageRow {
  uai: string
  hypervisor: string
  node: string
  vmid: number
  /** How the version travels to this establishment. */
  transfer: 'delta' | 'full'
  /** waiting: not started (outside the transfer window, or no share of the total cap left with --no-wait). */
  outcome: StageOutcome | DeltaOutcome | 'failed' | 'waiting'
  /** Why a full transfer when delta was possible to ask for (auto), in words. */
  fallback?: string
  /** Delta: disk bytes assembled / total, bytes fetched from the store. */
  bytes?: {done: number; total: number; fetched: number}
  /** The cap this transfer was given, bytes/s (its share of --total-bwlimit, or --bwlimit). */
  capBps?: number
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
  /** The Région's uplink shared by the whole run, KiB/s (default: the inventory's delivery.total_bwlimit). */
  totalBwlimitKiB?: number
  /** When transfers may run, as written (default: the inventory's delivery.transfer_window). */
  transferWindow?: string
  maxParallel?: number
  /** delta, full or auto (default: auto when a store is known, else full). */
  transfer?: Transfer
  /** The store as the VMs reach it (default: the inventory's delivery.store_url). */
  storeUrl?: string
  /** The store as this machine reads it (default: the inventory's delivery.region_store, else the store URL). */
  store?: string
  /** The images folder (its trusted keys verify delivery.json). */
  imagesRoot: string
  /** Wait for each delta assembly to be verified and for a closed transfer window (default), or return once started / at once. */
  wait?: boolean
  pollIntervalMs?: number
  signal?: AbortSignal
  /** The clock (default: the system's). */
  now?: () => Date
}

/** How the run was paced (shown with the rows). */
export interface StagePacing {
  /** The total cap, bytes/s. */
  totalBps?: number
  /** Delta transfers at once and each one's cap while others wait. */
  slots: number
  shareBps?: number
  window?: {spec: string; timezone: string; open: boolean; nextOpening?: string}
}

export interface StageResult {
  version: string
  transfer: Transfer
  rows: StageRow[]
  pacing: StagePacing
  exitCode: number
}

/** The run's transfer window: the flag's (in the inventory's time zone) or the inventory's. */
function windowOf(req: StageRequest, fleet: FleetSession): TransferWindow | undefined {
  const d = fleet.inventory.delivery
  return req.transferWindow !== undefined ? parseTransferWindow(req.transferWindow, {timezone: d?.timezone ?? DEFAULT_TIMEZONE}) : d?.transferWindow
}

/**
 * Puts the verified image within reach of every establishment of the selection, touching no
 * running service: by delta (a staging disk the guest assembles from the chunk store, recorded
 * on the VM) or whole (once per node, on its import storage). Resumable: what is staged is
 * skipped, a delta staging cut mid-way continues from what its disk holds. Paced: at most the
 * total cap between all transfers (src/rollout/pacing.ts), only inside the transfer window.
 */
export async function stageRollout(req: StageRequest): Promise<StageResult> {
  const transferAsked = req.transfer
  if (transferAsked === 'full' && req.storeUrl) throw new UsageError('--store-url is for --transfer delta or auto', {where: {flag: 'store-url'}, suggestions: ['Drop --store-url, or use --transfer delta|auto.']})
  if (req.totalBwlimitKiB && req.imageUrl) throw new UsageError('--total-bwlimit paces what this machine sends and what the guests fetch; with --image-url each node downloads the image itself', {where: {flag: 'total-bwlimit'}, suggestions: ['Drop --image-url, or cap the nodes\' downloads in Proxmox VE (datacenter.cfg bwlimit).']})
  const now = req.now ?? (() => new Date())
  return withFleet(req, async (fleet) => {
    const window = windowOf(req, fleet)
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
    // the inventory's total cap does not apply to nodes that download the image themselves
    const totalKiB = req.imageUrl ? undefined : (req.totalBwlimitKiB ?? fleet.inventory.delivery?.totalBwlimitKiB)
    const totalBps = totalKiB ? totalKiB * 1024 : undefined
    const perSiteBps = req.bwlimitKiB ? req.bwlimitKiB * 1024 : undefined
    const maxParallel = req.maxParallel ?? 4
    // refuses --bwlimit with --image-url, for what goes whole
    if (transfer !== 'delta') new Stager({io: req.io, imageUrl: req.imageUrl, bwlimitKiB: req.bwlimitKiB})
    const image = await req.resolveImage(req.image)
    const pacer = new TransferPacer({totalBps, perSiteBps, parallel: maxParallel, count: fleet.establishments.length})
    const wait = req.wait ?? true
    const pacing = (): StagePacing => {
      const next = window && !isOpen(window, now()) ? nextOpening(window, now()) : undefined
      return {...(totalBps ? {totalBps} : {}), slots: pacer.plan.slots, ...(pacer.plan.shareBps ? {shareBps: pacer.plan.shareBps} : {}), ...(window ? {window: {spec: window.spec, timezone: window.timezone, open: isOpen(window, now()), ...(next ? {nextOpening: next.toISOString()} : {})}} : {})}
    }
    const closedDetail = () => `outside the transfer window (${window!.spec}, ${window!.timezone}), next opening ${localTime(nextOpening(window, now()) ?? now(), window!.timezone)}`
    /** Waits for the window to open (true), or says it is closed (false) with --no-wait. */
    const waitForWindow = async (update: (text: string) => void): Promise<boolean> => {
      if (isOpen(window, now())) return true
      if (!wait) return false
      for (let shown = ''; !isOpen(window, now()); ) {
        const next = nextOpening(window, now())
        const text = `waiting for the transfer window until ${next ? localTime(next, window!.timezone) : '(never opens)'}`
        if (text !== shown) update((shown = text))
        // looked at again every poll interval (a clock that jumps, a machine that slept)
        await sleep(Math.min(req.pollIntervalMs ?? 10_000, Math.max(1000, (next?.getTime() ?? 0) - now().getTime())), req.signal)
      }
      return true
    }
    const base = (e: Establishment) => ({uai: e.uai, hypervisor: e.hypervisor, node: e.node, vmid: e.vmid})
    /** What this run decided per establishment, for `pgi rollout status` (the record of this machine). */
    const record = async (list: StageRow[]) => {
      const at = now().toISOString()
      const win = window ? {window: {spec: window.spec, timezone: window.timezone}} : {}
      await writeStageRecord(
        fleet.inventory.path,
        fleet.env,
        Object.fromEntries(list.map((x) => [x.uai, {version: image.version, transfer: x.transfer, outcome: x.outcome, ...(x.fallback ? {fallback: x.fallback} : {}), detail: x.detail, ...(x.capBps ? {capBps: x.capBps} : {}), ...(totalBps ? {totalBps} : {}), ...win, at}])),
      ).catch((err) => req.io.warn(`the staging record of this machine was not written: ${asPgiError(err).message}`))
    }
    if (window && !isOpen(window, now()) && !wait) {
      // nothing is started: each establishment waits for the window
      const rows = fleet.establishments.map((e): StageRow => ({...base(e), transfer: transfer === 'full' ? 'full' : 'delta', outcome: 'waiting', detail: closedDetail()}))
      await record(rows)
      return {version: image.version, transfer, rows, pacing: pacing(), exitCode: ExitCode.OK}
    }
    if (window) await waitForWindow((text) => req.io.info(text))
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
    const full: Establishment[] = []
    const fallbacks = new Map<string, string>()
    await runParallel(
      req.io,
      fleet.establishments.map((e) => ({
        title: `${e.uai} (${e.hypervisor}/${e.node} VM ${e.vmid})`,
        key: e.hypervisor,
        run: async (update: (t: string) => void) => {
          if (transfer === 'full' || !delivery) {
            pacer.forgo()
            if (noDelta) fallbacks.set(e.uai, noDelta)
            full.push(e)
            return noDelta ? `full transfer (${noDelta})` : 'full transfer'
          }
          const t: DeltaTarget = {api: await fleet.hypervisors.get(e.hypervisor), est: e, hv: fleet.hypervisors.definition(e.hypervisor)}
          let held = false
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
            // a slot of the total cap, inside the window (with --no-wait: only if one is free now)
            if (!(await waitForWindow(update))) {
              rows.set(e.uai, {...base(e), transfer: 'delta', outcome: 'waiting', detail: closedDetail()})
              return closedDetail()
            }
            if (wait) {
              update(`waiting for a share of the total cap (${pacer.plan.slots} transfers at once)`)
              await pacer.acquire(e.uai)
            } else if (!pacer.tryAcquire(e.uai)) {
              const detail = `waiting for a share of the total cap (${pacer.plan.slots} transfers at once): run stage again once those started are staged`
              rows.set(e.uai, {...base(e), transfer: 'delta', outcome: 'waiting', detail})
              return detail
            }
            held = true
            const capBps = pacer.capFor(e.uai)
            const r = await stageDelta(t, {
              storeUrl: storeUrl!,
              delivery,
              rateLimitBps: capBps,
              wait,
              pollMs: req.pollIntervalMs ?? 10_000,
              io: req.io,
              update,
              signal: req.signal,
              now,
              // a run pgi does not follow stops itself at the window's close
              ...(!wait && window ? {until: nextClosing(window, now())} : {}),
              ...(totalBps || window ? {control: () => ({rateLimitBps: pacer.capFor(e.uai), open: isOpen(window, now())}), waitOpen: waitForWindow} : {}),
            })
            const p = r.progress
            const detail = r.outcome === 'already-staged' ? `${image.version} already staged on ${r.volume}, verified` : r.outcome === 'started' ? `assembling ${image.version} on ${r.volume} (pgi rollout status shows its progress)` : r.outcome === 'paused' ? `paused on ${r.volume}: ${closedDetail()}` : `${image.version} assembled on ${r.volume}, sha256 verified (${((p?.fetched ?? 0) / 1e6).toFixed(1)} MB fetched)`
            rows.set(e.uai, {...base(e), transfer: 'delta', outcome: r.outcome, ...(p ? {bytes: {done: p.diskDone, total: p.diskTotal, fetched: p.fetched}} : {}), ...(capBps && r.outcome !== 'already-staged' ? {capBps} : {}), detail})
            return detail
          } catch (err) {
            const pe = asPgiError(err)
            const progress = (pe.details?.progress ?? undefined) as StageProgress | undefined
            rows.set(e.uai, {...base(e), transfer: 'delta', outcome: 'failed', ...(progress ? {bytes: {done: progress.diskDone, total: progress.diskTotal, fetched: progress.fetched}} : {}), detail: pe.message, error: {code: pe.code, message: pe.message, suggestions: pe.suggestions}})
            throw err
          } finally {
            // a started run holds its slot with --no-wait: it goes on in the guest at its cap
            if (held && (wait || rows.get(e.uai)?.outcome !== 'started')) pacer.release(e.uai)
            else if (!held) pacer.forgo()
          }
        },
      })),
      {max: maxParallel, perKey: maxParallel},
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
      // uploads cannot be re-capped once running: the total is split once between the slots
      // (the delta transfers of this run are over by now)
      const plan = planPacing({totalBps, perSiteBps, parallel: maxParallel, count: nodes.size})
      const capKiB = plan.shareBps ? Math.max(1, Math.floor(plan.shareBps / 1024)) : undefined
      const stager = new Stager({io: req.io, imageUrl: req.imageUrl, bwlimitKiB: capKiB, onProgress: (k, text) => req.io.debug(`${k}: ${text}`)})
      const out = await settleAll(
        [...nodes.values()],
        (x) => x.hv,
        async (x): Promise<StageOutcome | 'waiting'> => {
          // not started outside the window (an upload cut at its close would start again from zero)
          if (!(await waitForWindow((text) => req.io.info(`${x.hv}/${x.node}: ${text}`)))) return 'waiting'
          return stager.stage(await fleet.hypervisors.get(x.hv), fleet.hypervisors.definition(x.hv), x.node, image)
        },
        {max: plan.slots, perKey: 1},
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
            ...(o.ok && o.value === 'uploaded' && capKiB ? {capBps: capKiB * 1024} : {}),
            detail: o.ok ? (o.value === 'waiting' ? closedDetail() : o.value === 'already-there' ? `${image.file} already on ${o.item.node}` : `${image.file} ${o.value} to ${o.item.node}, checksum verified`) : pe!.message,
            ...(pe ? {error: {code: pe.code, message: pe.message, suggestions: pe.suggestions}} : {}),
          })
        }
      }
    }
    const list = fleet.establishments.map((e) => rows.get(e.uai) ?? {...base(e), transfer: 'full' as const, outcome: 'failed' as const, detail: 'not staged'})
    await record(list)
    const failed = list.filter((r) => r.outcome === 'failed').length
    return {version: image.version, transfer, rows: list, pacing: pacing(), exitCode: failed === 0 ? ExitCode.OK : failed === list.length && list.length > 0 ? ExitCode.FAILURE : ExitCode.PARTIAL}
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
  /** The cap the guest's transfer runs at, and the run's total cap it is a share of, bytes/s. */
  capBps?: number
  totalBps?: number
}

/** The window a staging was started under (the run's, else the inventory's). */
function recordedWindow(fleet: FleetSession, local: StageRecordEntry | undefined): TransferWindow | undefined {
  if (local?.window) {
    try {
      return parseTransferWindow(local.window.spec, {timezone: local.window.timezone})
    } catch {
      // a record written by another pgi: the inventory's window then
    }
  }
  return fleet.inventory.delivery?.transferWindow
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
    const window = recordedWindow(fleet, local)
    // stopped at the window's close (or never started in it): it continues at the next opening
    const paused = s.state === 'staging' && p?.state !== 'done' && !(p?.state === 'running' && p.active) && window !== undefined && !isOpen(window, now)
    const next = paused ? nextOpening(window, now) : undefined
    const cap = p?.state === 'running' && p.active ? p.rateLimitBps : undefined
    return {
      version: s.version,
      transfer: 'delta',
      state: paused ? `paused (outside the transfer window, next ${next ? localTime(next, window.timezone) : 'never'})` : p && s.state === 'staging' ? (p.state === 'done' ? 'assembled (not yet recorded: run stage again)' : p.state) : s.state,
      ...(cap ? {capBps: cap} : {}),
      ...(cap && local?.totalBps && local.version === s.version ? {totalBps: local.totalBps} : {}),
      ...(p?.phase ? {phase: p.phase} : {}),
      done: p ? p.diskDone : s.state === 'verified' ? s.rawBytes : 0,
      total: p?.diskTotal || s.rawBytes,
      ...(p ? {fetched: p.fetched} : {}),
      ...(p?.etaS !== undefined ? {etaS: p.etaS} : {}),
      ...((p?.error ?? s.error ?? st?.error) ? {reason: p?.error ?? s.error ?? st?.error} : {}),
      volume: s.volume,
    }
  }
  if (local && local.version !== image && (local.transfer === 'full' || local.outcome === 'failed' || local.outcome === 'waiting')) {
    return {version: local.version, transfer: local.transfer, state: local.outcome, ...((local.fallback ?? (local.outcome === 'failed' || local.outcome === 'waiting' ? local.detail : undefined)) ? {reason: local.fallback ?? local.detail} : {})}
  }
  return undefined
}

