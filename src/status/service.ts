/**
 * `pgi status` as a library: open the hypervisors of the selected establishments (with the
 * inventory's tokens, or one token given for the run — an AMI's own), collect, and close.
 *
 * ```ts
 * const svc = await StatusService.open({inventory, establishments, io})
 * try { const report = await svc.collect() } finally { await svc.close() }
 * ```
 * The service keeps its hypervisor connections between `collect()` calls (for --watch).
 */
import {applyDrills} from './drill.js'
import {ErrorCode, UsageError} from '../errors.js'
import {FleetSession} from '../fleet/open.js'
import type {PveConnector} from '../hypervisors.js'
import type {Io} from '../io.js'
import type {Selection} from '../inventory/select.js'
import type {Establishment, Inventory} from '../inventory/types.js'
import {connectHypervisor} from '../proxmox/client.js'
import type {Secret} from '../secret.js'
import {collectStatus, STATUS_DEFAULTS} from './collect.js'
import type {StatusReport, VerdictPolicy} from './types.js'
import {DEFAULT_POLICY} from './verdict.js'

/** Environment variable that holds the secret of `--token-id` (never a flag value). */
export const TOKEN_SECRET_ENV = 'PGI_TOKEN_SECRET'

export interface StatusServiceOptions {
  /** The inventory, already loaded, or its path. */
  inventory: Inventory | string
  /** The establishments to look at: chosen already, or a selection (UAIs, a group, --all). */
  establishments: readonly Establishment[] | Selection
  io: Io
  /** The secret store, opened only when a selected hypervisor's token lives there. */
  secretsDir?: string
  env?: NodeJS.ProcessEnv
  /** Use this API token for every hypervisor instead of the inventory's (an AMI's own token). */
  token?: {id: string; secret: Secret | (() => Secret)}
  requestTimeoutMs?: number
  healthTimeoutMs?: number
  maxParallel?: number
  perHypervisor?: number
  policy?: VerdictPolicy
  /**
   * Age (s) past which the server's health record — read when the token may not run pgi-health —
   * is stale (default DEFAULT_POLICY.healthRecordMaxAgeS, 10 min; overrides `policy`'s).
   */
  healthMaxAgeS?: number
  /** How to open a PveApi (tests, labs); default: the real client, pinned TLS, no retries. */
  connect?: PveConnector
  /**
   * Also read each database's size and last backup (`pgi-db list` in the guest): for one
   * establishment's details ('one': when exactly one establishment is selected).
   */
  databaseDetails?: boolean | 'one'
}

/**
 * Status is a snapshot that a person or a monitoring job repeats: a network failure is reported at
 * once as "unreachable" rather than retried with back-off (which would hold one dead hypervisor's
 * lines for a minute). Hence no network retries here, unlike deploy; a server fault (a 500 naming
 * no reason) is sent again, quickly (at most 4 times, ~2 s of back-off), within the call's deadline.
 */
export const statusConnector: PveConnector = (hv, o) =>
  connectHypervisor(hv, {
    tokenSecret: o.tokenSecret,
    io: o.io,
    ...(o.requestTimeoutMs === undefined ? {} : {requestTimeoutMs: o.requestTimeoutMs}),
    retry: {networkRetries: 0, serverRetries: 4, baseDelayMs: 200, maxDelayMs: 1000},
  })

export class StatusService {
  private constructor(
    private readonly opts: StatusServiceOptions,
    private readonly fleet: FleetSession,
  ) {}

  /** Opens the fleet of the selected establishments (src/fleet/open.ts) with status's client: no network retries. */
  static async open(opts: StatusServiceOptions): Promise<StatusService> {
    const fleet = await FleetSession.open({
      inventory: opts.inventory,
      selection: Array.isArray(opts.establishments) ? {establishments: opts.establishments as readonly Establishment[]} : (opts.establishments as Selection),
      io: opts.io,
      ...(opts.secretsDir === undefined ? {} : {secretsDir: opts.secretsDir}),
      ...(opts.env ? {env: opts.env} : {}),
      ...(opts.token ? {token: opts.token} : {}),
      tokenExample: 'ami-0130040y@pve!status',
      requestTimeoutMs: opts.requestTimeoutMs ?? STATUS_DEFAULTS.requestTimeoutMs,
      connect: opts.connect ?? statusConnector,
    })
    return new StatusService(opts, fleet)
  }

  /** One status run over the selected establishments. */
  async collect(): Promise<StatusReport> {
    const establishments = this.fleet.establishments
    const details = this.opts.databaseDetails === 'one' ? establishments.length === 1 : this.opts.databaseDetails
    // the off-site copy is judged when the inventory asks for one (its max_age_hours)
    const offsite = this.fleet.inventory.offsite
    const base = {...(this.opts.policy ?? DEFAULT_POLICY), ...(this.opts.healthMaxAgeS === undefined ? {} : {healthRecordMaxAgeS: this.opts.healthMaxAgeS})}
    const policy = offsite ? {...base, offsiteMaxAgeS: base.offsiteMaxAgeS ?? offsite.maxAgeS} : base
    const report = await collectStatus({
      establishments,
      api: (name) => this.fleet.hypervisors.get(name),
      io: this.opts.io,
      ...pick(this.opts, ['requestTimeoutMs', 'healthTimeoutMs', 'maxParallel', 'perHypervisor']),
      ...(details === undefined ? {} : {databaseDetails: details}),
      policy,
    })
    // restore drills: recorded on this machine by pgi backup drill, judged when the inventory designates a drill hypervisor
    await applyDrills(report, offsite?.drill, this.fleet.env, new Date())
    return report
  }

  /** The establishments looked at. */
  get establishments(): readonly Establishment[] {
    return this.fleet.establishments
  }

  /** Closes the connections the run opened (their pools would otherwise keep the process alive). */
  async close(): Promise<void> {
    await this.fleet.close()
  }
}

function pick<T extends object, K extends keyof T>(o: T, keys: K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {}
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k]
  return out
}

/** The token secret of `--token-id`, from PGI_TOKEN_SECRET (a usage error when it is not set). */
export function tokenSecretFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  const v = env[TOKEN_SECRET_ENV]
  if (v === undefined || v === '') {
    throw new UsageError(`--token-id needs the token's secret in the environment variable ${TOKEN_SECRET_ENV}`, {
      suggestions: [`Export ${TOKEN_SECRET_ENV} (e.g. read it with \`read -rs ${TOKEN_SECRET_ENV}; export ${TOKEN_SECRET_ENV}\`); pgi never takes a secret as a flag value.`],
      details: {variable: TOKEN_SECRET_ENV, code: ErrorCode.SECRET_MISSING},
    })
  }
  return v
}
