/**
 * The Région's side of the off-site copies (docs/backups.md): each establishment's restic
 * repository, its key in the secret store, and restic run on this machine to read the snapshots
 * and apply the retention. The VM's side is the image's pgi-offsite (it pushes, append-only).
 *
 * restic is the engine (Debian's package; docs/backups.md says why it over borg and others): this
 * module only runs it. The repository password reaches restic in its environment
 * (RESTIC_PASSWORD), never on its command line; the repository URL too (it may hold credentials).
 */
import {ErrorCode, UserError} from '../errors.js'
import {run} from '../exec.js'
import {ExitCode} from '../exit-codes.js'
import type {GuestTarget} from '../fleet/guest.js'
import type {Io} from '../io.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {Inventory, OffsiteSettings} from '../inventory/types.js'
import type {Secret} from '../secret.js'
import {generatePassword, type SecretStore} from '../secrets/store.js'

/** The inventory's `offsite:` section, or a clear error when it has none. */
export function requireOffsite(inv: Pick<Inventory, 'offsite' | 'path'>): OffsiteSettings {
  if (!inv.offsite) {
    throw new UserError(ErrorCode.BACKUP_NOT_CONFIGURED, `the inventory (${inv.path}) has no offsite: section: no off-site repository is configured`, {
      exitCode: ExitCode.INVALID_INPUT,
      where: {file: inv.path},
      suggestions: ['Add an offsite: section (repository with {uai}, retention, bandwidth, window): docs/backups.md.'],
    })
  }
  return inv.offsite
}

export {GUEST_OFFSITE, GUEST_OFFSITE_CONFIG, configureGuestOffsite, ensureOffsitePassword, guestOffsiteConfig, offsitePasswordKey, readOffsitePassword} from '../fleet/offsite.js'

/** restic's failure as one of the classes the VM's status uses too (pgi-offsite classify()). */
export type OffsiteErrorClass = 'unreachable' | 'wrong_key' | 'repository_full' | 'no_repository' | 'failed'

export function classifyResticError(stderr: string): OffsiteErrorClass {
  const s = stderr.toLowerCase()
  if (s.includes('wrong password') || s.includes('no key found')) return 'wrong_key'
  if (['connection refused', 'no such host', 'i/o timeout', 'network is unreachable', 'deadline exceeded', 'connection reset', 'no route to host', 'dial tcp'].some((x) => s.includes(x))) return 'unreachable'
  if (['insufficient storage', '(507)', 'no space left', '(413)', 'quota'].some((x) => s.includes(x))) return 'repository_full'
  if (s.includes('is there a repository at the following location') || s.includes('does not exist')) return 'no_repository'
  return 'failed'
}

const NEXT: Record<OffsiteErrorClass, string> = {
  unreachable: 'Check that this machine reaches the repository (offsite.region_repository in the inventory) and that its server runs.',
  wrong_key: "The key in the secret store does not open this repository: check offsite.region_repository names this establishment's repository.",
  repository_full: "The repository's storage is full: prune (pgi backup prune) or grow it.",
  no_repository: 'No repository there yet: the VM creates it at its first push (pgi-offsite), after deploy with the offsite: section.',
  failed: 'Read restic\'s message above; `restic check` on the repository tells whether it is damaged.',
}

export interface ResticTarget {
  uai: string
  /** The repository as this machine reaches it. */
  repository: string
  password: Secret
}

/** Runs restic on `t` (secrets in its environment only); a failure is a typed error naming the establishment. */
export async function restic(t: ResticTarget, args: string[], io?: Io, opts: {timeoutMs?: number; cacheDir?: string} = {}): Promise<string> {
  const r = await run(
    'restic',
    args,
    {
      env: {
        RESTIC_REPOSITORY: t.repository,
        RESTIC_PASSWORD: t.password.reveal(),
        ...(opts.cacheDir ? {RESTIC_CACHE_DIR: opts.cacheDir} : {}),
        // never a password prompt, never a pager
        RESTIC_PASSWORD_COMMAND: undefined,
        RESTIC_PASSWORD_FILE: undefined,
      },
      timeoutMs: opts.timeoutMs ?? 30 * 60_000,
      allowFailure: true,
    },
    io,
  )
  if (r.exitCode !== 0) {
    const cls = classifyResticError(r.stderr)
    const tail = r.stderr.split(t.password.reveal()).join('***').trim().split('\n').slice(-3).join(' | ').slice(0, 500)
    throw new UserError(ErrorCode.OFFSITE_FAILED, `${t.uai}: restic ${args[0]} failed (${cls}): ${tail || `exit ${r.exitCode}`}`, {
      exitCode: cls === 'unreachable' ? ExitCode.UNREACHABLE : ExitCode.FAILURE,
      where: {uai: t.uai},
      details: {errorClass: cls, repository: redactUrl(t.repository)},
      suggestions: [NEXT[cls]],
    })
  }
  return r.stdout
}

/** A URL without its user info (rest:https://user:pass@host/… → rest:https://***@host/…). */
export function redactUrl(url: string): string {
  return url.replace(/(https?:\/\/)[^@/]+@/, '$1***@')
}

/** One off-site snapshot as `pgi backup list` shows it. */
export interface OffsiteSnapshot {
  id: string
  /** When the VM took it (restic's time). */
  date: string
  /** The nightly set it holds (pgi-backup's folder name, tag set=…). */
  set: string | null
  host: string
  /** Bytes of the files it holds (restic stats --mode restore-size). */
  size: number | null
}

interface ResticSnapshotJson {
  id: string
  short_id?: string
  time: string
  hostname: string
  tags?: string[]
}

/** The snapshots of `t`'s repository, newest first, with the size of what each holds. */
export async function offsiteSnapshots(t: ResticTarget, io?: Io, opts: {sizes?: boolean} = {}): Promise<OffsiteSnapshot[]> {
  const list = JSON.parse((await restic(t, ['snapshots', '--json', '--no-lock'], io, {timeoutMs: 5 * 60_000})) || '[]') as ResticSnapshotJson[] | null
  const out: OffsiteSnapshot[] = []
  for (const s of list ?? []) {
    let size: number | null = null
    if (opts.sizes !== false) {
      // restic 0.14's snapshot list has no sizes (0.17 adds a summary): one stats call each, which
      // reads only the repository's index and trees (from restic's local cache after the first)
      const st = JSON.parse(await restic(t, ['stats', '--json', '--no-lock', '--mode', 'restore-size', s.id], io, {timeoutMs: 5 * 60_000})) as {total_size?: number}
      size = st.total_size ?? null
    }
    const set = (s.tags ?? []).find((x) => x.startsWith('set='))?.slice(4) ?? null
    out.push({id: s.short_id ?? s.id.slice(0, 8), date: s.time.replace(/\.\d+/, ''), set, host: s.hostname, size})
  }
  out.sort((a, b) => (a.date < b.date ? 1 : a.date > b.date ? -1 : 0))
  return out
}

/** What `restic forget --prune` kept and removed for one establishment. */
export interface PruneResult {
  uai: string
  kept: string[]
  removed: string[]
  dryRun: boolean
}

interface ResticForgetGroup {
  keep?: ResticSnapshotJson[] | null
  remove?: ResticSnapshotJson[] | null
}

/**
 * The inventory's retention applied to `t`'s repository: `restic forget --prune` with
 * --keep-daily/--keep-weekly/--keep-monthly, every snapshot of the repository in one group (one
 * repository per establishment; grouped by host so that a path that changed does not make a group
 * of its own). Runs on the Région's machine, the only one allowed to delete.
 */
export async function pruneOffsite(t: ResticTarget, retention: OffsiteSettings['retention'], opts: {dryRun: boolean}, io?: Io): Promise<PruneResult> {
  const args = ['forget', '--json', '--group-by', 'host', '--keep-daily', String(retention.daily), '--keep-weekly', String(retention.weekly), '--keep-monthly', String(retention.monthly)]
  if (opts.dryRun) args.push('--dry-run')
  else args.push('--prune')
  const out = await restic(t, args, io, {timeoutMs: 6 * 3600_000})
  // with --prune, restic prints prune's progress after the JSON line of forget
  const line = out.split('\n').find((l) => l.startsWith('['))
  const groups = (line ? JSON.parse(line) : []) as ResticForgetGroup[] | null
  const kept: string[] = []
  const removed: string[] = []
  for (const g of groups ?? []) {
    for (const s of g.keep ?? []) kept.push(s.short_id ?? s.id.slice(0, 8))
    for (const s of g.remove ?? []) removed.push(s.short_id ?? s.id.slice(0, 8))
  }
  return {uai: t.uai, kept, removed, dryRun: opts.dryRun}
}
