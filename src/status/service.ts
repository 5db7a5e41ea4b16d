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
import {ErrorCode, UsageError} from '../errors.js'
import {Hypervisors, type PveConnector} from '../hypervisors.js'
import type {Io} from '../io.js'
import type {Establishment, Hypervisor, Inventory} from '../inventory/types.js'
import {connectHypervisor} from '../proxmox/client.js'
import type {PveApi} from '../proxmox/types.js'
import type {Secret} from '../secret.js'
import {SecretStore} from '../secrets/store.js'
import {collectStatus, STATUS_DEFAULTS} from './collect.js'
import type {StatusReport, VerdictPolicy} from './types.js'
import {DEFAULT_POLICY} from './verdict.js'

/** Environment variable that holds the secret of `--token-id` (never a flag value). */
export const TOKEN_SECRET_ENV = 'PGI_TOKEN_SECRET'

/** PVE API token ids: USER@REALM!TOKENID. */
const TOKEN_ID_RE = /^[^\s@!]+@[^\s@!]+![A-Za-z][A-Za-z0-9._-]*$/

export interface StatusServiceOptions {
  inventory: Pick<Inventory, 'hypervisors' | 'recipients'>
  establishments: readonly Establishment[]
  io: Io
  /** The secret store, opened only when a selected hypervisor's token lives there. */
  secretsDir?: string
  env?: NodeJS.ProcessEnv
  /** Use this API token for every hypervisor instead of the inventory's (an AMI's own token). */
  token?: {id: string; secret: Secret}
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
  /** Also read each database's size and last backup (`pgi-db list` in the guest): for one establishment's details. */
  databaseDetails?: boolean
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
  private readonly opened = new Set<PveApi>()

  private constructor(
    private readonly opts: StatusServiceOptions,
    private readonly hypervisors: Hypervisors,
  ) {}

  static async open(opts: StatusServiceOptions): Promise<StatusService> {
    const env = opts.env ?? process.env
    const used = new Set(opts.establishments.map((e) => e.hypervisor))
    let hvMap: Map<string, Hypervisor> = opts.inventory.hypervisors
    let hvEnv = env
    if (opts.token) {
      if (!TOKEN_ID_RE.test(opts.token.id)) {
        throw new UsageError(`--token-id "${opts.token.id}" is not a PVE API token id (USER@REALM!TOKENID)`, {
          suggestions: ['Write it as shown by `pveum user token list`, e.g. ami-0130040y@pve!status.'],
        })
      }
      // the run's token replaces every hypervisor's; its secret is handed over in a private env
      const key = '__PGI_STATUS_TOKEN_SECRET'
      hvEnv = {...env, [key]: opts.token.secret.reveal()}
      hvMap = new Map([...hvMap].map(([name, hv]) => [name, {...hv, token: {id: opts.token!.id, secret: {env: key}}}]))
    }
    const needsStore = [...used].some((name) => {
      const ref = hvMap.get(name)?.token.secret
      return ref !== undefined && 'store' in ref
    })
    let store: SecretStore | undefined
    if (needsStore && opts.secretsDir) {
      store = await SecretStore.open({dir: opts.secretsDir, recipients: opts.inventory.recipients.map((r) => r.key), env})
    }
    const hypervisors = new Hypervisors(
      {hypervisors: hvMap},
      {
        io: opts.io,
        env: hvEnv,
        ...(store ? {store} : {}),
        requestTimeoutMs: opts.requestTimeoutMs ?? STATUS_DEFAULTS.requestTimeoutMs,
        connect: opts.connect ?? statusConnector,
      },
    )
    return new StatusService(opts, hypervisors)
  }

  /** One status run over the selected establishments. */
  async collect(): Promise<StatusReport> {
    return collectStatus({
      establishments: this.opts.establishments,
      api: async (name) => {
        const api = await this.hypervisors.get(name)
        this.opened.add(api)
        return api
      },
      io: this.opts.io,
      ...pick(this.opts, ['requestTimeoutMs', 'healthTimeoutMs', 'maxParallel', 'perHypervisor', 'policy', 'databaseDetails']),
      ...(this.opts.healthMaxAgeS === undefined ? {} : {policy: {...(this.opts.policy ?? DEFAULT_POLICY), healthRecordMaxAgeS: this.opts.healthMaxAgeS}}),
    })
  }

  /** Closes the connections the run opened (their pools would otherwise keep the process alive). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.opened].map((api) => (api as PveApi & {close?: () => Promise<void>}).close?.()))
    this.opened.clear()
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
