import {UsageError} from '../errors.js'
import {UnknownGroupError} from './errors.js'
import {displayPath, loadInventory} from './load.js'
import {findEstablishment, findHypervisor} from './select.js'
import {suggestAmong} from './suggest.js'
import type {Establishment, Hypervisor, Inventory, InventoryProblem, MaintenanceWindow, SecretRef} from './types.js'

/**
 * The services behind `pgi inventory validate|list|show`: plain objects for --json, built from the
 * resolved inventory. Nothing here ever reads a secret's value (only where it comes from).
 */

export interface ValidationReport {
  path: string
  files: string[]
  hypervisors: number
  establishments: number
  groups: number
  errors: number
  warnings: number
  valid: boolean
  problems: InventoryProblem[]
}

export async function validateInventory(path: string): Promise<ValidationReport> {
  const {inventory, problems} = await loadInventory(path)
  const errors = problems.filter((p) => p.severity === 'error').length
  return {
    path: displayPath(inventory.path),
    files: inventory.files,
    hypervisors: inventory.hypervisors.size,
    establishments: inventory.establishments.length,
    groups: inventory.groups.size,
    errors,
    warnings: problems.length - errors,
    valid: errors === 0,
    problems,
  }
}

export interface EstablishmentRow {
  uai: string
  name: string
  hypervisor: string
  node: string
  vmid: number
  address: string
  ring: string
  image: string | null
  groups: string[]
}

export interface ListFilter {
  group?: string
  ring?: string
  hypervisor?: string
}

/** The establishments, filtered (an unknown group, ring or hypervisor is an error with a suggestion). */
export function listEstablishments(inv: Inventory, f: ListFilter = {}): EstablishmentRow[] {
  let list = inv.establishments
  if (f.group !== undefined) {
    const members = new Set(inv.groups.get(f.group) ?? [])
    if (!inv.groups.has(f.group)) throwUnknownGroup(inv, f.group)
    list = list.filter((e) => members.has(e.uai))
  }
  if (f.ring !== undefined) {
    if (!inv.rings.includes(f.ring)) throwUnknownRing(inv, f.ring)
    list = list.filter((e) => e.ring === f.ring)
  }
  if (f.hypervisor !== undefined) {
    findHypervisor(inv, f.hypervisor)
    list = list.filter((e) => e.hypervisor === f.hypervisor)
  }
  return list.map((e) => ({
    uai: e.uai,
    name: e.name,
    hypervisor: e.hypervisor,
    node: e.node,
    vmid: e.vmid,
    address: e.network.address,
    ring: e.ring,
    image: e.image ?? null,
    groups: e.groups,
  }))
}

export type SecretSource = {from: 'env'; name: string; set: boolean} | {from: 'store'; key: string}

export interface HypervisorDetail {
  kind: 'hypervisor'
  name: string
  url: string
  nodes: string[]
  pveVersion: string | null
  tls: {fingerprint: string | null; caFile: string | null}
  token: {id: string; secret: SecretSource}
  storage: Hypervisor['storage']
  bridge: string
  ssh: Hypervisor['ssh'] | null
  establishments: string[]
  source: string
}

export interface EstablishmentDetail extends Pick<Establishment, 'uai' | 'name' | 'academie' | 'hypervisor' | 'node' | 'vmid' | 'ring'> {
  kind: 'establishment'
  image: string | null
  groups: string[]
  network: Establishment['network']
  dataDiskGb: number
  osDiskGb: number
  cores: number
  memoryMb: number
  ami: Establishment['ami']
  maintenanceWindow: MaintenanceWindow | null
  /** The Tryton databases its server must have (fiscalYear null: the current year when deploy creates it). */
  databases: {name: string; company: string; fiscalYear: number | null; chart: string; currency: string}[]
  source: string
}

/** Where a secret comes from — never its value. For env, whether the variable is set here. */
export function secretSource(ref: SecretRef, env: NodeJS.ProcessEnv = process.env): SecretSource {
  return 'env' in ref ? {from: 'env', name: ref.env, set: Boolean(env[ref.env])} : {from: 'store', key: ref.store}
}

/** The resolved detail of an establishment (by UAI) or a hypervisor (by name). */
export function describeTarget(inv: Inventory, target: string, env: NodeJS.ProcessEnv = process.env): EstablishmentDetail | HypervisorDetail {
  if (inv.hypervisors.has(target)) return describeHypervisor(inv, findHypervisor(inv, target), env)
  // a UAI starts with digits; anything else that is not a UAI of the inventory is taken as a hypervisor name
  if (!/^\d/.test(target.trim()) && !inv.establishments.some((e) => e.uai === target.trim().toUpperCase())) findHypervisor(inv, target)
  const e = findEstablishment(inv, target)
  return {
    kind: 'establishment',
    uai: e.uai,
    name: e.name,
    academie: e.academie,
    hypervisor: e.hypervisor,
    node: e.node,
    vmid: e.vmid,
    ring: e.ring,
    image: e.image ?? null,
    groups: e.groups,
    network: e.network,
    dataDiskGb: e.dataDiskGb,
    osDiskGb: e.osDiskGb,
    cores: e.cores,
    memoryMb: e.memoryMb,
    ami: e.ami,
    maintenanceWindow: e.maintenanceWindow ?? null,
    databases: e.databases.map((d) => ({name: d.name, company: d.company, fiscalYear: d.fiscalYear ?? null, chart: d.chart, currency: d.currency})),
    source: `${e.source.file}:${e.source.line}:${e.source.column}`,
  }
}

function describeHypervisor(inv: Inventory, hv: Hypervisor, env: NodeJS.ProcessEnv): HypervisorDetail {
  return {
    kind: 'hypervisor',
    name: hv.name,
    url: hv.url,
    nodes: hv.nodes,
    pveVersion: hv.pveVersion ?? null,
    tls: {fingerprint: hv.tls.fingerprint ?? null, caFile: hv.tls.caFile ? displayPath(hv.tls.caFile) : null},
    token: {id: hv.token.id, secret: secretSource(hv.token.secret, env)},
    storage: hv.storage,
    bridge: hv.bridge,
    ssh: hv.ssh ?? null,
    establishments: inv.establishments.filter((e) => e.hypervisor === hv.name).map((e) => e.uai),
    source: `${hv.source.file}:${hv.source.line}:${hv.source.column}`,
  }
}

function throwUnknownGroup(inv: Inventory, group: string): never {
  throw new UnknownGroupError(group, suggestAmong(group, [...inv.groups.keys()], 'groups'))
}

function throwUnknownRing(inv: Inventory, ring: string): never {
  throw new UsageError(`no ring named "${ring}" in the inventory`, {suggestions: [suggestAmong(ring, inv.rings, 'rings')]})
}
