/**
 * The deploy plan: for each establishment, compare the inventory with what its hypervisor holds
 * and decide — create, continue (a VM pgi created whose deploy did not finish), drifted (which
 * settings differ), up to date, or blocked (and why). Planning only reads: it never sends a write
 * request, so `pgi deploy --dry-run` is safe against production.
 */
import {parseDescription} from '../fleet/vm-meta.js'
import {ErrorCode, PgiError, asPgiError, type ErrorCodeValue} from '../errors.js'
import type {Hypervisors} from '../hypervisors.js'
import type {ImageRef} from '../image/images.js'
import type {Establishment, Hypervisor} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi, PveNodeInfo, PveResource, PveVmConfig} from '../proxmox/types.js'
import {planDatabases, readPlannedDatabases, type PlannedDatabase} from './databases.js'
import {diffVm, importVolid, type DeployImage, type Drift} from './desired.js'

export type PlanAction = 'create' | 'continue' | 'drifted' | 'up-to-date' | 'blocked'

/** Which establishment's VM, where, and the image version wanted (from --image, else the inventory): what every row of a deploy names. */
export interface DeployTarget {
  uai: string
  name: string
  hypervisor: string
  node: string
  vmid: number
  image: string
}

export interface PlanItem extends DeployTarget {
  action: PlanAction
  /** For drifted: what differs (and whether deploy can fix it). */
  drifts: Drift[]
  /** For blocked: why, with the error code and what to do. */
  blocked?: {code: ErrorCodeValue; message: string; suggestions: string[]}
  /** The VM as found (undefined when there is none). */
  vm?: {running: boolean; configured: boolean; lock?: string}
  /** Short words for the plan table: what deploy will do. */
  summary: string
  /** The declared databases: there, to create, or not known yet (checked after the VM is healthy). */
  databases: PlannedDatabase[]
  /** Why the databases of a running VM could not be read (they are then left for the next deploy). */
  databasesError?: string
}

export interface PlanOptions {
  hypervisors: Hypervisors
  io: Io
  /** The image for an establishment (--image overrides the inventory). */
  imageRef: (est: Establishment) => ImageRef | undefined
  /** Verifies image `ref` (signature + checksum) and describes it; throws if missing or invalid. */
  resolveImage: (ref: ImageRef) => Promise<DeployImage>
}

/** The plan, and what was resolved while making it (reused by the run). */
export interface Plan {
  items: PlanItem[]
  /** Verified images by version (only those some item needs). */
  images: Map<string, DeployImage>
  /** VM configs read while planning, by UAI. */
  configs: Map<string, PveVmConfig>
}

interface HvState {
  api?: PveApi
  error?: PgiError
  nodes: Map<string, PveNodeInfo>
  vms: PveResource[]
  /** Per node: undefined when the import storage is usable, what it lacks, or the error reading it. */
  importOk: Map<string, string | PgiError | undefined>
}

export async function planDeploy(ests: readonly Establishment[], opts: PlanOptions): Promise<Plan> {
  const byHv = new Map<string, Establishment[]>()
  for (const e of ests) byHv.set(e.hypervisor, [...(byHv.get(e.hypervisor) ?? []), e])

  const states = new Map<string, HvState>()
  await Promise.all(
    [...byHv.keys()].map(async (name) => {
      const st: HvState = {nodes: new Map(), vms: [], importOk: new Map()}
      states.set(name, st)
      try {
        st.api = await opts.hypervisors.get(name)
        const [nodes, vms] = await Promise.all([st.api.nodes(), st.api.clusterResources('vm')])
        for (const n of nodes) st.nodes.set(n.node, n)
        st.vms = vms
      } catch (err) {
        st.error = asPgiError(err)
        opts.io.debug(`plan: ${name} could not be read`, {code: st.error.code})
      }
    }),
  )

  // images: resolve (and verify) each one once, only if some establishment needs it. The run finds
  // them by version (what VMs record): one run never wants two images of the same version
  const images = new Map<string, DeployImage>()
  const resolved = new Map<string, Promise<DeployImage | PgiError>>()
  const imageOf = (ref: ImageRef): Promise<DeployImage | PgiError> => {
    const key = `${ref.name}@${ref.version}`
    if (!resolved.has(key)) {
      resolved.set(
        key,
        opts.resolveImage(ref).then(
          (img) => (images.set(img.version, img), img),
          (err) => asPgiError(err),
        ),
      )
    }
    return resolved.get(key)!
  }

  const configs = new Map<string, PveVmConfig>()
  const items = await Promise.all(
    ests.map(async (est): Promise<PlanItem> => {
      const hv = opts.hypervisors.definition(est.hypervisor)
      const st = states.get(est.hypervisor)!
      const ref = opts.imageRef(est)
      const version = ref?.version
      const base = {uai: est.uai, name: est.name, hypervisor: est.hypervisor, node: est.node, vmid: est.vmid, image: version ?? '', drifts: [], databases: planDatabases(est.databases, undefined)}
      const blocked = (code: ErrorCodeValue, message: string, suggestions: string[] = [], vm?: PlanItem['vm']): PlanItem => ({
        ...base,
        action: 'blocked',
        blocked: {code, message, suggestions},
        vm,
        summary: `blocked: ${message}`,
      })
      if (!version) {
        return blocked(ErrorCode.IMAGE_NOT_FOUND, 'no image version: set `image:` in the inventory or pass --image', ['Run `pgi image list` to see the built versions.'])
      }
      if (st.error || !st.api) {
        const e = st.error!
        const unreachable = e.code === ErrorCode.UNREACHABLE || e.code === ErrorCode.TLS_MISMATCH
        return blocked(e.code, unreachable ? `hypervisor ${est.hypervisor} unreachable: ${e.message}` : `hypervisor ${est.hypervisor}: ${e.message}`, e.suggestions)
      }
      const api = st.api
      const node = st.nodes.get(est.node)
      if (!node) return blocked(ErrorCode.UNKNOWN_HYPERVISOR, `node ${est.node} is not part of ${est.hypervisor} (nodes: ${[...st.nodes.keys()].join(', ')})`, ['Fix `node:` of this establishment in the inventory.'])
      if (node.status !== 'online') return blocked(ErrorCode.UNREACHABLE, `node ${est.node} is ${node.status}`, ['Bring the node back online, then run deploy again.'])

      const res = st.vms.find((r) => r.vmid === est.vmid)
      if (res) {
        if (res.node !== est.node) {
          return blocked(ErrorCode.VMID_TAKEN, `VM ${est.vmid} exists on node ${res.node}, not on ${est.node}`, [
            'If it was migrated on purpose, update `node:` in the inventory; otherwise choose a free vmid.',
          ])
        }
        try {
          const cfg = await api.vmConfig(est.node, est.vmid)
          if (!cfg) return blocked(ErrorCode.PVE_HTTP, `VM ${est.vmid} is listed but its config cannot be read`, ['Retry; check the VM on the node.'])
          const meta = parseDescription(typeof cfg.description === 'string' ? cfg.description : undefined)
          if (!meta || meta.uai !== est.uai) {
            return blocked(
              ErrorCode.VMID_TAKEN,
              `vmid ${est.vmid} is taken by a VM pgi did not create for ${est.uai}${res.name ? ` ("${res.name}")` : ''}${meta ? ` (it belongs to ${meta.uai})` : ''}`,
              ['pgi never touches a VM it did not create: choose another `vmid:` in the inventory, or remove that VM by hand.'],
            )
          }
          configs.set(est.uai, cfg)
          const running = res.status === 'running'
          const vm = {running, configured: Boolean(meta.configuredAt), lock: typeof cfg.lock === 'string' ? cfg.lock : undefined}
          if (vm.lock && meta.configuredAt) {
            return blocked(ErrorCode.PVE_LOCKED, `VM ${est.vmid} is locked (${vm.lock}) by another operation`, ['Wait for the running task to finish (see the node\'s task list), then run deploy again.'], vm)
          }
          if (!meta.configuredAt) {
            return {...base, action: 'continue', vm, summary: `continue an unfinished deploy (${running ? 'running' : 'stopped'}, not configured yet)${est.databases.length ? `; then create the missing of ${est.databases.map((d) => d.name).join(', ')}` : ''}`}
          }
          const drifts = diffVm(est, hv, cfg, version, running)
          // the declared databases of a running VM (a stopped one is checked once started)
          let dbs: {databases: PlannedDatabase[]; error?: string} = {databases: base.databases}
          if (running) dbs = await readPlannedDatabases({api, node: est.node, vmid: est.vmid, uai: est.uai}, est)
          const missing = dbs.databases.filter((d) => d.state === 'missing').map((d) => d.name)
          if (missing.length > 0) drifts.push({setting: 'databases', want: missing.join(', '), have: '', fix: 'database'})
          const known = {...base, databases: dbs.databases, ...(dbs.error ? {databasesError: dbs.error} : {})}
          const unread = dbs.error ? `; databases not read (${dbs.error})` : ''
          if (drifts.length === 0) return {...known, action: 'up-to-date', vm, summary: `up to date${unread}`}
          return {...known, action: 'drifted', drifts, vm, summary: drifts.map(fmtDrift).join('; ') + unread}
        } catch (err) {
          const e = asPgiError(err)
          return blocked(e.code, `reading VM ${est.vmid}: ${e.message}`, e.suggestions)
        }
      }

      // no VM yet: create it — needs a verified image and an import-capable storage
      const img = await imageOf(ref!)
      if (img instanceof PgiError) return blocked(img.code, img.message.includes(version) ? img.message : `image ${ref!.name} ${version}: ${img.message}`, img.suggestions)
      const problem = await importStorageProblem(api, hv, est.node, st)
      if (problem instanceof PgiError) return blocked(problem.code, `storage ${hv.storage.import} on ${est.node}: ${problem.message}`, problem.suggestions)
      if (problem) return blocked(ErrorCode.REFUSED, problem, [`Add the "import" content type to storage ${hv.storage.import} (Datacenter → Storage → Edit → Content), or set storage.import in the inventory.`])
      const dbs = est.databases.map((d) => d.name)
      return {
        ...base,
        action: 'create',
        databases: planDatabases(est.databases, []),
        summary: `create VM ${est.vmid} from ${importVolid(hv, img)}${dbs.length ? `; create database${dbs.length > 1 ? 's' : ''} ${dbs.join(', ')}` : ''}`,
      }
    }),
  )
  return {items, images, configs}
}

/**
 * Whether the node's import storage can take the image: undefined when it can, what it lacks
 * (a refusal: deploy would fail there), or the error met reading it (named as it is: a read that
 * failed is not a refusal).
 */
async function importStorageProblem(api: PveApi, hv: Hypervisor, node: string, st: HvState): Promise<string | PgiError | undefined> {
  if (!st.importOk.has(node)) {
    try {
      const s = await api.storageStatus(node, hv.storage.import)
      const content = s.content.split(',').map((c) => c.trim())
      st.importOk.set(node, content.includes('import') ? undefined : `storage ${hv.storage.import} on ${node} lacks the "import" content type (has: ${s.content || 'none'})`)
    } catch (err) {
      st.importOk.set(node, asPgiError(err))
    }
  }
  return st.importOk.get(node)
}

export function fmtDrift(d: Drift): string {
  if (d.fix === 'database') return `create database${d.want.includes(',') ? 's' : ''} ${d.want}`
  const s = `${d.setting}: ${d.have || '(none)'} → ${d.want || '(none)'}`
  return d.fix === 'manual' ? `${s} (not changed by deploy: ${d.note ?? 'fix by hand'})` : s
}

/** Is there anything deploy would send for this item? */
export function needsWork(item: PlanItem): boolean {
  if (item.action === 'create' || item.action === 'continue') return true
  if (item.action === 'drifted') return item.drifts.some((d) => d.fix !== 'manual')
  return false
}
