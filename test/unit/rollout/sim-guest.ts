/**
 * The rollout tests' view of the simulated lab's guest: the lab's own model
 * (src/lab/simulated-backend.ts, src/lab/simulated-guest.ts: pgi-backup and --verify, pgi-upgrade,
 * pgi-health, rollout's probe and restore scripts, as the image does them), with "broken" versions
 * whose trytond never starts (the lab's unhealthy-guest fault, by version), and read-outs of what
 * a data disk holds for the assertions.
 */
import {SimulatedBackend, type SimulatedOptions} from '../../../src/lab/simulated-backend.js'

type Rows = Record<string, number>

export interface GuestModelOptions extends Omit<SimulatedOptions, 'guestUnhealthy'> {
  /** Image versions whose trytond never starts. */
  brokenVersions?: string[]
  /** Guests whose PGI never becomes healthy on this version (per VM: e.g. a local quirk the new version trips on). */
  brokenOn?: (node: string, vmid: number, version: string) => boolean
}

/** What a data disk holds, as the assertions read it. */
export interface DiskView {
  /** Version the databases were last upgraded for (state.json image.version). */
  version?: string
  /** Databases and their key-table row counts. */
  dbs: Map<string, Rows>
  /** Backups on the disk, by manifest path. */
  backups: Map<string, {version?: string}>
  upgrades: number
  restores: number
}

export class RolloutGuestModel {
  readonly backend: SimulatedBackend

  constructor(opts: GuestModelOptions = {}) {
    const broken = new Set(opts.brokenVersions ?? [])
    const brokenOn = opts.brokenOn ?? (() => false)
    this.backend = new SimulatedBackend({...opts, guestUnhealthy: (node, vmid, version) => broken.has(version) || brokenOn(node, vmid, version)})
  }

  disk(node: string, vmid: number): DiskView {
    const d = this.backend.dataDisk(node, vmid)
    if (!d) throw new Error(`VM ${node}/${vmid} has not booted with a data disk yet`)
    const backups = new Map<string, {version?: string}>()
    for (const [path, f] of d.files) {
      if (!/^\/srv\/pgi\/backups\/[^/.][^/]*\/manifest\.json$/.test(path)) continue
      backups.set(path, {version: (JSON.parse(f.data.toString()) as {image?: {version?: string}}).image?.version})
    }
    return {version: d.version, dbs: new Map([...d.databases].map(([k, v]) => [k, {...v.rows}])), backups, upgrades: d.upgrades, restores: d.restores}
  }

  /** A student database with data, as pgi-db create + some work would leave it. */
  addDatabase(node: string, vmid: number, name: string, rows: Rows): void {
    this.backend.addDatabase(node, vmid, name, rows)
  }

  osVersion(node: string, vmid: number): string | undefined {
    return this.backend.guestBoot(node, vmid)?.osVersion
  }

  /** The boot-time upgrade's refusal of the last boot, if any. */
  upgradeError(node: string, vmid: number): string | undefined {
    return this.backend.guestBoot(node, vmid)?.boot.upgrade.error
  }
}
