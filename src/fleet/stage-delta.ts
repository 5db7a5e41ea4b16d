/**
 * Delta staging (docs/delivery.md): instead of sending a node the whole qcow2, pgi hot-plugs a
 * blank disk into each VM through the Proxmox API and has the guest assemble the new OS disk on
 * it from the Région's chunk store (`pgi image publish`), seeding from its current OS disk, with
 * the image's own tool `pgi-stage-delta` run over the guest agent. pgi reads the version's
 * delivery.json first and checks its signature with the trusted image keys, so the digests the
 * guest checks (index, raw disk) are the signed ones. The staging disk and its state are recorded
 * in the VM's pgi metadata (vm-meta.ts `staged`), so that `pgi rollout start` only switches disks.
 *
 * Re-running a staging continues it: the staging disk stays attached and is the chunk cache
 * (pgi-stage-delta seeds from what it already holds), and a verified one is not touched again.
 */
import {createHash} from 'node:crypto'
import {isAbsolute, join} from 'node:path'

import {readRegularFile} from '../bounded-read.js'
import {ErrorCode, UserError, asPgiError, type ErrorLocation} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {loadTrustedKeys, verifyBytes} from '../image/manifest.js'
import type {DeliveryManifest} from '../image/publish.js'
import type {Establishment, Hypervisor} from '../inventory/types.js'
import type {Io} from '../io.js'
import {PveApiError} from '../proxmox/errors.js'
import type {PveApi, PveVmConfig} from '../proxmox/types.js'
import {sleep} from '../sleep.js'
import {parseDisk} from './images.js'
import {formatDescription, parseDescription, type StagedDisk, type VmMeta} from './vm-meta.js'

export type Transfer = 'delta' | 'full' | 'auto'
export const TRANSFERS: readonly Transfer[] = ['delta', 'full', 'auto']

/** The image's tool (images/pgi-tryton/files/usr/local/sbin/pgi-stage-delta). */
export const STAGE_TOOL = '/usr/local/sbin/pgi-stage-delta'
/** The staging disk's serial, and the device it appears as in the guest. */
export const STAGE_SERIAL = 'pgi-stage'
export const STAGE_DEVICE = `/dev/disk/by-id/virtio-${STAGE_SERIAL}`

const HEX64 = /^[0-9a-f]{64}$/

// ---- the signed delivery.json ------------------------------------------------------------------

/** A published version's delivery.json, its signature checked with a trusted image key. */
export interface VerifiedDelivery {
  manifest: DeliveryManifest
  /** sha256 of delivery.json as read (the guest's copy must be the same). */
  sha256: string
  /** Paths inside the store. */
  deliveryPath: string
  indexPath: string
}

function storeError(store: string, rel: string, why: string, flag: string): UserError {
  return new UserError(ErrorCode.STORE_UNREACHABLE, `chunk store ${store}: cannot read ${rel}: ${why}`, {
    where: {flag},
    suggestions: [
      'Check the store location (--store, or delivery.region_store / delivery.store_url in the inventory) and that the version was published there (`pgi image publish VERSION --store DIR`).',
      'Or stage the whole image: --transfer full.',
    ],
  })
}

/** A file of the store (an http(s) URL or a folder), at most `maxBytes`. */
async function readStoreFile(store: string, rel: string, maxBytes: number, flag: string): Promise<Buffer> {
  if (/^https?:\/\//.test(store)) {
    const url = new URL(rel, store.endsWith('/') ? store : `${store}/`)
    let res: Response
    try {
      // TLS verified by Node's defaults (the system's CAs): the store is a public web server
      res = await fetch(url, {signal: AbortSignal.timeout(30_000), redirect: 'follow'})
    } catch (err) {
      throw storeError(store, rel, (err as Error & {cause?: Error}).cause?.message ?? (err as Error).message, flag)
    }
    if (!res.ok) throw storeError(store, rel, `HTTP ${res.status} ${res.statusText}`, flag)
    const len = Number(res.headers.get('content-length') ?? 0)
    if (len > maxBytes) throw storeError(store, rel, `${len} bytes, more than the ${maxBytes} expected`, flag)
    const body = Buffer.from(await res.arrayBuffer())
    if (body.length > maxBytes) throw storeError(store, rel, `${body.length} bytes, more than the ${maxBytes} expected`, flag)
    return body
  }
  if (!isAbsolute(store)) throw storeError(store, rel, 'not an http(s) URL nor an absolute folder', flag)
  const r = await readRegularFile(join(store, rel), maxBytes, rel)
  if (!r.ok) throw storeError(store, rel, r.problem.message, flag)
  return r.data
}

function invalid(message: string, suggestion: string): UserError {
  return new UserError(ErrorCode.DELIVERY_INVALID, message, {exitCode: ExitCode.REFUSED, suggestions: [suggestion]})
}

/**
 * Reads `<store>/<name>/<version>/delivery.json` and its signature, and checks them: signed by a
 * key the images folder trusts, for this name and version, with well-formed digests and — when
 * the local image's raw sha256 is known — the same raw disk (a store holding other bits under
 * the same version is refused: a published version never changes).
 */
export async function loadDelivery(opts: {store: string; name: string; version: string; imagesRoot: string; rawSha256?: string; flag?: string}): Promise<VerifiedDelivery> {
  const flag = opts.flag ?? 'store'
  const dir = `${opts.name}/${opts.version}`
  const bytes = await readStoreFile(opts.store, `${dir}/delivery.json`, 64 * 1024, flag)
  const sig = (await readStoreFile(opts.store, `${dir}/delivery.sig`, 4096, flag)).toString('utf8')
  let m: DeliveryManifest
  try {
    m = JSON.parse(bytes.toString('utf8')) as DeliveryManifest
  } catch (err) {
    throw invalid(`${opts.store} ${dir}/delivery.json is not JSON: ${(err as Error).message}`, 'Publish the version again into a clean store.')
  }
  const keyId = m?.signing?.key_id
  const key = typeof keyId === 'string' ? (await loadTrustedKeys(opts.imagesRoot)).get(keyId) : undefined
  if (!key) {
    throw invalid(`${opts.store} ${dir}/delivery.json is signed by key ${String(keyId)}, which the images folder ${opts.imagesRoot} does not trust`, 'Trust the Région\'s image key (copy its .pem into <images dir>/trusted-keys) or use the right store.')
  }
  if (!verifyBytes(bytes, sig, key)) throw invalid(`${opts.store} ${dir}/delivery.json: its signature does not verify with key ${keyId}: modified or corrupted`, 'Publish the version again from the machine that built it; never edit a store by hand.')
  if (m.format !== 1 || m.name !== opts.name || m.version !== opts.version) {
    throw invalid(`${opts.store} ${dir}/delivery.json describes ${m.name} ${m.version} (format ${m.format}), not ${opts.name} ${opts.version}`, 'Publish the version again into a clean store.')
  }
  if (!HEX64.test(m.index?.sha256 ?? '') || !HEX64.test(m.raw?.sha256 ?? '') || !(Number.isSafeInteger(m.raw?.size_bytes) && m.raw.size_bytes > 0) || !/^[\w.-]+$/.test(m.index?.file ?? '')) {
    throw invalid(`${opts.store} ${dir}/delivery.json lacks a well-formed index or raw digest`, 'Publish the version again with this pgi.')
  }
  for (const p of m.patches ?? []) {
    if (typeof p?.from !== 'string' || !/^[\w.+~-]+\.pgipatch$/.test(p.file ?? '') || !HEX64.test(p.sha256 ?? '') || !(Number.isSafeInteger(p.size_bytes) && p.size_bytes > 0)) {
      throw invalid(`${opts.store} ${dir}/delivery.json lists a malformed patch (${JSON.stringify(p).slice(0, 200)})`, 'Publish the version again with this pgi.')
    }
  }
  if (opts.rawSha256 && m.raw.sha256 !== opts.rawSha256) {
    throw invalid(`${opts.store} holds ${opts.name} ${opts.version} with raw sha256 ${m.raw.sha256}, the local image's is ${opts.rawSha256}`, 'Two builds carry the same version number: publish each version once, from the images the rollout uses.')
  }
  return {manifest: m, sha256: createHash('sha256').update(bytes).digest('hex'), deliveryPath: `${dir}/delivery.json`, indexPath: `${dir}/${m.index.file}`}
}

// ---- the guest --------------------------------------------------------------------------------

export interface DeltaTarget {
  api: PveApi
  est: Establishment
  hv: Hypervisor
}

function whereOf(t: DeltaTarget): ErrorLocation {
  return {uai: t.est.uai, hypervisor: t.est.hypervisor, node: t.est.node, vmid: t.est.vmid}
}

/** The guest agent did not answer (not running, timed out): the guest may only be busy. */
function agentSilence(err: unknown): boolean {
  const e = asPgiError(err)
  return e.code === ErrorCode.TIMEOUT || e.code === ErrorCode.GUEST_AGENT || (err instanceof PveApiError && err.status === 500 && /agent|not running|timeout|got timeout/i.test(err.pveMessage))
}

/** qemu-guest-agent's answer when the program does not exist (as PVE relays it), or a shell's 127. */
function missingProgram(err: unknown): boolean {
  return err instanceof PveApiError && /No such file or directory|Failed to execute child process/i.test(err.pveMessage)
}

/** What pgi-stage-delta prints (status, start): its progress JSON. */
export interface GuestStageStatus {
  state: 'none' | 'started' | 'running' | 'done' | 'failed' | 'interrupted' | string
  phase?: string
  active?: boolean
  error?: string | null
  raw_sha256?: string
  disk_done?: number
  disk_total?: number
  verify_done?: number
  fetched_bytes?: number
  fetched_total?: number
  runs?: number
  started?: string
  updated?: string
  sha256?: string
  rate_limit_bps?: number
  /** With --patch: the patch's bytes received / its size, then the chunks rebuilt from it. */
  patch_done?: number
  patch_total?: number
  rebuild_done?: number
  rebuild_total?: number
  rebuilt?: number
  rebuild_failed?: number
  /** A patch that could not be used (the staging went on with chunks only). */
  patch_error?: string
}

function parseStatus(text: string): GuestStageStatus | undefined {
  const line = text.trim().split('\n').filter(Boolean).at(-1)
  if (!line) return undefined
  try {
    const v = JSON.parse(line) as GuestStageStatus
    return v && typeof v === 'object' && typeof v.state === 'string' ? v : undefined
  } catch {
    return undefined
  }
}

/** `pgi-stage-delta status` in the guest; undefined when the image has no such tool (1.0.0). */
export async function guestStageStatus(t: DeltaTarget): Promise<GuestStageStatus | undefined> {
  let r
  try {
    r = await t.api.agentExec(t.est.node, t.est.vmid, [STAGE_TOOL, 'status'], {timeoutMs: 120_000, idempotent: true})
  } catch (err) {
    if (missingProgram(err)) return undefined
    throw err
  }
  if (r.exitcode === 127) return undefined
  const st = parseStatus(r.stdout)
  if (r.exitcode !== 0 || !st) {
    throw new UserError(ErrorCode.GUEST_COMMAND_FAILED, `${STAGE_TOOL} status exited ${r.exitcode}: ${(r.stderr || r.stdout).trim().slice(0, 300)}`, {where: whereOf(t)})
  }
  return st
}

/**
 * The guest fetches the version's delivery.json from the store URL as it reaches it and prints
 * its sha256 (python3 is in every pgi image; 20 s at most). Kept short: it runs for each
 * establishment before any disk is added.
 */
const STORE_PROBE = [
  'import hashlib, sys, urllib.request',
  'try:',
  '    d = urllib.request.urlopen(sys.argv[1], timeout=20).read(65536)',
  'except Exception as e:',
  '    print(getattr(e, "reason", e), file=sys.stderr)',
  '    sys.exit(3)',
  'print(hashlib.sha256(d).hexdigest())',
].join('\n')

export type DeltaProbe = {delta: true} | {delta: false; reason: string}

/**
 * Can this VM assemble the version itself? Its image must carry pgi-stage-delta (images built
 * before delta delivery do not) and the guest must reach the store and read there the same signed
 * delivery.json as pgi. Anything else is a reason to send the image whole.
 */
export async function probeDelta(t: DeltaTarget, storeUrl: string, d: VerifiedDelivery): Promise<DeltaProbe> {
  const st = await t.api.vmStatus(t.est.node, t.est.vmid)
  if (st?.status !== 'running') return {delta: false, reason: `VM ${t.est.vmid} is not running (the guest assembles the disk)`}
  let tool: GuestStageStatus | undefined
  try {
    tool = await guestStageStatus(t)
  } catch (err) {
    return {delta: false, reason: `guest agent: ${asPgiError(err).message}`}
  }
  if (!tool) return {delta: false, reason: 'its image has no pgi-stage-delta (built before delta delivery)'}
  const url = new URL(d.deliveryPath, storeUrl.endsWith('/') ? storeUrl : `${storeUrl}/`).toString()
  let r
  try {
    r = await t.api.agentExec(t.est.node, t.est.vmid, ['python3', '-c', STORE_PROBE, url], {timeoutMs: 90_000, idempotent: true})
  } catch (err) {
    return {delta: false, reason: `guest agent: ${asPgiError(err).message}`}
  }
  if (r.exitcode !== 0) return {delta: false, reason: `the guest cannot reach the store at ${url}: ${r.stderr.trim().split('\n').at(-1) || `exit ${r.exitcode}`}`}
  if (r.stdout.trim() !== d.sha256) return {delta: false, reason: `the store at ${url} serves another delivery.json than the one pgi verified`}
  return {delta: true}
}

// ---- the staging disk and its record ----------------------------------------------------------

/** The config key of the staging disk (virtioN with serial=pgi-stage), if attached. */
export function stagingDiskKey(cfg: PveVmConfig): string | undefined {
  return Object.keys(cfg).find((k) => /^virtio\d+$/.test(k) && parseDisk(cfg[k] as string)?.opts.serial === STAGE_SERIAL)
}

/** Is the staged disk the record names still attached where it says, on this VM? */
export function stagedDiskPresent(cfg: PveVmConfig, s: StagedDisk): boolean {
  return parseDisk(cfg[s.key] as string | undefined)?.volid === s.volume
}

/** Writes meta.staged by compare-and-swap on the config digest (everything else of the meta kept). */
async function writeStaged(t: DeltaTarget, change: (cur: StagedDisk | undefined, meta: VmMeta) => StagedDisk | undefined): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const cfg = await t.api.vmConfig(t.est.node, t.est.vmid)
    const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
    if (!cfg || !meta) throw new UserError(ErrorCode.REFUSED, `VM ${t.est.vmid} has no pgi description`, {exitCode: ExitCode.REFUSED, where: whereOf(t)})
    const next = change(meta.staged, meta)
    const {staged: _old, ...rest} = meta
    const m: VmMeta = next ? {...rest, staged: next} : rest
    try {
      await t.api.updateVmConfig(t.est.node, t.est.vmid, {description: formatDescription(m, t.est.name), digest: cfg.digest})
      return
    } catch (err) {
      if (asPgiError(err).code !== ErrorCode.PVE_DIGEST_MISMATCH || attempt >= 5) throw err
    }
  }
}

/** The staging disk: the one already attached (large enough), else a new blank one hot-plugged on the first free virtioN. */
async function ensureStagingDisk(t: DeltaTarget, rawBytes: number, io: Io): Promise<{key: string; volume: string; added: boolean}> {
  const gib = Math.ceil(rawBytes / 2 ** 30)
  for (let attempt = 0; ; attempt++) {
    const cfg = (await t.api.vmConfig(t.est.node, t.est.vmid))!
    const key = stagingDiskKey(cfg)
    if (key) {
      const d = parseDisk(cfg[key] as string)!
      if (d.size === undefined || d.size >= rawBytes) return {key, volume: d.volid, added: false}
      // a staging disk of an earlier, smaller version: it holds only a staging copy, never data
      io.info(`${t.est.uai}: staging disk ${d.volid} holds ${d.size} bytes, ${rawBytes} needed: replacing it`)
      await t.api.updateVmConfig(t.est.node, t.est.vmid, {delete: key, digest: cfg.digest})
      const after = (await t.api.vmConfig(t.est.node, t.est.vmid))!
      const unused = Object.keys(after).find((k) => /^unused\d+$/.test(k) && String(after[k]).split(',')[0] === d.volid)
      if (unused) await t.api.updateVmConfig(t.est.node, t.est.vmid, {delete: unused, digest: after.digest})
      continue
    }
    const free = Array.from({length: 14}, (_, i) => `virtio${i + 2}`).find((k) => cfg[k] === undefined)
    if (!free) throw new UserError(ErrorCode.REFUSED, `VM ${t.est.vmid} has no free virtio slot for a staging disk`, {exitCode: ExitCode.REFUSED, where: whereOf(t), suggestions: ['Use --transfer full for this establishment.']})
    try {
      // hot-plugged on the running VM (PVE's default hotplug includes disks); on the OS disks' storage
      await t.api.updateVmConfig(t.est.node, t.est.vmid, {[free]: `${t.hv.storage.os}:${gib},format=raw,serial=${STAGE_SERIAL}`, digest: cfg.digest}, {timeoutMs: 600_000})
    } catch (err) {
      if (asPgiError(err).code === ErrorCode.PVE_DIGEST_MISMATCH && attempt < 5) continue
      throw err
    }
    const after = (await t.api.vmConfig(t.est.node, t.est.vmid))!
    const volume = parseDisk(after[free] as string | undefined)?.volid
    if (!volume || parseDisk(after[free] as string)?.opts.serial !== STAGE_SERIAL) throw new UserError(ErrorCode.PVE_HTTP, `VM ${t.est.vmid}: no staging disk on ${free} after adding it`, {where: whereOf(t)})
    return {key: free, volume, added: true}
  }
}

// ---- staging one establishment ----------------------------------------------------------------

export interface StageProgress {
  state: string
  phase?: string
  diskDone: number
  diskTotal: number
  /** Bytes fetched from the store over every run of this version. */
  fetched: number
  runs?: number
  /** Seconds left at the rate observed since this run started (extract phase), when known. */
  etaS?: number
  error?: string
  /** The guest's run is alive (its unit active), and the cap it runs at, bytes/s. */
  active?: boolean
  rateLimitBps?: number
  /** The binary patch (when the store has one from this VM's version): bytes received of its size, then chunks rebuilt. */
  patch?: {done: number; total: number; rebuilt?: number; rebuildDone?: number; rebuildTotal?: number; error?: string}
}

/** Progress and an ETA from pgi-stage-delta's status (the rate observed since its run started). */
export function progressOf(st: GuestStageStatus, now: Date): StageProgress {
  const diskTotal = st.disk_total ?? 0
  const verifying = st.phase === 'verify'
  const diskDone = st.state === 'done' ? diskTotal : verifying ? (st.verify_done ?? 0) : (st.disk_done ?? 0)
  const p: StageProgress = {state: st.state, ...(st.phase ? {phase: st.phase} : {}), diskDone, diskTotal, fetched: st.fetched_total ?? st.fetched_bytes ?? 0, ...(st.runs ? {runs: st.runs} : {}), ...(st.error ? {error: st.error} : {}), ...(st.active !== undefined ? {active: st.active} : {}), ...(st.rate_limit_bps ? {rateLimitBps: st.rate_limit_bps} : {})}
  if (st.patch_total) {
    p.patch = {done: st.patch_done ?? 0, total: st.patch_total, ...(st.rebuild_total ? {rebuildDone: st.rebuild_done ?? 0, rebuildTotal: st.rebuild_total, rebuilt: st.rebuilt ?? 0} : {}), ...(st.patch_error ? {error: st.patch_error} : {})}
  }
  if (st.state === 'running' && st.phase === 'extract' && st.started && diskDone > 0) {
    const secs = (now.getTime() - Date.parse(st.started)) / 1000
    // the disk's bytes written per second since this run started; the read-back for the
    // digest that follows is not counted (a local read, minutes at most)
    if (secs > 0) p.etaS = Math.max(0, Math.round((diskTotal - diskDone) / (diskDone / secs)))
  }
  return p
}

export function describeProgress(p: StageProgress): string {
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`
  const pct = p.diskTotal > 0 ? Math.floor((100 * p.diskDone) / p.diskTotal) : 0
  const eta = p.etaS !== undefined ? `, ETA ${p.etaS >= 3600 ? `${(p.etaS / 3600).toFixed(1)} h` : p.etaS >= 60 ? `${Math.round(p.etaS / 60)} min` : `${p.etaS} s`}` : ''
  if (p.phase === 'patch' && p.patch) return `patch ${Math.floor((100 * p.patch.done) / p.patch.total)}% of ${mb(p.patch.total)}, ${mb(p.fetched)} fetched`
  if (p.phase === 'rebuild' && p.patch?.rebuildTotal) return `rebuilding chunks from this VM's bytes: ${p.patch.rebuildDone} of ${p.patch.rebuildTotal}, ${mb(p.fetched)} fetched`
  return `${p.phase ?? p.state} ${pct}% of ${mb(p.diskTotal)}, ${mb(p.fetched)} fetched${eta}`
}

export interface DeltaStageOptions {
  storeUrl: string
  delivery: VerifiedDelivery
  /** Per-establishment cap, bytes/s (pgi-stage-delta --rate-limit-bps). */
  rateLimitBps?: number
  /** Wait until the disk is assembled and verified (default), or return once it is started. */
  wait: boolean
  pollMs: number
  /** Longest wait for the assembly (default 24 h). */
  timeoutMs?: number
  /** How long the guest agent may stay silent while the guest works before pgi gives up waiting (default 15 min). */
  agentGraceMs?: number
  io: Io
  update?: (text: string) => void
  now?: () => Date
  signal?: AbortSignal
  /**
   * The run's pacing, asked at each poll (src/rollout/pacing.ts, the transfer window): the cap
   * the guest should run at now, and whether transfers may run. A different cap restarts the
   * guest's run with it, a closed window stops it (pgi-stage-delta stop: a later start continues
   * from what the disk holds).
   */
  control?: () => {rateLimitBps?: number; open: boolean}
  /** The transfer window's close, for a run pgi does not follow (--no-wait): the guest stops itself then (pgi-stage-delta --until). */
  until?: Date
  /** Waits until transfers may run again; false: return now with the staging paused. */
  waitOpen?: (update: (text: string) => void) => Promise<boolean>
}

export type DeltaOutcome = 'staged' | 'already-staged' | 'started' | 'paused'

/**
 * Stages the version on `t`'s VM by delta: staging disk, pgi-stage-delta started (or found
 * running), polled to the end, and the verified disk recorded. Throws STAGE_FAILED (with the
 * guest's reason) when the assembly fails: the disk keeps what it has, running it again resumes.
 */
export async function stageDelta(t: DeltaTarget, opts: DeltaStageOptions): Promise<{outcome: DeltaOutcome; progress?: StageProgress; volume: string}> {
  const d = opts.delivery.manifest
  const now = opts.now ?? (() => new Date())
  const cfg = await t.api.vmConfig(t.est.node, t.est.vmid)
  const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
  if (!cfg || !meta) throw new UserError(ErrorCode.REFUSED, `VM ${t.est.vmid} ${cfg ? 'was not deployed by pgi' : 'does not exist'}`, {exitCode: ExitCode.REFUSED, where: whereOf(t), suggestions: ['Deploy it first (pgi deploy).']})
  const s = meta.staged
  if (s && s.state === 'verified' && s.version === d.version && s.rawSha256 === d.raw.sha256 && stagedDiskPresent(cfg, s)) {
    return {outcome: 'already-staged', volume: s.volume}
  }
  const disk = await ensureStagingDisk(t, d.raw.size_bytes, opts.io)
  if (disk.added) opts.io.info(`${t.est.uai}: staging disk ${disk.volume} hot-plugged as ${disk.key}`)
  await writeStaged(t, (cur) => ({
    name: d.name,
    version: d.version,
    volume: disk.volume,
    key: disk.key,
    rawSha256: d.raw.sha256,
    rawBytes: d.raw.size_bytes,
    state: 'staging',
    store: opts.storeUrl,
    // a staging resumed keeps its first start
    startedAt: cur && cur.volume === disk.volume && cur.rawSha256 === d.raw.sha256 && cur.startedAt ? cur.startedAt : now().toISOString(),
  }))
  const exec = (command: string[], timeoutMs: number) => t.api.agentExec(t.est.node, t.est.vmid, command, {timeoutMs, idempotent: true})
  // a disk hot-plugged a moment ago shows up in the guest once udev has made its by-id link
  const dev = await exec(['/bin/sh', '-c', 'i=0; while [ ! -b "$1" ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; [ -b "$1" ]', 'sh', STAGE_DEVICE], 180_000)
  if (dev.exitcode !== 0) throw new UserError(ErrorCode.STAGE_FAILED, `the staging disk ${disk.volume} did not appear in the guest as ${STAGE_DEVICE} within 2 minutes`, {where: whereOf(t), suggestions: ['Check that the VM hot-plugs disks (Options → Hotplug: Disk), or reboot it; then run stage again.']})
  const argsFor = (rateLimitBps: number | undefined) => [
    STAGE_TOOL,
    'start',
    '--store',
    opts.storeUrl,
    '--index',
    opts.delivery.indexPath,
    '--index-sha256',
    d.index.sha256,
    '--raw-sha256',
    d.raw.sha256,
    '--raw-size',
    String(d.raw.size_bytes),
    '--target',
    STAGE_DEVICE,
    ...(rateLimitBps ? ['--rate-limit-bps', String(rateLimitBps)] : []),
    ...(until ? ['--until', String(Math.floor(until.getTime() / 1000))] : []),
    ...(patch ? ['--patch', `${d.name}/${d.version}/${patch.file}`, '--patch-sha256', patch.sha256, '--patch-size', String(patch.size_bytes)] : []),
  ]
  // the binary patch from the version on this VM's OS disk, when the publisher wrote one
  let patch = d.patches?.find((p) => p.from === meta.image)
  let until = opts.until
  let rate = opts.rateLimitBps
  // what the guest's tool last did: a run of this version that ended (failed, cut) is continued
  // by a new start, and its old status must not be taken for the new run's; a run that already
  // assembled and verified this version (pgi stopped before recording it) is recorded as it is
  let before = await guestStageStatus(t)
  const sameVersion = before?.raw_sha256 === d.raw.sha256
  if (before && sameVersion && before.state === 'done' && before.sha256 === d.raw.sha256) {
    await writeStaged(t, (cur) => (cur ? {...cur, state: 'verified', verifiedAt: now().toISOString(), error: undefined} : cur))
    return {outcome: 'staged', progress: progressOf(before, now()), volume: disk.volume}
  }
  const stale = (st: GuestStageStatus) => before !== undefined && sameVersion && before.state !== 'running' && st.state === before.state && st.started === before.started && st.runs === before.runs
  let startedAt = Date.now()
  // options an older image's pgi-stage-delta lacks (argparse refuses them: exit 2, "unrecognized
  // arguments: …"), and how staging goes on without each: the start is retried without them
  const optional: {flag: string; given: () => boolean; drop: () => void}[] = [
    {
      flag: '--patch',
      given: () => patch !== undefined,
      drop: () => {
        opts.io.info(`${t.est.uai}: this image's pgi-stage-delta cannot apply binary patches: fetching chunks only`)
        patch = undefined
      },
    },
    {
      flag: '--until',
      given: () => until !== undefined,
      drop: () => {
        opts.io.warn(`${t.est.uai}: this image's pgi-stage-delta cannot stop itself at the transfer window's close (${until!.toISOString()}): its transfer runs on until done`)
        until = undefined
      },
    },
  ]
  const start = async () => {
    let started = await exec(argsFor(rate), 120_000)
    for (;;) {
      const refused = started.exitcode === 2 ? /unrecognized arguments:(.*)/.exec(started.stderr + started.stdout)?.[1]?.trim().split(/\s+/) : undefined
      const lacking = optional.filter((o) => o.given() && refused?.includes(o.flag))
      // each pass drops at least one option given: the loop ends
      if (!lacking.length) break
      for (const o of lacking) o.drop()
      started = await exec(argsFor(rate), 120_000)
    }
    const st0 = parseStatus(started.stdout)
    if (started.exitcode !== 0 || !st0) {
      const why = st0?.error ?? (started.stderr || started.stdout).trim().slice(0, 300)
      await writeStaged(t, (cur) => (cur ? {...cur, state: 'failed', error: why} : cur)).catch(() => undefined)
      throw new UserError(ErrorCode.STAGE_FAILED, `pgi-stage-delta start: ${why}`, {where: whereOf(t)})
    }
  }
  await start()
  if (!opts.wait) return {outcome: 'started', volume: disk.volume}
  const deadline = Date.now() + (opts.timeoutMs ?? 24 * 3600_000)
  let answered = Date.now()
  for (;;) {
    await sleep(opts.pollMs, opts.signal)
    let st: GuestStageStatus | undefined
    try {
      st = await guestStageStatus(t)
      answered = Date.now()
    } catch (err) {
      // the assembly runs in the guest as its own unit: a guest busy reading its disks may leave
      // the agent unanswered for a while (seen under TCG: "QEMU guest agent is not running")
      // without anything being wrong; only a long silence ends the wait
      const silentMs = Date.now() - answered
      if (!agentSilence(err) || silentMs > (opts.agentGraceMs ?? 15 * 60_000)) {
        throw new UserError(ErrorCode.STAGE_FAILED, `delta staging of ${d.name} ${d.version}: the guest agent ${agentSilence(err) ? `has not answered for ${Math.round(silentMs / 60_000)} min` : 'failed'}: ${asPgiError(err).message}`, {
          where: whereOf(t),
          suggestions: ['The assembly may go on in the guest: run the same `pgi rollout stage` again later, it records or resumes it.'],
        })
      }
      opts.update?.(`guest agent not answering (${Math.round(silentMs / 1000)} s), waiting`)
      continue
    }
    if (!st) throw new UserError(ErrorCode.STAGE_FAILED, 'pgi-stage-delta vanished from the guest', {where: whereOf(t)})
    if (stale(st)) {
      if (Date.now() - startedAt > 180_000) throw new UserError(ErrorCode.STAGE_FAILED, `pgi-stage-delta did not start a new run within 3 minutes (its last run: ${st.state}${st.error ? `, ${st.error}` : ''})`, {where: whereOf(t), suggestions: ['Look at `journalctl -u pgi-stage-delta` in the guest, then run stage again.']})
      continue
    }
    const p = progressOf(st, now())
    // a status of another version (a run left from before) is not this staging's
    const mine = st.raw_sha256 === undefined || st.raw_sha256 === d.raw.sha256
    if (mine) opts.update?.(describeProgress(p))
    if (mine && st.state === 'done') {
      if (st.sha256 !== d.raw.sha256) {
        await writeStaged(t, (cur) => (cur ? {...cur, state: 'failed', error: `assembled disk sha256 ${st.sha256}`} : cur))
        throw new UserError(ErrorCode.STAGE_FAILED, `the assembled disk's sha256 ${st.sha256} is not the signed ${d.raw.sha256}`, {where: whereOf(t), suggestions: ['Run stage again: the disk is assembled anew from the store.']})
      }
      await writeStaged(t, (cur) => (cur ? {...cur, state: 'verified', verifiedAt: now().toISOString(), error: undefined} : cur))
      return {outcome: 'staged', progress: p, volume: disk.volume}
    }
    if (st.state === 'failed' || st.state === 'interrupted' || (!mine && !st.active)) {
      const why = mine ? (st.error ?? st.state) : `the guest's pgi-stage-delta ran another version (raw ${st.raw_sha256})`
      await writeStaged(t, (cur) => (cur ? {...cur, state: 'failed', error: why} : cur)).catch(() => undefined)
      throw new UserError(ErrorCode.STAGE_FAILED, `delta staging of ${d.name} ${d.version}: ${why}`, {
        where: whereOf(t),
        details: {progress: p},
        suggestions: ['Run the same `pgi rollout stage` again: it resumes from what the staging disk holds.', 'Or stage the whole image with --transfer full.'],
      })
    }
    // the read-back for the digest is local (no link used): it is let finish
    const c = st.state === 'running' && mine && st.phase !== 'verify' ? opts.control?.() : undefined
    // the cap the guest's run really has (a run found going, started by an earlier stage, keeps its own)
    const actual = st.rate_limit_bps ? st.rate_limit_bps : st.rate_limit_bps === 0 ? undefined : rate
    if (c && (!c.open || c.rateLimitBps !== actual)) {
      // stopped cleanly, then started again with the new cap (or once the window reopens):
      // the new run continues from what the staging disk holds
      await exec([STAGE_TOOL, 'stop'], 120_000)
      if (!c.open) {
        opts.update?.(`paused (outside the transfer window), ${describeProgress(p)}`)
        if (!(await (opts.waitOpen?.((text) => opts.update?.(text)) ?? Promise.resolve(false)))) return {outcome: 'paused', progress: p, volume: disk.volume}
      }
      rate = opts.control?.().rateLimitBps
      before = await guestStageStatus(t)
      startedAt = Date.now()
      await start()
      continue
    }
    if (Date.now() > deadline) {
      throw new UserError(ErrorCode.TIMEOUT, `delta staging of ${d.version} still running after ${Math.round((opts.timeoutMs ?? 0) / 60_000)} min (${describeProgress(p)})`, {exitCode: ExitCode.TIMEOUT, where: whereOf(t), suggestions: ['It goes on in the guest: `pgi rollout status` shows its progress; run stage again later to record it.']})
    }
  }
}

/**
 * Where a VM's staging stands, for `pgi rollout status`: the record on the VM, with the guest's
 * live progress while it is being assembled (undefined when nothing is staged by delta).
 */
export async function stagingState(t: DeltaTarget, meta: VmMeta, now: Date): Promise<{staged: StagedDisk; progress?: StageProgress; error?: string} | undefined> {
  const s = meta.staged
  if (!s) return undefined
  if (s.state !== 'staging') return {staged: s}
  try {
    const st = await guestStageStatus(t)
    if (!st || (st.raw_sha256 && st.raw_sha256 !== s.rawSha256)) return {staged: s}
    return {staged: s, progress: progressOf(st, now)}
  } catch (err) {
    return {staged: s, error: asPgiError(err).message}
  }
}
