import {UsageError} from '../errors.js'
import {UnknownEstablishmentError, UnknownGroupError, UnknownHypervisorError} from './errors.js'
import {suggestAmong} from './suggest.js'
import type {Establishment, Hypervisor, Inventory} from './types.js'
import {uaiCheckLetter, uaiProblem} from './uai.js'

export interface Selection {
  /** UAIs named on the command line. */
  uais?: string[]
  /** Every establishment of the inventory. */
  all?: boolean
  /** A group from `groups:`. */
  group?: string
}

/**
 * The establishments a fleet command acts on: the union of the UAIs given, the members of the
 * group, or all of them; in inventory order, each once. Unknown UAIs and groups are errors with a
 * "did you mean"; selecting nothing is a usage error (pgi never acts on "nothing" silently, nor on
 * "everything" without --all).
 */
export function selectEstablishments(inv: Inventory, sel: Selection): Establishment[] {
  if (sel.all) return [...inv.establishments]
  const wanted = new Set<string>()
  if (sel.group !== undefined) {
    const members = inv.groups.get(sel.group)
    if (!members) throw new UnknownGroupError(sel.group, suggestAmong(sel.group, [...inv.groups.keys()], 'groups'))
    for (const u of members) wanted.add(u)
  }
  for (const u of sel.uais ?? []) wanted.add(findEstablishment(inv, u).uai)
  if (wanted.size === 0) {
    throw new UsageError(
      sel.group !== undefined ? `group "${sel.group}" has no establishment` : 'no establishment selected',
      {suggestions: ['Name establishments by UAI, or pass --group NAME, or --all for every establishment.']},
    )
  }
  return inv.establishments.filter((e) => wanted.has(e.uai))
}

/** One establishment by UAI (case-insensitive), or UnknownEstablishmentError with a suggestion. */
export function findEstablishment(inv: Inventory, uai: string): Establishment {
  const u = uai.trim().toUpperCase()
  const e = inv.establishments.find((x) => x.uai === u)
  if (e) return e
  const all = inv.establishments.map((x) => x.uai)
  const pb = uaiProblem(u)
  let suggestion: string
  if (pb?.kind === 'check-letter') suggestion = `${u} has a wrong check letter: ${u.slice(0, 7)} gives ${pb.expected}${all.includes(pb.expected!) ? ' (in the inventory)' : ''}`
  else if (pb?.kind === 'format' && /^\d{7}$/.test(u)) suggestion = `a UAI ends with its check letter: ${u}${uaiCheckLetter(u)}`
  else suggestion = suggestAmong(u, all, 'UAIs')
  throw new UnknownEstablishmentError(u, suggestion)
}

/** One hypervisor by name, or UnknownHypervisorError with a suggestion. */
export function findHypervisor(inv: Inventory, name: string): Hypervisor {
  const hv = inv.hypervisors.get(name)
  if (hv) return hv
  throw new UnknownHypervisorError(name, suggestAmong(name, [...inv.hypervisors.keys()], 'hypervisors'))
}
