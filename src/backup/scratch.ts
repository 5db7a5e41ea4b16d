/**
 * Scratch and lab VMs on the Région hypervisor of the inventory's `offsite.drill:`: a restore
 * drill's scratch VM (created, booted, removed with its disks whatever happened) and the kept VM
 * of `pgi backup restore --to-lab`. Both are made from an image like an establishment's VM
 * (src/fleet/vm-create.ts), with the establishment's sizes, but only in the drill's VM id range
 * (which the inventory's rules keep clear of every establishment's vmid), under their own name
 * (pgi-drill-<uai>, pgi-lab-<uai>) and tags, their pgi meta marking them as scratch: they can never
 * be taken for, nor take, an establishment's VM. A scratch VM left by a killed drill is found by
 * its meta in the range and removed by the next drill.
 */
import {hostname} from 'node:os'

import {ErrorCode, SafetyRefusal, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {GuestTarget} from '../fleet/guest.js'
import type {DeployImage} from '../fleet/images.js'
import {Stager} from '../fleet/stage.js'
import {bootVm, createParams, createVmFromImage, metaFor, removeVm, type BootWaits} from '../fleet/vm-create.js'
import {parseDescription, type VmMeta} from '../fleet/vm-meta.js'
import type {Hypervisors} from '../hypervisors.js'
import type {DrillSettings, Establishment, Inventory, OffsiteSettings} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi} from '../proxmox/types.js'

export type ScratchKind = 'drill' | 'lab'

const RUNNER = `${hostname()}:${process.pid}`

/** The inventory's offsite.drill, or BACKUP_NOT_CONFIGURED naming the inventory (exit 3, nothing done). */
export function requireDrill(inv: Pick<Inventory, 'path'>, o: OffsiteSettings, what: string): DrillSettings {
  if (!o.drill) {
    throw new UserError(ErrorCode.BACKUP_NOT_CONFIGURED, `the inventory (${inv.path}) has no offsite.drill: section: no hypervisor is designated for ${what}`, {
      exitCode: ExitCode.INVALID_INPUT,
      where: {file: inv.path},
      suggestions: ['Add offsite.drill: {hypervisor, vmids: [FIRST, LAST]} naming a Région hypervisor and a VM id range no establishment uses: docs/backups.md.'],
    })
  }
  return o.drill
}

/** A VM of the range and what its meta says (undefined: not pgi's scratch). */
interface RangeVm {
  vmid: number
  node: string
  meta?: VmMeta
}

async function vmsInRange(api: PveApi, d: DrillSettings): Promise<RangeVm[]> {
  const all = await api.clusterResources('vm')
  const out: RangeVm[] = []
  for (const r of all) {
    if (r.vmid === undefined || r.vmid < d.vmids.first || r.vmid > d.vmids.last) continue
    const node = r.node ?? d.node
    const cfg = await api.vmConfig(node, r.vmid)
    const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
    out.push({vmid: r.vmid, node, ...(meta ? {meta} : {})})
  }
  return out
}

/** Removes the drill scratch VMs of the range (left by a killed drill); returns their ids. */
export async function removeLeftoverScratch(api: PveApi, d: DrillSettings, io: Io): Promise<number[]> {
  const gone: number[] = []
  for (const vm of await vmsInRange(api, d)) {
    if (vm.meta?.scratch?.kind !== 'drill') continue
    if (runnerAlive(vm.meta.scratch.runner)) {
      io.warn(`scratch VM ${vm.vmid} belongs to a drill still running here (${vm.meta.scratch.runner}): left alone`)
      continue
    }
    io.warn(`scratch VM ${vm.vmid} (drill of ${vm.meta.uai}, ${vm.meta.scratch.runner}) was left by an earlier drill: removing it`)
    await removeVm(api, vm.node, vm.vmid)
    gone.push(vm.vmid)
  }
  return gone
}

/**
 * Is `runner` (host:pid) a process that still runs on this machine? A drill started elsewhere
 * cannot be asked: drills of one drill hypervisor are run from one machine (docs/backups.md).
 */
function runnerAlive(runner: string): boolean {
  const [host, pid] = runner.split(':')
  if (host !== hostname() || !pid || Number(pid) === process.pid) return false
  try {
    process.kill(Number(pid), 0)
    return true
  } catch {
    return false
  }
}

/** The lab VM of `uai` in the range, when one was made. */
export async function findLabVm(api: PveApi, d: DrillSettings, uai: string): Promise<RangeVm | undefined> {
  return (await vmsInRange(api, d)).find((v) => v.meta?.scratch?.kind === 'lab' && v.meta.uai === uai)
}

/** The first id of the range no VM uses (REFUSED when the range is full). */
async function freeVmid(api: PveApi, d: DrillSettings): Promise<number> {
  const used = new Set((await api.clusterResources('vm')).map((r) => r.vmid))
  for (let id = d.vmids.first; id <= d.vmids.last; id++) if (!used.has(id)) return id
  throw new SafetyRefusal(`every VM id of offsite.drill.vmids [${d.vmids.first}, ${d.vmids.last}] is taken on ${d.hypervisor}`, {
    where: {hypervisor: d.hypervisor, node: d.node},
    suggestions: ['Widen the range in the inventory, or remove the lab VMs no longer needed (pgi never takes a VM id outside the range).'],
  })
}

/** The establishment as its scratch or lab VM is made: its sizes, the drill hypervisor's place and network. */
export function scratchEstablishment(est: Establishment, d: DrillSettings, vmid: number): Establishment {
  return {
    ...est,
    hypervisor: d.hypervisor,
    node: d.node,
    vmid,
    network: d.network ?? {address: 'dhcp', gateway: '', dns: est.network.dns},
  }
}

export interface ScratchVm {
  target: GuestTarget
  est: Establishment
}

/**
 * Stages `image` on the drill node, creates the scratch (or lab) VM of `est` at a free id of the
 * range and boots it to a healthy guest. `onCreated` is told the id as soon as it is taken (so
 * that a failure after it still removes the VM).
 */
export async function createScratchVm(
  hypervisors: Hypervisors,
  est: Establishment,
  d: DrillSettings,
  kind: ScratchKind,
  image: DeployImage,
  opts: BootWaits & {io: Io; update: (text: string) => void; now: () => Date; onCreated: (vmid: number) => void},
): Promise<ScratchVm> {
  const api = await hypervisors.get(d.hypervisor)
  const hv = hypervisors.definition(d.hypervisor)
  opts.update(`staging image ${image.version} on ${d.hypervisor}/${d.node}`)
  await new Stager({io: opts.io}).stage(api, hv, d.node, image)
  const vmid = await freeVmid(api, d)
  const scratch = scratchEstablishment(est, d, vmid)
  const meta: VmMeta = {...metaFor(est, image, opts.now()), scratch: {kind, runner: RUNNER}}
  const name = `pgi-${kind}-${est.uai.toLowerCase()}`
  const params = createParams(scratch, hv, image, opts.now(), {
    name,
    meta,
    describedAs: `${kind === 'drill' ? 'restore drill (scratch, removed after the drill)' : 'lab copy'} of ${est.name}`,
    tags: [`pgi-${kind}`, `of-${est.uai.toLowerCase()}`].sort().join(';'),
  })
  opts.update(`creating ${kind === 'drill' ? 'scratch' : 'lab'} VM ${vmid}`)
  opts.onCreated(vmid)
  await createVmFromImage(api, {uai: est.uai, hypervisor: d.hypervisor, node: d.node, vmid}, params, {
    io: opts.io,
    update: opts.update,
    isOurs: (m) => m?.uai === est.uai && m.scratch?.kind === kind,
    suggestion: 'Another VM took the id meanwhile: run again (a free id of offsite.drill.vmids is taken).',
    making: `making the ${kind === 'drill' ? "restore drill's scratch VM" : 'lab copy'} of ${est.uai}`,
  })
  const target: GuestTarget = {api, node: d.node, vmid, uai: est.uai}
  await bootVm(target, est.osDiskGb, opts)
  return {target, est: scratch}
}
