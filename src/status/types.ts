/**
 * The model of `pgi status`: what was observed for each establishment (facts, each possibly
 * missing because a call failed or was not allowed) and the verdict drawn from it.
 *
 * Everything here is plain JSON: `pgi status --json` prints it as is (inside the BaseCommand
 * envelope), monitoring and scripts read it. Field names are stable.
 */

import type {RolloutMark} from '../fleet/vm-meta.js'

export type Verdict = 'healthy' | 'degraded' | 'down' | 'unknown'

export const VERDICTS: readonly Verdict[] = ['healthy', 'degraded', 'down', 'unknown']

/** Why a call did not give an answer, classified for people and scripts. */
export interface ProbeError {
  /** Stable pgi error code (PGI_UNREACHABLE, PGI_TLS_MISMATCH, PGI_PVE_PERMISSION, …). */
  code: string
  /** What the call was (e.g. "cluster/resources", "agent exec pgi-health"). */
  call: string
  message: string
  /** For PGI_PVE_PERMISSION: the privilege PVE asked for (from its 403 text), e.g. "VM.Audit". */
  privilege?: string
  /** For PGI_PVE_PERMISSION: the ACL path PVE checked, e.g. "/vms/1001". */
  path?: string
  /** Set when the call ran out of time (ms). */
  timeoutMs?: number
}

/** `/usr/local/sbin/pgi-health` output (the guest contract; every field optional when read back). */
export interface PgiHealthReport {
  healthy: boolean
  image?: {name?: string; version?: string}
  checks: {
    postgresql?: {ok: boolean; detail?: string}
    trytond?: {ok: boolean; version?: string; detail?: string}
    web?: {ok: boolean; detail?: string}
    data_disk?: {ok: boolean; mounted?: boolean; used_bytes?: number; size_bytes?: number; used_pct?: number; detail?: string}
    backup?: {ok: boolean; last?: string | null; age_s?: number | null; detail?: string}
    [check: string]: {ok: boolean; [k: string]: unknown} | undefined
  }
  databases: {name: string; modules?: Record<string, string>}[]
  problems: string[]
  /** The last off-site push (pgi-offsite's status, reported by pgi-health; never part of `healthy`). */
  offsite?: {configured: boolean; state?: string | null; last_success_at?: string | null; age_s?: number | null; error_class?: string | null; error?: string | null}
}

/**
 * A rollout mark found on the VM (src/fleet/vm-meta.ts), with what it means now (not the state of
 * a whole rollout: that is src/rollout/journal.ts's RolloutState).
 */
export interface RolloutMarkState extends Pick<RolloutMark, 'id' | 'from' | 'to' | 'step' | 'at' | 'runner' | 'reason'> {
  /** done: the last step was a commit; failed: it ended in failure/rollback; pending: half-way. */
  state: 'pending' | 'failed' | 'done'
}

/** Everything observed about one establishment. `undefined` means "not known" (never guessed). */
export interface Observation {
  uai: string
  name: string
  hypervisor: string
  /** Node the inventory names. */
  node: string
  vmid: number
  /** Image version the inventory wants (undefined when the inventory says nothing). */
  wantedImage?: string

  /** The hypervisor answered cluster/resources (false: it did not; see hypervisorError). */
  hypervisorReachable: boolean
  hypervisorError?: ProbeError

  /** undefined when the VM's existence could not be established (see vmError). */
  vmPresent?: boolean
  /** Node the VM was found on (may differ from the inventory's). */
  vmNode?: string
  /** PVE status: running, stopped, paused, unknown (node offline)… */
  vmState?: string
  uptimeS?: number
  lock?: string
  template?: boolean
  tags?: string
  vmError?: ProbeError

  /** From the VM description's pgi-meta line. */
  metaImage?: string
  tagImage?: string
  deployedAt?: string
  rollout?: RolloutMarkState
  metaError?: ProbeError

  /** The guest agent answered (exec or ping); undefined when not asked (VM not running) or not allowed. */
  agentAnswering?: boolean
  agentError?: ProbeError
  /** The pgi-health report, when it ran and printed JSON. */
  health?: PgiHealthReport
  /** Exit code of pgi-health (0 healthy, 1 unhealthy, anything else: it failed). */
  healthExitCode?: number
  healthError?: ProbeError
  /** Data-disk usage from the agent's get-fsinfo (used when pgi-health could not run). */
  fsDataDisk?: {usedBytes: number; sizeBytes: number; mountpoint: string}

  /**
   * How `health` (or `healthError`) was learnt: pgi-health run through the guest agent (exec), or
   * the result the server records every 2 minutes (/run/pgi/health.json) read through the agent
   * (file-read), when the token may read files but not run commands (an AMI's, on PVE 9).
   */
  healthVia?: 'agent-exec' | 'health-record'
  /** When the server wrote that record (ISO, the server's clock). */
  healthRecordAt?: string
  /** The record could not be read (refused, absent, not JSON, agent not answering). */
  healthRecordError?: ProbeError
  /** The record does not exist on the server (an image without the pgi-health timer, or just booted). */
  healthRecordMissing?: boolean

  /**
   * `pgi-db list` run in the guest (sizes, last backup of each database), when asked for (one
   * establishment's details) and the token may run commands there.
   */
  dbList?: {name: string; size: number; modules: string[]; last_backup: {id: string; date: string; kind: string} | null; kind?: string | null; company?: string | null}[]
  dbListError?: ProbeError
}

/** One database of an establishment's server, as status shows it. */
export interface DatabaseStatus {
  name: string
  /** Activated modules and their versions (the versions only from pgi-health). */
  modules: Record<string, string>
  /** Bytes, from `pgi-db list` (null when it was not run: a read-only token, a fleet-wide run). */
  sizeBytes: number | null
  /** Its newest backup (nightly set or pgi-db dump), from `pgi-db list`; null when none or not known. */
  lastBackup: {date: string; kind: string} | null
  /** pgi-health's real Tryton login into it: true/false, null when it is not one pgi-health logs into. */
  login: boolean | null
  /** Its company, from `pgi-db list`. */
  company?: string | null
}

export interface EstablishmentStatus {
  uai: string
  name: string
  hypervisor: string
  node: string
  vmid: number
  verdict: Verdict
  /** The main reason, in plain words ("PostgreSQL is not running on the server"); "all checks passed" when healthy. */
  reason: string
  /** Every reason that made the verdict (first = `reason`). */
  reasons: string[]
  /** Things worth knowing that do not change the verdict (image drift, rollout in progress, a lock…). */
  notes: string[]
  hypervisorReachable: boolean
  vm: {present: boolean | null; state: string | null; uptimeS: number | null; lock: string | null}
  image: {wanted: string | null; recorded: string | null; running: string | null}
  agent: {answering: boolean | null}
  /** Per check of pgi-health: true ok, false failing, null unknown. */
  checks: Record<string, boolean | null>
  dataDisk: {usedBytes: number; sizeBytes: number; usedRatio: number; source: 'pgi-health' | 'agent-fsinfo'} | null
  backup: {last: string | null; ageS: number | null} | null
  /**
   * The off-site copy as the server reports it (pgi-offsite via pgi-health): configured, the last
   * push's state, the last good one and its age, the class of the last failure. null when the
   * server did not say (an image without pgi-offsite, health unknown).
   */
  offsite: {configured: boolean; state: string | null; lastSuccess: string | null; ageS: number | null; errorClass: string | null} | null
  /**
   * Restore drills (`pgi backup drill`, recorded on this machine): the last one, whether it passed
   * (with the reason when not), the last good one and its age. null when it never had one.
   */
  drill?: {lastAt: string; lastOk: boolean; lastReason: string | null; lastGoodAt: string | null; ageS: number | null} | null
  databases: DatabaseStatus[] | null
  rollout: RolloutMarkState | null
  /** pgi-health's own problem list, verbatim. */
  problems: string[]
  /**
   * How the health was learnt: pgi-health run live (agent exec), or the server's record of it read
   * through the agent (file-read), with the time it was written, its age at this run, and whether it
   * is older than the threshold (then its checks are not used). null when neither could be done.
   */
  healthCheck: {via: 'agent-exec' | 'health-record'; recordedAt: string | null; ageS: number | null; stale: boolean} | null
  /** Calls that failed, with the privilege when PVE refused one. */
  errors: ProbeError[]
}

export interface HypervisorSummary {
  name: string
  reachable: boolean
  error: ProbeError | null
  establishments: number
  /** Wall time spent on this hypervisor's calls (ms). */
  durationMs: number
}

export interface StatusReport {
  /** ISO time the run started. */
  checkedAt: string
  durationMs: number
  summary: Record<Verdict, number> & {total: number}
  establishments: EstablishmentStatus[]
  hypervisors: HypervisorSummary[]
}

/** The thresholds the verdict uses (defaults in verdict.ts). */
export interface VerdictPolicy {
  /** Data disk used ratio from which the server is degraded (0..1). */
  diskFullRatio: number
  /** Age of the last backup beyond which the server is degraded (seconds). */
  backupMaxAgeS: number
  /** A VM younger than this with no backup yet is not degraded for it (seconds since deploy/boot). */
  backupGraceS: number
  /** A running VM whose agent does not answer is "starting" (unknown) below this uptime, degraded above (s). */
  agentBootGraceS: number
  /** A rollout step pending for longer than this is reported as stalled (degraded) (s). */
  rolloutStallS: number
  /**
   * The server's health record (read when the token may not run pgi-health) older than this is
   * stale: its checks are not used and the verdict is unknown (s). The image writes it every 2 min.
   */
  healthRecordMaxAgeS: number
  /**
   * Age of the last off-site copy beyond which the server is degraded (s): the inventory's
   * offsite.max_age_hours. Absent when the inventory has no offsite: section (not judged).
   */
  offsiteMaxAgeS?: number
}
