/**
 * Opening the fleet: the one way every command that works on establishments' VMs starts (deploy,
 * rollout, status, credentials, destroy, db). Loads the inventory (or takes it loaded), selects the
 * establishments of the run, opens the secret store, and builds one client per hypervisor (the
 * inventory's token, or one token given for the run — an AMI's own), opened lazily on first use
 * and closed by `close()`.
 *
 * ```ts
 * const fleet = await FleetSession.open({inventory: inventoryPath, selection: {uais}, secretsDir, io, store: 'always'})
 * try { const api = await fleet.hypervisors.get(fleet.establishments[0].hypervisor) } finally { await fleet.close() }
 * ```
 *
 * The steps run in this order (what failed first is what a user is told): inventory, selection,
 * the run's token, the secret store, the hypervisor clients.
 */
import {UsageError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {Hypervisors, type PveConnector} from '../hypervisors.js'
import type {Io} from '../io.js'
import {loadValidInventory} from '../inventory/load.js'
import {findEstablishment, selectEstablishments, type Selection} from '../inventory/select.js'
import type {Establishment, Hypervisor, Inventory} from '../inventory/types.js'
import type {Secret} from '../secret.js'
import {SecretStore} from '../secrets/store.js'
import {requireRunningVm, type GuestTarget} from './guest.js'

/** PVE API token ids: USER@REALM!TOKENID. */
export const TOKEN_ID_RE = /^[^\s@!]+@[^\s@!]+![A-Za-z][A-Za-z0-9._-]*$/

/**
 * Opens the store of an inventory: encrypted to its `recipients` (plus the local identity). With
 * `io`, warns when the inventory lists nobody (only this machine could read what it writes) or
 * when the local key is not listed (the others' files will not open here).
 */
export async function openInventoryStore(inventory: Pick<Inventory, 'recipients'>, dir: string, env: NodeJS.ProcessEnv = process.env, io?: Io): Promise<SecretStore> {
  const listed = inventory.recipients.map((r) => r.key)
  const store = await SecretStore.open({dir, recipients: listed, env})
  const mine = store.ownRecipients
  if (listed.length === 0) {
    io?.warn(`the inventory lists no recipients: secrets written now are readable only with this machine's key (${mine.join(', ')}); add the technicians' and CI's keys under \`recipients:\``)
  } else if (!mine.some((k) => listed.includes(k))) {
    io?.warn(`your age key (${mine.join(', ')}) is not in the inventory's recipients: secrets written by others will not open here; add it under \`recipients:\` and ask a colleague to run \`pgi credentials reencrypt\``)
  }
  return store
}

export interface FleetOpenOptions {
  /** The inventory, already loaded, or its path. */
  inventory: Inventory | string
  io: Io
  /**
   * The establishments of the run: a selection (UAIs, a group, --all; selecting nothing is a usage
   * error), or establishments already chosen (library use). Absent: none (commands that name one
   * later, with establishment()).
   */
  selection?: Selection | {establishments: readonly Establishment[]}
  secretsDir?: string
  /**
   * When the secret store is opened. 'always': the run reads or writes establishments' secrets
   * (deploy, rollout, credentials, destroy). 'for-tokens' (default): only when the token of a
   * hypervisor of the run lives there (status, db: they read no establishment secret), and only
   * when secretsDir is given.
   */
  store?: 'always' | 'for-tokens'
  /** With store 'always': warn when the inventory's recipients do not fit this machine's key (credentials commands). */
  warnRecipients?: boolean
  env?: NodeJS.ProcessEnv
  /**
   * Use this API token for every hypervisor instead of the inventory's (an AMI's own token). Its
   * secret may be read when the token is used (after the inventory and the selection: what is
   * wrong with those is said first).
   */
  token?: {id: string; secret: Secret | (() => Secret)}
  /** A token id shown as an example when --token-id is malformed. */
  tokenExample?: string
  requestTimeoutMs?: number
  /** How to open a PveApi (status's no-retry client, tests, labs); default: the real client, pinned TLS. */
  connect?: PveConnector
}

export class FleetSession {
  private constructor(
    readonly inventory: Inventory,
    /** The establishments selected at open (in inventory order), empty without a selection. */
    readonly establishments: readonly Establishment[],
    /** One client per hypervisor, opened on first use, shared by the whole run. */
    readonly hypervisors: Hypervisors,
    private readonly store: SecretStore | undefined,
    /** The environment of the run (state folders, token references). */
    readonly env: NodeJS.ProcessEnv,
  ) {}

  static async open(opts: FleetOpenOptions): Promise<FleetSession> {
    const env = opts.env ?? process.env
    const inventory = typeof opts.inventory === 'string' ? await loadValidInventory(opts.inventory) : opts.inventory
    const sel = opts.selection
    const establishments = sel === undefined ? [] : 'establishments' in sel ? [...sel.establishments] : selectEstablishments(inventory, sel)
    let hvMap: Map<string, Hypervisor> = inventory.hypervisors
    let hvEnv = env
    if (opts.token) {
      const {id} = opts.token
      const secret = typeof opts.token.secret === 'function' ? opts.token.secret() : opts.token.secret
      if (!TOKEN_ID_RE.test(id)) {
        throw new UsageError(`--token-id "${id}" is not a PVE API token id (USER@REALM!TOKENID)`, {
          where: {flag: 'token-id'},
          suggestions: [`Write it as shown by \`pveum user token list\`, e.g. ${opts.tokenExample ?? 'ami-0130040y@pve!db'}.`],
        })
      }
      // the run's token replaces every hypervisor's; its secret is handed over in a private env
      const key = '__PGI_FLEET_TOKEN_SECRET'
      hvEnv = {...env, [key]: secret.reveal()}
      hvMap = new Map([...hvMap].map(([name, hv]) => [name, {...hv, token: {id, secret: {env: key}}}]))
    }
    let store: SecretStore | undefined
    if (opts.store === 'always') {
      if (opts.secretsDir === undefined) throw new Error('FleetSession.open: store "always" needs secretsDir')
      store = await openInventoryStore(inventory, opts.secretsDir, env, opts.warnRecipients ? opts.io : undefined)
    } else if (opts.secretsDir !== undefined) {
      // the hypervisors of the selected establishments, or all of them when none is selected yet
      const used = sel === undefined ? [...hvMap.keys()] : [...new Set(establishments.map((e) => e.hypervisor))]
      const needsStore = used.some((name) => {
        const ref = hvMap.get(name)?.token.secret
        return ref !== undefined && 'store' in ref
      })
      if (needsStore) store = await SecretStore.open({dir: opts.secretsDir, recipients: inventory.recipients.map((r) => r.key), env})
    }
    const hypervisors = new Hypervisors(
      {hypervisors: hvMap},
      {io: opts.io, env: hvEnv, ...(store ? {store} : {}), ...(opts.requestTimeoutMs === undefined ? {} : {requestTimeoutMs: opts.requestTimeoutMs}), ...(opts.connect ? {connect: opts.connect} : {})},
    )
    return new FleetSession(inventory, establishments, hypervisors, store, env)
  }

  /** The secret store (opened with store 'always'; otherwise only when a token lives there). */
  get secrets(): SecretStore {
    if (!this.store) throw new Error('FleetSession: the secret store was not opened (open with store: "always")')
    return this.store
  }

  /** The establishments named (or `all`, or a group), as `pgi status` selects them. */
  async select(sel: Selection): Promise<Establishment[]> {
    return selectEstablishments(this.inventory, sel)
  }

  /** One establishment by UAI (UNKNOWN_ESTABLISHMENT with suggestions otherwise). */
  async establishment(uai: string): Promise<Establishment> {
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

/**
 * A service request that names its fleet (deploy, rollout): the inventory (a path, or loaded), the
 * establishments, the secret store those services read and write.
 */
export interface FleetRequest {
  inventoryPath: string
  /** Already loaded inventory (library use, tests). */
  inventory?: Inventory
  selection: Selection
  secretsDir: string
  io: Io
  env?: NodeJS.ProcessEnv
  connect?: PveConnector
  requestTimeoutMs?: number
}

/** Runs `fn` on the fleet of `req` (secret store always open), then closes its hypervisor connections whatever happened. */
export async function withFleet<T>(req: FleetRequest, fn: (fleet: FleetSession) => Promise<T>): Promise<T> {
  const fleet = await FleetSession.open({
    inventory: req.inventory ?? req.inventoryPath,
    selection: req.selection,
    secretsDir: req.secretsDir,
    store: 'always',
    io: req.io,
    ...(req.env ? {env: req.env} : {}),
    ...(req.connect ? {connect: req.connect} : {}),
    ...(req.requestTimeoutMs === undefined ? {} : {requestTimeoutMs: req.requestTimeoutMs}),
  })
  try {
    return await fn(fleet)
  } finally {
    await fleet.close()
  }
}
