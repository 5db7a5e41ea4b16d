import type {ProblemList} from './source.js'
import {int, isRecord, str, type Item} from './rule-values.js'
import type {DrillSettings, Establishment, Hypervisor, OffsiteSettings} from './types.js'

/**
 * The inventory's `offsite:` section (off-site copies of the nightly backups, docs/backups.md):
 * what JSON Schema cannot say — every establishment gets a repository of its own (the AMI has sudo
 * on the VM and may read its key and URL, so two establishments sharing a repository could read or
 * fill each other's history), per-establishment entries name establishments of the inventory —
 * and the settings resolved with their defaults.
 */

export const DEFAULT_RETENTION = {daily: 7, weekly: 4, monthly: 12} as const
/** `pgi status`'s threshold (docs/backups.md): two nights without an off-site copy. */
export const DEFAULT_OFFSITE_MAX_AGE_HOURS = 48
export const UAI_PLACEHOLDER = '{uai}'

/** "2M" → 2048, "512K" / "512" / 512 → 512 (KiB/s); undefined when not a cap. */
export function parseBandwidthKib(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isInteger(v) && v > 0 ? v : undefined
  if (typeof v !== 'string') return undefined
  const m = /^([1-9][0-9]*)([KkMm]?)$/.exec(v)
  if (!m) return undefined
  return Number(m[1]) * (m[2].toLowerCase() === 'm' ? 1024 : 1)
}

export function checkOffsite(item: Item | undefined, establishments: readonly Establishment[], hypervisors: ReadonlyMap<string, Hypervisor>, P: ProblemList, complete: boolean): OffsiteSettings | undefined {
  if (!item || !isRecord(item.value)) return undefined
  const v = item.value
  const {src, path} = item
  const repository = str(v.repository)
  if (repository === undefined) return undefined
  const regionRepository = str(v.region_repository) ?? repository
  const repositories = new Map<string, string>()
  if (isRecord(v.repositories)) for (const [uai, url] of Object.entries(v.repositories)) if (typeof url === 'string') repositories.set(uai, url)
  const known = new Set(establishments.map((e) => e.uai))
  if (complete) {
    for (const uai of repositories.keys()) {
      if (!known.has(uai)) {
        P.add(src, [...path, 'repositories', uai], 'unknown-establishment', `offsite.repositories names ${uai}, which is not an establishment of the inventory`, {
          at: 'key',
          suggestion: 'remove the entry, or correct the UAI',
        })
      }
    }
  }
  const needTemplate = establishments.some((e) => !repositories.has(e.uai))
  if (needTemplate && !repository.includes(UAI_PLACEHOLDER)) {
    P.add(src, [...path, 'repository'], 'offsite-shared-repository', `offsite.repository "${repository}" has no ${UAI_PLACEHOLDER}: every establishment would push to the same repository`, {
      suggestion: `put ${UAI_PLACEHOLDER} where each establishment's repository goes (e.g. rest:https://sauvegardes.region.example:8000/${UAI_PLACEHOLDER}/), or give each one under offsite.repositories: each AMI may read its VM's key`,
    })
  }
  if (v.region_repository !== undefined && needTemplate && !regionRepository.includes(UAI_PLACEHOLDER)) {
    P.add(src, [...path, 'region_repository'], 'offsite-shared-repository', `offsite.region_repository "${regionRepository}" has no ${UAI_PLACEHOLDER}`, {
      suggestion: `put ${UAI_PLACEHOLDER} where each establishment's repository goes, as in offsite.repository`,
    })
  }
  // two establishments resolving to the same repository (a per-establishment URL equal to another's)
  const seen = new Map<string, string>()
  for (const e of establishments) {
    const url = repositories.get(e.uai) ?? repository.split(UAI_PLACEHOLDER).join(e.uai)
    const prev = seen.get(url)
    if (prev !== undefined && (repositories.has(e.uai) || repository.includes(UAI_PLACEHOLDER))) {
      P.add(src, repositories.has(e.uai) ? [...path, 'repositories', e.uai] : [...path, 'repository'], 'offsite-shared-repository', `${e.uai} and ${prev} would push to the same repository ${url}`, {
        suggestion: 'give each establishment a repository of its own',
      })
    } else seen.set(url, e.uai)
  }
  const bandwidthValue = v.bandwidth
  const limitUploadKib = parseBandwidthKib(bandwidthValue)
  if (bandwidthValue !== undefined && limitUploadKib === undefined) {
    P.add(src, [...path, 'bandwidth'], 'offsite-bandwidth', `offsite.bandwidth ${JSON.stringify(bandwidthValue)} is not a bandwidth`, {
      suggestion: 'KiB/s as a number (512), or with a unit: 512K, 2M',
    })
  }
  const r = isRecord(v.retention) ? v.retention : {}
  const retention = {
    daily: int(r.daily) ?? DEFAULT_RETENTION.daily,
    weekly: int(r.weekly) ?? DEFAULT_RETENTION.weekly,
    monthly: int(r.monthly) ?? DEFAULT_RETENTION.monthly,
  }
  if (retention.daily + retention.weekly + retention.monthly === 0) {
    P.add(src, [...path, 'retention'], 'offsite-retention', 'offsite.retention keeps nothing: `pgi backup prune` would remove every off-site copy', {
      suggestion: 'keep at least one (defaults: daily 7, weekly 4, monthly 12)',
    })
  }
  const window = str(v.window)
  const drill = isRecord(v.drill) ? checkDrill({src, path: [...path, 'drill'], value: v.drill}, establishments, hypervisors, P) : undefined
  return {
    repository,
    regionRepository,
    repositories,
    retention,
    ...(limitUploadKib !== undefined ? {limitUploadKib} : {}),
    ...(window !== undefined ? {window} : {}),
    maxAgeS: (int(v.max_age_hours) ?? DEFAULT_OFFSITE_MAX_AGE_HOURS) * 3600,
    ...(drill ? {drill} : {}),
    source: src.ref(path, 'key'),
  }
}

/** The repository of `uai` as its VM reaches it, and as the Région's machine does. */
export function offsiteRepositories(o: OffsiteSettings, uai: string): {vm: string; region: string} {
  const vm = o.repositories.get(uai) ?? o.repository.split(UAI_PLACEHOLDER).join(uai)
  const region = o.repositories.has(uai) && o.regionRepository === o.repository ? vm : o.regionRepository.split(UAI_PLACEHOLDER).join(uai)
  return {vm, region}
}

/** `pgi status`'s drill threshold (docs/backups.md): a weekly drill missed. */
export const DEFAULT_DRILL_MAX_AGE_DAYS = 8

/**
 * `offsite.drill:`: the hypervisor and node exist, and its VM id range holds no establishment's
 * vmid on that hypervisor (a scratch VM must never take, or be taken for, an establishment's VM).
 */
function checkDrill(item: Item, establishments: readonly Establishment[], hypervisors: ReadonlyMap<string, Hypervisor>, P: ProblemList): DrillSettings | undefined {
  if (!isRecord(item.value)) return undefined
  const v = item.value
  const {src, path} = item
  const name = str(v.hypervisor)
  const ids = Array.isArray(v.vmids) ? v.vmids.map(int) : []
  if (name === undefined || ids.length !== 2 || ids.some((n) => n === undefined)) return undefined
  const hv = hypervisors.get(name)
  if (!hv) {
    P.add(src, [...path, 'hypervisor'], 'unknown-hypervisor', `offsite.drill.hypervisor "${name}" is not a hypervisor of the inventory`, {
      suggestion: `one of: ${[...hypervisors.keys()].join(', ') || '(none)'}`,
    })
    return undefined
  }
  const node = str(v.node) ?? hv.nodes[0]
  if (node === undefined || !hv.nodes.includes(node)) {
    P.add(src, [...path, 'node'], 'unknown-node', `offsite.drill.node "${node ?? ''}" is not a node of hypervisor ${name}`, {suggestion: `one of: ${hv.nodes.join(', ')}`})
    return undefined
  }
  const [first, last] = ids as [number, number]
  if (first > last) {
    P.add(src, [...path, 'vmids'], 'drill-vmids', `offsite.drill.vmids [${first}, ${last}]: the first is after the last`, {suggestion: 'give the first and the last id of the range, e.g. [9900, 9999]'})
    return undefined
  }
  const taken = establishments.filter((e) => e.hypervisor === name && e.vmid >= first && e.vmid <= last)
  for (const e of taken) {
    P.add(src, [...path, 'vmids'], 'drill-vmid-collision', `offsite.drill.vmids [${first}, ${last}] holds vmid ${e.vmid} of ${e.uai} on ${name}`, {
      suggestion: 'choose a range no establishment uses on that hypervisor: scratch VMs are deleted after each drill',
    })
  }
  if (taken.length > 0) return undefined
  const n = isRecord(v.network) ? v.network : undefined
  const network = n && str(n.address) && str(n.gateway) ? {address: str(n.address)!, gateway: str(n.gateway)!, dns: Array.isArray(n.dns) ? n.dns.filter((d): d is string => typeof d === 'string') : []} : undefined
  return {
    hypervisor: name,
    node,
    vmids: {first, last},
    ...(network ? {network} : {}),
    maxAgeS: (int(v.max_age_days) ?? DEFAULT_DRILL_MAX_AGE_DAYS) * 86400,
    source: src.ref(path, 'key'),
  }
}
