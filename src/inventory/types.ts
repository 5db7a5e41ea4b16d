import type {TransferWindow} from './transfer-window.js'

/**
 * The resolved inventory model: what the loader produces after reading the YAML files, applying
 * defaults and checking every rule. The YAML format itself (snake_case keys) is described by
 * inventory/schema.json; this is the camelCase model the engine works with.
 */

/** A path into a YAML document: map keys and sequence indexes. */
export type YamlPath = readonly (string | number)[]

/** Where a value came from, for error messages (file:line:column). */
export interface SourceRef {
  file: string
  line: number
  column: number
}

/** Where a secret comes from. Secrets are never written in the YAML itself. */
export type SecretRef = {env: string} | {store: string}

export interface HypervisorTls {
  /** SHA-256 fingerprint of the node certificate, "AA:BB:…" (32 bytes, upper-case hex). */
  fingerprint?: string
  /** PEM file of a CA that signs the node certificates (path resolved against the YAML file). */
  caFile?: string
}

export interface Hypervisor {
  /** Key in the inventory (e.g. "hv-nord"). */
  name: string
  /** API base URL, e.g. https://10.0.0.1:8006 (no /api2/json suffix). */
  url: string
  /** PVE node names reachable through this API endpoint (a cluster has several). */
  nodes: string[]
  tls: HypervisorTls
  token: {id: string; secret: SecretRef}
  storage: {
    /** Storage for VM OS disks (images content). */
    os: string
    /** Storage for data disks. */
    data: string
    /** Storage with the `import` content type, where images are staged. */
    import: string
  }
  bridge: string
  ssh?: {host: string; port: number; user: string}
  /** PVE version this hypervisor runs, when known ("8.4", "9.1"). */
  pveVersion?: string
  source: SourceRef
}

export type Weekday = 'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun'

export interface MaintenanceWindow {
  days: Weekday[]
  /** "HH:MM", local time in `timezone`. */
  start: string
  end: string
  timezone: string
}

export interface EstablishmentNetwork {
  /** "10.1.2.3/24" */
  address: string
  gateway: string
  dns: string[]
  searchdomain?: string
}

export interface Ami {
  name: string
  email?: string
  /** The AMI's age public key ("age1…"): handoffs are encrypted to it alone. */
  ageRecipient: string
  /** SSH public key installed for the AMI's login on the VM (optional). */
  sshKey?: string
  /** Login name of the AMI on the VM (default "ami"). */
  login: string
}

/**
 * A Tryton database the establishment's server must have (inventory `databases:`): `pgi deploy`
 * creates it when missing — a copy of the image's template (pgi-db create) — and never touches
 * it once it exists.
 */
export interface DeclaredDatabase {
  /** PostgreSQL/Tryton name (`^[a-z][a-z0-9_]{0,62}$`, not one of the engine's reserved names). */
  name: string
  /** Name of its company (its party): the inventory's, else the establishment's name. */
  company: string
  /** Year of its first fiscal year; undefined: the current calendar year when deploy creates it. */
  fiscalYear?: number
  /** Chart of accounts: the French one (account_fr), the only one the image's template holds. */
  chart: 'fr'
  currency: 'EUR'
  source: SourceRef
}

export interface Establishment {
  /** UAI code, 7 digits + check letter, e.g. 0130040Y. */
  uai: string
  name: string
  academie: string
  hypervisor: string
  node: string
  vmid: number
  network: EstablishmentNetwork
  dataDiskGb: number
  /** OS disk size (the image is grown to it on import). */
  osDiskGb: number
  cores: number
  memoryMb: number
  /**
   * PVE's `cpu` option of the VM when pgi creates it (default x86-64-v2-AES: AES-NI and SSE4.2 for
   * TLS and PostgreSQL's checksums, on any x86 server CPU of the last fifteen years, and movable
   * between hosts of different generations); an existing VM keeps its own.
   */
  cpuType: string
  /**
   * Days a committed major upgrade keeps the old PostgreSQL cluster on the data disk before
   * `pgi rollout prune --old-clusters --expired` removes it (undefined: kept until pruned by hand).
   */
  oldClusterDays?: number
  ami: Ami
  /** Rollout ring: canary, pilot, general (or any ring the inventory defines). */
  ring: string
  maintenanceWindow?: MaintenanceWindow
  /** The image version the inventory wants this establishment to run. */
  image?: string
  /** Groups this establishment belongs to (from `groups:`). */
  groups: string[]
  /** The Tryton databases its server must have (default: one database `pgi`). */
  databases: DeclaredDatabase[]
  source: SourceRef
}

export interface Recipient {
  name: string
  /** age public key ("age1…"). */
  key: string
}

/** The inventory's `offsite:` section (docs/backups.md), defaults applied. */
export interface OffsiteSettings {
  /** restic repository URL the VMs push to, with {uai} (the template). */
  repository: string
  /** The same repositories as the Région's machine reaches them (default: repository). */
  regionRepository: string
  /** Per-establishment repositories (as the VM reaches them), instead of the template. */
  repositories: Map<string, string>
  retention: {daily: number; weekly: number; monthly: number}
  /** Upload cap of each VM's push, KiB/s. */
  limitUploadKib?: number
  /** "HH:MM-HH:MM", the VM's local time. */
  window?: string
  /** `pgi status`: the last off-site copy older than this is degraded (s; default 48 h). */
  maxAgeS: number
  /** Restore drills and lab restores; undefined when the section has no `drill:`. */
  drill?: DrillSettings
  source: SourceRef
}

/** The inventory's `offsite.drill:` (docs/backups.md): where scratch and lab VMs are made. */
export interface DrillSettings {
  hypervisor: string
  node: string
  /** First and last VM id pgi may take there (inclusive). */
  vmids: {first: number; last: number}
  /** Static address of lab and scratch VMs; undefined: DHCP. */
  network?: EstablishmentNetwork
  /** `pgi status`: the last good drill older than this is degraded (s; default 8 days). */
  maxAgeS: number
  source: SourceRef
}

/**
 * The inventory's `delivery:` section (docs/delivery.md): where the chunk store of published
 * image versions (`pgi image publish`) is served, for `pgi rollout stage --transfer delta|auto`,
 * and how stagings are paced (a total cap on the Région's uplink, a transfer window).
 */
export interface DeliverySettings {
  /** The store as the VMs reach it (http:// or https://): what each guest fetches chunks from. */
  storeUrl?: string
  /** The same store as this machine reads it (URL or absolute folder): the signed delivery.json. Default: storeUrl. */
  regionStore?: string
  /** The Région's uplink shared by all stagings of a run, KiB/s (`--total-bwlimit`). */
  totalBwlimitKiB?: number
  /** When image bytes may cross the schools' links (`--transfer-window`). */
  transferWindow?: TransferWindow
  /** The transfer window's time zone (default Europe/Paris). */
  timezone: string
  source: SourceRef
}

export interface Inventory {
  /** The file or folder it was read from. */
  path: string
  files: string[]
  region?: string
  /** Rollout rings in order (default canary, pilot, general). */
  rings: string[]
  /** Who can read the secret store: technicians' and CI's age public keys. */
  recipients: Recipient[]
  hypervisors: Map<string, Hypervisor>
  establishments: Establishment[]
  groups: Map<string, string[]>
  /** Off-site copies of the nightly backups; undefined when the inventory has no `offsite:`. */
  offsite?: OffsiteSettings
  /** The chunk store of published image versions; undefined when the inventory has no `delivery:`. */
  delivery?: DeliverySettings
}

/** One problem found by validation, with where it is and what to do. */
export interface InventoryProblem {
  file: string
  line: number
  column: number
  /** Stable rule id, e.g. "uai-check-letter", "unknown-key", "duplicate-vmid". */
  rule: string
  message: string
  suggestion?: string
  severity: 'error' | 'warning'
}
