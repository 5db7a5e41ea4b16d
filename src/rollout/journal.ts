/**
 * The local rollout journal, `<journalDir>/rollout/<id>/`:
 *   rollout.json   what was asked (version, selection, waves, limits) and where it stands
 *   <UAI>.json     per establishment: last step, outcome, reason, where its backup manifest is
 *   <UAI>.manifest.json   the backup manifest copied off the guest
 *   control        "pause" or "abort", written by `pgi rollout pause|abort`, read by the runner
 * The hypervisors stay the source of truth for each VM (its rollout mark); the journal lets
 * `resume` on this machine continue the whole rollout (not only the VMs it touched) and keeps
 * the manifests. Files are written atomically (temp + rename), mode 0600.
 */
import {mkdir, readdir, readFile, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

export type RolloutState = 'running' | 'paused' | 'aborted' | 'halted' | 'done' | 'partial'

export interface RolloutRecord {
  id: string
  version: string
  /** The image's name when it is not the reference image (pgi-tryton). */
  imageName?: string
  /** Selected UAIs in inventory order. */
  uais: string[]
  waves: string[]
  maxParallel: number
  maxPerHypervisor: number
  maxFailures: string
  window: 'now' | 'inventory'
  keepOldDisk: boolean
  inventoryPath: string
  runner: string
  startedAt: string
  updatedAt: string
  state: RolloutState
  /** Why it halted / stopped, in words. */
  reason?: string
}

export interface EstablishmentRecord {
  uai: string
  step: string
  outcome?: string
  reason?: string
  /** Local copy of the backup manifest. */
  manifest?: string
  at: string
}

export type Control = 'pause' | 'abort' | undefined

async function atomicWrite(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`
  await writeFile(tmp, text, {mode: 0o600})
  await rename(tmp, file)
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T
  } catch {
    return undefined
  }
}

export class RolloutJournal {
  readonly dir: string
  constructor(
    readonly root: string,
    readonly id: string,
  ) {
    this.dir = join(root, 'rollout', id)
  }

  async init(): Promise<void> {
    await mkdir(this.dir, {recursive: true, mode: 0o700})
  }

  readRecord(): Promise<RolloutRecord | undefined> {
    return readJson<RolloutRecord>(join(this.dir, 'rollout.json'))
  }

  async writeRecord(r: RolloutRecord): Promise<void> {
    await this.init()
    await atomicWrite(join(this.dir, 'rollout.json'), JSON.stringify(r, null, 2) + '\n')
  }

  readEstablishment(uai: string): Promise<EstablishmentRecord | undefined> {
    return readJson<EstablishmentRecord>(join(this.dir, `${uai}.json`))
  }

  async writeEstablishment(e: EstablishmentRecord): Promise<void> {
    await atomicWrite(join(this.dir, `${e.uai}.json`), JSON.stringify(e) + '\n')
  }

  manifestPath(uai: string): string {
    return join(this.dir, `${uai}.manifest.json`)
  }

  async writeManifest(uai: string, text: string): Promise<string> {
    const f = this.manifestPath(uai)
    await atomicWrite(f, text)
    return f
  }

  async control(): Promise<Control> {
    try {
      const t = (await readFile(join(this.dir, 'control'), 'utf8')).trim()
      return t === 'pause' || t === 'abort' ? t : undefined
    } catch {
      return undefined
    }
  }

  async setControl(c: Control): Promise<void> {
    await this.init()
    if (c === undefined) await rm(join(this.dir, 'control'), {force: true})
    else await atomicWrite(join(this.dir, 'control'), c + '\n')
  }

  async establishments(): Promise<EstablishmentRecord[]> {
    const names = await readdir(this.dir).catch(() => [] as string[])
    const out: EstablishmentRecord[] = []
    for (const n of names.filter((x) => /^[0-9]{7}[A-Z]\.json$/.test(x)).sort()) {
      const e = await readJson<EstablishmentRecord>(join(this.dir, n))
      if (e) out.push(e)
    }
    return out
  }
}

/** Rollouts in the journal, newest first. */
export async function listRollouts(root: string): Promise<RolloutRecord[]> {
  const base = join(root, 'rollout')
  const ids = await readdir(base).catch(() => [] as string[])
  const out: RolloutRecord[] = []
  for (const id of ids) {
    const r = await readJson<RolloutRecord>(join(base, id, 'rollout.json'))
    if (r) out.push(r)
  }
  return out.sort((a, b) => (a.startedAt < b.startedAt ? 1 : -1))
}
