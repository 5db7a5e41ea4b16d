import {connectHypervisor} from './proxmox/client.js'
import type {PveApi} from './proxmox/types.js'
import {resolveSecretRef, type SecretStore} from './secrets/store.js'
import {ErrorCode, UserError} from './errors.js'
import type {Io} from './io.js'
import type {Hypervisor, Inventory} from './inventory/types.js'
import type {Secret} from './secret.js'

/**
 * How to open one PveApi for one hypervisor. The default is `connectHypervisor` from
 * src/proxmox/client.ts (the real API, TLS pinned); tests and library users inject their own
 * (e.g. a client bound to a lab).
 */
export type PveConnector = (hv: Hypervisor, opts: {tokenSecret: Secret; io: Io; requestTimeoutMs?: number}) => Promise<PveApi> | PveApi

export interface HypervisorsOptions {
  /** The secret store holding `hypervisors/<name>/token` (refs of kind {store}); optional when all refs are {env}. */
  store?: SecretStore
  io: Io
  /** Environment for {env: NAME} token refs (default process.env). */
  env?: NodeJS.ProcessEnv
  /** Per-request timeout given to the client (default: the client's own). */
  requestTimeoutMs?: number
  /** Replace how a PveApi is opened (tests, labs). Default: connectHypervisor. */
  connect?: PveConnector
}

/**
 * The hypervisors of an inventory, each opened lazily on first use and then shared: one PveApi
 * per hypervisor for the whole run (deploy, status, rollout…), whatever the number of callers.
 *
 * ```ts
 * const hvs = new Hypervisors(inventory, {store, io})
 * const api = await hvs.get('hv-nord')    // resolves the token, opens the client once
 * ```
 *
 * The token secret is resolved with `resolveSecretRef` (secret store or environment) when the
 * hypervisor is first asked for, so a run that only touches one hypervisor never needs the others'
 * tokens. A failed open (missing token, unknown name) is not cached: the next `get` tries again.
 * Sharing one client per hypervisor also shares its deadline and breaker (src/proxmox/transport.ts):
 * a hypervisor found out of reach costs one deadline for the whole run, whoever asks.
 *
 * `close()` ends the run's connections (each service calls it when its work is done), so the
 * process exits with its last output, whatever failed.
 */
export class Hypervisors {
  private readonly open = new Map<string, Promise<PveApi>>()

  constructor(
    readonly inventory: Pick<Inventory, 'hypervisors'>,
    private readonly opts: HypervisorsOptions,
  ) {}

  /** Names of the hypervisors in the inventory. */
  names(): string[] {
    return [...this.inventory.hypervisors.keys()]
  }

  /** The inventory entry of `name`; throws UNKNOWN_HYPERVISOR. */
  definition(name: string): Hypervisor {
    const hv = this.inventory.hypervisors.get(name)
    if (!hv) {
      throw new UserError(ErrorCode.UNKNOWN_HYPERVISOR, `hypervisor "${name}" is not in the inventory`, {
        where: {hypervisor: name},
        suggestions: [`Known hypervisors: ${this.names().join(', ') || '(none)'}.`, 'Run `pgi inventory list` to see them.'],
      })
    }
    return hv
  }

  /** Closes every client opened so far (their connection pools); the object can be used again after. */
  async close(): Promise<void> {
    const opened = [...this.open.values()]
    this.open.clear()
    await Promise.allSettled(
      opened.map(async (p) => {
        const api = (await p) as PveApi & {close?: () => Promise<void>}
        await api.close?.()
      }),
    )
  }

  /** The PveApi of `name`, opened on first call (concurrent callers share the same opening). */
  get(name: string): Promise<PveApi> {
    let p = this.open.get(name)
    if (!p) {
      p = this.connect(name)
      this.open.set(name, p)
      p.catch(() => this.open.delete(name))
    }
    return p
  }

  private async connect(name: string): Promise<PveApi> {
    const hv = this.definition(name)
    const tokenSecret = await resolveSecretRef(hv.token.secret, this.opts.store, this.opts.env ?? process.env)
    const connect: PveConnector = this.opts.connect ?? defaultConnector
    return connect(hv, {tokenSecret, io: this.opts.io, requestTimeoutMs: this.opts.requestTimeoutMs})
  }
}

const defaultConnector: PveConnector = (hv, opts) =>
  connectHypervisor(hv, {tokenSecret: opts.tokenSecret, io: opts.io, ...(opts.requestTimeoutMs === undefined ? {} : {requestTimeoutMs: opts.requestTimeoutMs})})
