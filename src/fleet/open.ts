/**
 * Opening the fleet for work on establishments' VMs through the guest agent: load the inventory,
 * select establishments, open each hypervisor once (the inventory's token, or one token given for
 * the run — an AMI's own), and find an establishment's running VM as a GuestTarget.
 *
 * ```ts
 * const fleet = await FleetSession.open({inventoryPath, secretsDir, io})
 * try { const t = await fleet.guest(fleet.establishment('0130040Y')) } finally { await fleet.close() }
 * ```
 *
 * The same steps as `pgi status` and `pgi credentials` take (loadValidInventory,
 * selectEstablishments, the secret store only when a token lives there, one Hypervisors), in one
 * place for the commands that need a VM's guest agent (`pgi db`).
 */
import {UsageError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {Hypervisors, type PveConnector} from '../hypervisors.js'
import type {Io} from '../io.js'
import type {Establishment, Hypervisor, Inventory} from '../inventory/types.js'
import type {Secret} from '../secret.js'
import {SecretStore} from '../secrets/store.js'
import {requireRunningVm, type GuestTarget} from './guest.js'

/** PVE API token ids: USER@REALM!TOKENID. */
export const TOKEN_ID_RE = /^[^\s@!]+@[^\s@!]+![A-Za-z][A-Za-z0-9._-]*$/

export interface FleetOpenOptions {
  /** The inventory, already loaded, or its path. */
  inventory: Inventory | string
  io: Io
  /** The secret store, opened only when a hypervisor's token lives there. */
  secretsDir?: string
  env?: NodeJS.ProcessEnv
  /** Use this API token for every hypervisor instead of the inventory's (an AMI's own token). */
  token?: {id: string; secret: Secret}
  requestTimeoutMs?: number
  /** How to open a PveApi (tests, labs); default: the real client, pinned TLS. */
  connect?: PveConnector
}

export class FleetSession {
  private constructor(
    readonly inventory: Inventory,
    private readonly hypervisors: Hypervisors,
  ) {}

  static async open(opts: FleetOpenOptions): Promise<FleetSession> {
    const env = opts.env ?? process.env
    const inventory = typeof opts.inventory === 'string' ? await (await import('../inventory/load.js')).loadValidInventory(opts.inventory) : opts.inventory
    let hvMap: Map<string, Hypervisor> = inventory.hypervisors
    let hvEnv = env
    if (opts.token) {
      if (!TOKEN_ID_RE.test(opts.token.id)) {
        throw new UsageError(`--token-id "${opts.token.id}" is not a PVE API token id (USER@REALM!TOKENID)`, {
          where: {flag: 'token-id'},
          suggestions: ['Write it as shown by `pveum user token list`, e.g. ami-0130040y@pve!db.'],
        })
      }
      // the run's token replaces every hypervisor's; its secret is handed over in a private env
      const key = '__PGI_FLEET_TOKEN_SECRET'
      hvEnv = {...env, [key]: opts.token.secret.reveal()}
      hvMap = new Map([...hvMap].map(([name, hv]) => [name, {...hv, token: {id: opts.token!.id, secret: {env: key}}}]))
    }
    const needsStore = [...hvMap.values()].some((hv) => 'store' in hv.token.secret)
    let store: SecretStore | undefined
    if (needsStore && opts.secretsDir) {
      store = await SecretStore.open({dir: opts.secretsDir, recipients: inventory.recipients.map((r) => r.key), env})
    }
    const hypervisors = new Hypervisors(
      {hypervisors: hvMap},
      {io: opts.io, env: hvEnv, ...(store ? {store} : {}), ...(opts.requestTimeoutMs === undefined ? {} : {requestTimeoutMs: opts.requestTimeoutMs}), ...(opts.connect ? {connect: opts.connect} : {})},
    )
    return new FleetSession(inventory, hypervisors)
  }

  /** The establishments named (or `all`, or a group), as `pgi status` selects them. */
  async select(sel: {uais: string[]; all?: boolean; group?: string}): Promise<Establishment[]> {
    const {selectEstablishments} = await import('../inventory/select.js')
    return selectEstablishments(this.inventory, sel)
  }

  /** One establishment by UAI (UNKNOWN_ESTABLISHMENT with suggestions otherwise). */
  async establishment(uai: string): Promise<Establishment> {
    const {findEstablishment} = await import('../inventory/select.js')
    return findEstablishment(this.inventory, uai)
  }

  /**
   * The establishment's VM as a guest-agent target: it must exist and run (its guest agent is
   * what every database operation goes through).
   */
  async guest(est: Establishment): Promise<GuestTarget> {
    const api = await this.hypervisors.get(est.hypervisor)
    return requireRunningVm(api, est, ': its databases are reached through its guest agent, which needs it running', ExitCode.UNHEALTHY)
  }

  /** Closes every hypervisor connection the run opened. */
  async close(): Promise<void> {
    await this.hypervisors.close()
  }
}
