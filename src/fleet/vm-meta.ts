/**
 * What pgi records on each VM it manages, so the state of the fleet lives on the hypervisors
 * (any machine with the inventory can read it, and a rollout can resume from anywhere):
 *
 * - tags: `pgi`, `uai-<uai lower-case>`, `img-<image version>`, `ring-<ring>`
 * - description: a human sentence, then one line `pgi-meta: {json}` holding VmMeta.
 *   Written with the config `digest` (compare-and-swap), so two runners cannot both update a VM.
 */

export interface RolloutMark {
  /** Rollout id (one per `pgi rollout start`). */
  id: string
  /** Version being rolled out and the one to fall back to. */
  from: string
  to: string
  /** Last step reached for this VM (backup, swapped, gated, committed, rolled-back, …). */
  step: string
  at: string
  /** Who is running it (host + pid), for "another runner holds it". */
  runner?: string
  /** Why it failed or rolled back, in words. */
  reason?: string
  backup?: string
  /** sha256 of the backup manifest (its copy off the guest is in the local rollout journal). */
  backupSha256?: string
  /** Volume of the OS disk before the swap (kept as unusedN until commit: the way back). */
  oldDisk?: string
  /** Volume of the new OS disk after the swap. */
  newDisk?: string
  /** Set once the old OS disk / snapshot were removed after a commit. */
  cleaned?: boolean
  /**
   * A major upgrade (PostgreSQL and Tryton series change): the databases are carried across
   * into a new cluster at the new OS's first boot (src/rollout/guest-scripts.ts MAJOR_SCRIPT).
   */
  major?: {fromPg: string; toPg: string; fromTryton?: string; toTryton?: string}
}

export interface VmMeta {
  /** Format version of this record. */
  v: 1
  uai: string
  /** Image version on the OS disk now. */
  image: string
  /** Digest of the image (sha256 of the qcow2) for drift checks. */
  imageSha256?: string
  deployedAt: string
  /**
   * Set by `pgi deploy` once the VM passed its health check and received its secrets: a VM pgi
   * created without this mark is a deploy still in progress (or interrupted), which the next
   * `pgi deploy` continues rather than recreates.
   */
  configuredAt?: string
  /** pgi version that wrote this. */
  by: string
  rollout?: RolloutMark
  /**
   * The rollout lock of the fleet, held on one VM per hypervisor (src/rollout/fleet-lock.ts):
   * present on the anchor VM while a rollout runs. Every write of the meta keeps it (spread).
   */
  fleetLock?: FleetLock
  /**
   * A new OS disk assembled ahead of the rollout by `pgi rollout stage --transfer delta`
   * (src/fleet/stage-delta.ts): a disk hot-plugged with serial pgi-stage, filled by the guest from
   * the chunk store. Once `state` is `verified` (the guest read the whole disk back and its sha256
   * is the signed raw sha256), `pgi rollout start` attaches it as the OS disk instead of importing
   * the qcow2 (src/rollout/establishment.ts swap). Every write of the meta keeps it (spread).
   */
  staged?: StagedDisk
  /**
   * A VM that is not the establishment's own (`uai` is the establishment whose copy it holds): a
   * restore drill's scratch VM (removed after the drill, or by the next drill when one was
   * killed) or a lab copy made by `pgi backup restore --to-lab` (kept). Made only in the
   * inventory's `offsite.drill` VM id range (src/backup/scratch.ts).
   */
  scratch?: {kind: 'drill' | 'lab'; runner: string}
}

/** The staging disk of a delta transfer, as recorded on the VM. */
export interface StagedDisk {
  /** Image name and version being assembled on it. */
  name: string
  version: string
  /** Its volume (e.g. `local-lvm:vm-120-disk-2`) and the config key it is attached on (virtioN). */
  volume: string
  key: string
  /** The signed raw sha256 and size of the version (delivery.json). */
  rawSha256: string
  rawBytes: number
  /** staging: pgi-stage-delta was started on it; verified: assembled and checked; failed: see error. */
  state: 'staging' | 'verified' | 'failed'
  /** The store URL the guest fetches from. */
  store: string
  startedAt: string
  verifiedAt?: string
  error?: string
}

/** Who holds the fleet's rollout lock on a hypervisor, and until when (renewed while it runs). */
export interface FleetLock {
  /** Rollout id. */
  rollout: string
  /** host:pid of the runner. */
  owner: string
  since: string
  /** ISO time after which another runner may take it (the holder renews it well before). */
  expires: string
}

const META_PREFIX = 'pgi-meta: '
export const DESCRIPTION_MAX = 8192

export function formatDescription(meta: VmMeta, establishmentName: string): string {
  const text = `PGI (Tryton) server of ${establishmentName} (UAI ${meta.uai}), image ${meta.image}. Managed by pgi: do not edit the line below.\n${META_PREFIX}${JSON.stringify(meta)}`
  if (text.length > DESCRIPTION_MAX) throw new RangeError(`VM description would exceed ${DESCRIPTION_MAX} characters`)
  return text
}

/** Reads VmMeta from a VM description; undefined when the VM was not written by pgi. */
export function parseDescription(description: string | undefined): VmMeta | undefined {
  if (!description) return undefined
  const line = description.split('\n').find((l) => l.startsWith(META_PREFIX))
  if (!line) return undefined
  try {
    const m = JSON.parse(line.slice(META_PREFIX.length)) as VmMeta
    return m && m.v === 1 && typeof m.uai === 'string' && typeof m.image === 'string' ? m : undefined
  } catch {
    return undefined
  }
}

/** PVE tags are lower-case `[a-z0-9_][a-z0-9_\-+.]*`; anything else becomes `_`. */
function tagSafe(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9_\-+.]/g, '_').replace(/^[^a-z0-9_]/, '_')
}

export function formatTags(meta: Pick<VmMeta, 'uai' | 'image'>, ring?: string): string {
  const tags = ['pgi', `uai-${tagSafe(meta.uai)}`, `img-${tagSafe(meta.image)}`]
  if (ring) tags.push(`ring-${tagSafe(ring)}`)
  return tags.sort().join(';')
}

/** The image version recorded in tags (`img-…`), if any. */
export function imageFromTags(tags: string | undefined): string | undefined {
  const t = (tags ?? '').split(/[;, ]+/).find((x) => x.startsWith('img-'))
  return t?.slice(4)
}
