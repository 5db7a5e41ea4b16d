/**
 * Per-establishment deploy journal (`<journalDir>/deploy/<UAI>.json`): which steps of the last
 * deploy ran, when, and how it ended. The hypervisor stays the source of truth — deploy re-plans
 * from the VM's real state every time — the journal tells people (and `pgi deploy`'s output) that a
 * previous run was interrupted and where. Written atomically (temp file + rename).
 */
import {mkdir, readFile, rename, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

export type DeployStep = 'staged' | 'created' | 'resized' | 'updated' | 'started' | 'agent' | 'healthy' | 'configured' | 'marked' | 'databases' | 'offsite' | 'handoff'

export interface JournalEntry {
  uai: string
  hypervisor: string
  node: string
  vmid: number
  image: string
  /** pid + host of the run, to tell runs apart. */
  runner: string
  startedAt: string
  steps: Partial<Record<DeployStep, string>>
  finishedAt?: string
  outcome?: 'created' | 'updated' | 'up-to-date' | 'failed'
  error?: {code: string; message: string}
  /**
   * The off-site settings last given to the VM (pgi-offsite --configure): a digest of the
   * repository, bandwidth cap and window (never the key), and when. A later deploy gives them
   * again only when the inventory's differ (or this record is gone).
   */
  offsite?: {settings: string; at: string}
}

export class DeployJournal {
  constructor(private readonly dir: string) {}

  private file(uai: string): string {
    return join(this.dir, 'deploy', `${uai}.json`)
  }

  async read(uai: string): Promise<JournalEntry | undefined> {
    try {
      return JSON.parse(await readFile(this.file(uai), 'utf8')) as JournalEntry
    } catch {
      return undefined
    }
  }

  async write(entry: JournalEntry): Promise<void> {
    const f = this.file(entry.uai)
    await mkdir(join(this.dir, 'deploy'), {recursive: true, mode: 0o700})
    const tmp = `${f}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(entry, null, 2) + '\n', {mode: 0o600})
    await rename(tmp, f)
  }
}
