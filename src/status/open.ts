/**
 * What `pgi status` opens before it looks: the inventory, the establishments selected (every one
 * when none is named), the token (the inventory's, or an AMI's from --token-id and its secret in
 * the environment) and the status service over them. Loaded by the command when it runs (the
 * inventory loader and the Proxmox client are not loaded with every command: start-up time).
 */
import type {Io} from '../io.js'
import {Secret} from '../secret.js'
import {StatusService, tokenSecretFromEnv} from './service.js'

export interface OpenStatusRequest {
  inventoryPath: string
  /** UAIs, --all, --group; nothing named: every establishment. */
  selection: {uais: string[]; all: boolean; group?: string}
  secretsDir: string
  io: Io
  /** An API token id for every hypervisor instead of the inventory's (its secret from the environment). */
  tokenId?: string
  requestTimeoutMs: number
  healthTimeoutMs: number
  maxParallel: number
  perHypervisor: number
  healthMaxAgeS: number
  /** Repeated rounds (--watch): no per-database details. */
  watch: boolean
}

export async function openStatus(req: OpenStatusRequest): Promise<StatusService> {
  const t0 = performance.now()
  const {uais, all, group} = req.selection
  // the secret is read once the inventory and the selection are known good (what is wrong there is said first)
  const token = req.tokenId ? {id: req.tokenId, secret: () => new Secret(tokenSecretFromEnv())} : undefined
  const svc = await StatusService.open({
    inventory: req.inventoryPath,
    // nothing named: every establishment
    establishments: all || uais.length > 0 || group !== undefined ? {uais, all, group} : {all: true},
    io: req.io,
    secretsDir: req.secretsDir,
    ...(token ? {token} : {}),
    requestTimeoutMs: req.requestTimeoutMs,
    healthTimeoutMs: req.healthTimeoutMs,
    maxParallel: req.maxParallel,
    perHypervisor: req.perHypervisor,
    healthMaxAgeS: req.healthMaxAgeS,
    // one establishment: its details, with each database's size and last backup
    databaseDetails: req.watch ? false : 'one',
  })
  req.io.debug('status service ready', {ms: Math.round(performance.now() - t0), establishments: svc.establishments.length})
  return svc
}
