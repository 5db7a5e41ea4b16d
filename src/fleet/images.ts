/**
 * An image as the fleet puts it on hypervisors: the verified image (what deploy and rollout
 * stage and import), its volume on a node's import storage, and PVE's disk strings that name it.
 * Shared by deploy and rollout (the fleet core), so that neither reaches into the other.
 */
import type {Hypervisor} from '../inventory/types.js'
import {tryParseSize} from '../size.js'

/** The image a deploy puts on the OS disk (already verified locally). */
export interface DeployImage {
  name: string
  version: string
  /** File name on the node's import storage (`<import storage>:import/<file>`). */
  file: string
  /** Local path of the qcow2 (for upload). */
  path: string
  sha256: string
  /** Bytes of the qcow2 file. */
  size: number
  /** sha256 of the raw disk the qcow2 holds (signed by the manifest): what a delta-staged disk must match. */
  rawSha256?: string
  /**
   * What the image runs, from its manifest's packages: PostgreSQL's major version ("15", "17")
   * and Tryton's series ("6.0", "7.0"). A rollout that changes either is a major upgrade
   * (src/rollout: the databases are carried across and migrated). Absent when unknown.
   */
  stack?: {postgresql?: string; tryton?: string}
}

/** The volume of `image` on the hypervisor's import storage (`<storage>:import/<file>`). */
export function importVolid(hv: Hypervisor, image: Pick<DeployImage, 'file'>): string {
  return `${hv.storage.import}:import/${image.file}`
}

/** Parsed disk property string: `local-vm:vm-100-disk-0.qcow2,size=32G,serial=pgi-data`. */
export function parseDisk(v: string | number | undefined): {volid: string; size?: number; opts: Record<string, string>} | undefined {
  if (v === undefined) return undefined
  const [volid, ...rest] = String(v).split(',')
  const opts: Record<string, string> = {}
  for (const r of rest) {
    const i = r.indexOf('=')
    if (i > 0) opts[r.slice(0, i)] = r.slice(i + 1)
  }
  const size = opts.size ? tryParseSize(opts.size) : undefined
  return {volid: volid ?? '', size, opts}
}
