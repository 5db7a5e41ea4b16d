import {createHash} from 'node:crypto'

/**
 * The simulated guest's state and vocabulary (src/lab/simulated-guest.ts runs its programs,
 * src/lab/simulated-pgidb.ts its database engine): where the image keeps things, the data disk
 * and what it holds, the guest's environment, a program's result. Its own module so that the
 * two program models share it without importing each other.
 */

export const DATA = '/srv/pgi'
export const STATE_FILE = '/srv/pgi/.pgi/state.json'
export const BACKUPS = '/srv/pgi/backups'
export const RUN_DIR = '/run/pgi'
/** Where src/db/transfer.ts stages uploads (its GUEST_UPLOADS). */
export const UPLOADS = '/srv/pgi/imports'
export const IMAGE_JSON = '/etc/pgi/image.json'
/** First lines of rollout's guest scripts (src/rollout/guest-scripts.ts PROBE_MARK, RESTORE_MARK). */
export const PROBE_MARK = '# pgi-rollout-probe'
export const RESTORE_MARK = '# pgi-rollout-restore'
/** The key tables pgi-backup counts rows of (its KEY_TABLES). */
export const KEY_TABLES = ['res_user', 'party_party', 'company_company', 'product_template', 'account_account', 'account_move', 'account_move_line', 'account_invoice', 'sale_sale', 'purchase_purchase', 'stock_move'] as const
/** What a database made from the image's BTS template holds (pgi-db create). */
export const TEMPLATE_ROWS: Record<string, number> = {res_user: 2, party_party: 1, company_company: 1, product_template: 0, account_account: 412, account_move: 0, account_move_line: 0, account_invoice: 0, sale_sale: 0, purchase_purchase: 0, stock_move: 0}
export const TEMPLATE_MODULES: Record<string, string> = {ir: '6.0.0', res: '6.0.0', company: '6.0.0', party: '6.0.0', account: '6.0.0', account_fr: '6.0.0', account_invoice: '6.0.0', sale: '6.0.0', purchase: '6.0.0', stock: '6.0.0'}
/** The Tryton packages of every simulated image (pgi-upgrade compares them with the data disk's). */
export const TRYTON_SOFTWARE = ['python3-trytond=6.0.40-1', 'tryton-modules-account-fr=6.0.3-1', 'tryton-server=6.0.40-1']
export const BACKUP_MAX_AGE_S = 48 * 3600
export const FIRST_BACKUP_GRACE_S = 26 * 3600
export const DEFAULT_KEEP = 14

export interface GuestFile {
  data: Buffer
  /** ms since the epoch */
  mtime: number
}

export interface SimDatabase {
  modules: Record<string, string>
  /** Row counts of the key tables (what pgi-backup records and --verify compares). */
  rows: Record<string, number>
}

/** /srv/pgi/.pgi/state.json */
export interface DataState {
  format: 1
  created_at: string
  created_by: {name: string; version: string}
  image: {name: string; version: string}
  history: Record<string, unknown>[]
  tryton?: string[]
}

/** What a data disk volume holds (everything under /srv/pgi). */
export class DataDisk {
  /** Undefined until a guest first boots with this disk (pgi-datadisk makes it). */
  state?: DataState
  databases = new Map<string, SimDatabase>()
  /** Files under /srv/pgi other than state.json (backups…), by absolute path. */
  files = new Map<string, GuestFile>()
  /** sha256 of the Tryton admin password (the image keeps a passlib hash in .pgi/tryton-admin.hash). */
  trytonAdmin?: string
  /** PostgreSQL roles made by pgi-configure (the cluster lives on this disk). */
  sqlRoles = new Map<string, string>()
  /** SSH host keys saved by pgi-hostkeys: "TYPE SHA256:…". */
  hostKeys?: {type: string; bits: number; fingerprint: string}[]
  /** Counters for tests: upgrades recorded by pgi-upgrade, restores by rollout's restore script. */
  upgrades = 0
  restores = 0

  clone(): DataDisk {
    const d = new DataDisk()
    d.state = this.state && structuredClone(this.state)
    d.databases = new Map([...this.databases].map(([k, v]) => [k, structuredClone(v)]))
    d.files = new Map([...this.files].map(([k, v]) => [k, {data: Buffer.from(v.data), mtime: v.mtime}]))
    d.trytonAdmin = this.trytonAdmin
    d.sqlRoles = new Map(this.sqlRoles)
    d.hostKeys = this.hostKeys && structuredClone(this.hostKeys)
    d.upgrades = this.upgrades
    d.restores = this.restores
    return d
  }

  /** The data version: the image version the databases were last upgraded for. */
  get version(): string | undefined {
    return this.state?.image.version
  }
}

/** What one boot of the guest left in /run/pgi. */
export interface BootState {
  datadisk: {ok: boolean; error?: string; mounted?: boolean; formatted?: boolean}
  /** /run/pgi/upgrade.json */
  upgrade: {ok: boolean; error?: string; action?: string; [k: string]: unknown}
}

/** Everything one guest program sees: its VM, its disks, this boot. */
/** pgi-stage-delta in a simulated guest whose image carries it (src/lab/simulated-stage-delta.ts). */
export interface SimStageDelta {
  /** The store as the guest reaches it: a URL's bytes, or undefined when unreachable. */
  fetch: (url: string) => Buffer | undefined
  /** Bytes this guest lacks (default 4 MiB). */
  bytes?: number
  /** The lab's time scale (simulated seconds × scale = real seconds). */
  timeScale: number
  /** Options of `start` this guest's tool lacks (an older image's): refused as argparse does (exit 2). */
  refuses?: readonly string[]
}

export interface GuestEnv {
  hostname: string
  /** Version of the running OS image (/etc/pgi/image.json). */
  osVersion: string
  /** The data disk (serial pgi-data) and its size, when attached. */
  disk?: DataDisk
  diskSizeBytes: number
  /** Files of the OS disk (/etc…), kept with its volume. */
  osFiles: Map<string, GuestFile>
  /** /tmp and /run: one boot's files. */
  runFiles: Map<string, GuestFile>
  boot: BootState
  /** Whether trytond runs (it needs the data disk; the lab's unhealthy-guest fault stops it). */
  trytondUp: boolean
  /** The AMI account set by pgi-configure (on the OS disk: /etc/shadow). */
  accounts: Map<string, string>
  now: () => number
  /** pgi-stage-delta and the store as this guest reaches them, when its image carries the tool. */
  stageDelta?: SimStageDelta
}

export interface RunResult {
  out: string
  err: string
  code: number
}

export const ok = (out: string): RunResult => ({out, err: '', code: 0})
export const fail = (err: string, code = 1, out = ''): RunResult => ({out, err: err.endsWith('\n') ? err : `${err}\n`, code})
export const sha256 = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex')
export const iso = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
export const stampOf = (ms: number): string => iso(ms).replace(/[-:]/g, '')

/** pgilib.version_key: numeric parts; a non-numeric part sorts before the release. */
export function compareVersions(a: string, b: string): number {
  const key = (v: string) => v.replace(/-/g, '.').split('.').map((p) => (/^\d+$/.test(p) ? [0, Number(p), ''] : [-1, 0, p]) as [number, number, string])
  const ka = key(a)
  const kb = key(b)
  for (let i = 0; i < Math.max(ka.length, kb.length); i++) {
    const x = ka[i]
    const y = kb[i]
    if (!x) return -1
    if (!y) return 1
    if (x[0] !== y[0]) return x[0] - y[0]
    if (x[1] !== y[1]) return x[1] - y[1]
    if (x[2] !== y[2]) return x[2] < y[2] ? -1 : 1
  }
  return 0
}

