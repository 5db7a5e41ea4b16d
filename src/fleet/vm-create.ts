/**
 * Creating, starting and removing a VM of pgi's from an image (the fleet core): what the VM of an
 * establishment looks like when pgi creates it (the PVE config), the create call that survives a
 * lost answer, the boot up to a healthy guest, the "configured" mark, and the removal of a VM with
 * its disks. `pgi deploy` creates establishments' VMs with it; `pgi backup drill` and
 * `pgi backup restore --to-lab` create scratch and lab VMs on a Région hypervisor with it.
 */
import {waitForAgent, waitForHealthy, type GuestTarget} from './guest.js'
import {importVolid, parseDisk, type DeployImage} from './images.js'
import {formatDescription, formatTags, parseDescription, type VmMeta} from './vm-meta.js'
import {ErrorCode, PgiError, UserError} from '../errors.js'
import type {Establishment, Hypervisor} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi, PveParams, PveVmConfig} from '../proxmox/types.js'
import {sleep} from '../sleep.js'

/** Serial of the data disk: the guest finds it at /dev/disk/by-id/virtio-pgi-data. */
export const DATA_DISK_SERIAL = 'pgi-data'
export const PGI_VERSION = 'pgi/0.1.0'

/** `pgi-0130040y`: the VM name (and guest hostname) of an establishment; a DNS label. */
export function vmName(uai: string): string {
  return `pgi-${uai.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`
}

/** `ip=10.1.2.3/24,gw=10.1.2.1` (`ip=dhcp` for an address of `dhcp`) */
export function ipconfig0(est: Establishment): string {
  // a scratch VM without an address of its own (src/backup/scratch.ts)
  if (est.network.address === 'dhcp') return 'ip=dhcp'
  return `ip=${est.network.address},gw=${est.network.gateway}`
}

/** PVE stores `sshkeys` percent-encoded (spaces as %20, never `+`). */
export function encodeSshKeys(keys: string): string {
  return encodeURIComponent(keys.trim() + '\n')
}

/** The settings pgi manages on an existing VM (compared by the planner, fixed by an update). */
export function managedSettings(est: Establishment, hv: Hypervisor): Record<string, string> {
  const s: Record<string, string> = {
    name: vmName(est.uai),
    cores: String(est.cores),
    memory: String(est.memoryMb),
    agent: '1',
    ciuser: est.ami.login,
    // PVE's cloud-init upgrades every package at the first boot of each new OS disk unless told
    // not to (ciupgrade defaults to 1): the image's pinned packages must stay as built
    ciupgrade: '0',
    ipconfig0: ipconfig0(est),
    nameserver: est.network.dns.join(' '),
  }
  if (est.network.searchdomain) s.searchdomain = est.network.searchdomain
  if (est.ami.sshKey) s.sshkeys = est.ami.sshKey.trim()
  s.net0 = `virtio,bridge=${hv.bridge}`
  return s
}

export function metaFor(est: Establishment, image: Pick<DeployImage, 'version' | 'sha256'>, now: Date, extra: Partial<VmMeta> = {}): VmMeta {
  return {v: 1, uai: est.uai, image: image.version, imageSha256: image.sha256, deployedAt: now.toISOString(), by: PGI_VERSION, ...extra}
}

/** What a VM other than the establishment's own (a drill's scratch VM, a lab copy) changes in its create parameters. */
export interface CreateOverrides {
  name: string
  meta: VmMeta
  /** The description's first sentence names this instead of the establishment. */
  describedAs: string
  tags: string
}

/** Parameters of `POST /nodes/{node}/qemu` for a new establishment VM (or, with `over`, another VM made from it). */
export function createParams(est: Establishment, hv: Hypervisor, image: DeployImage, now: Date, over?: CreateOverrides): PveParams {
  const m = managedSettings(est, hv)
  const meta = over?.meta ?? metaFor(est, image, now)
  const p: PveParams = {
    name: over?.name ?? m.name,
    ostype: 'l26',
    cores: est.cores,
    memory: est.memoryMb,
    cpu: est.cpuType,
    agent: 1,
    net0: m.net0,
    virtio0: `${hv.storage.os}:0,import-from=${importVolid(hv, image)}`,
    virtio1: `${hv.storage.data}:${est.dataDiskGb},serial=${DATA_DISK_SERIAL}`,
    ide2: `${hv.storage.os}:cloudinit`,
    boot: 'order=virtio0',
    serial0: 'socket',
    ciuser: est.ami.login,
    ciupgrade: 0,
    ipconfig0: m.ipconfig0,
    nameserver: m.nameserver,
    tags: over?.tags ?? formatTags(meta, est.ring),
    description: formatDescription(meta, over?.describedAs ?? est.name),
  }
  if (m.searchdomain) p.searchdomain = m.searchdomain
  if (est.ami.sshKey) p.sshkeys = encodeSshKeys(est.ami.sshKey)
  return p
}

/** A VM created from an image: its place, and how to say what it is (deploy: the establishment's own). */
export interface VmPlace {
  hypervisor: string
  node: string
  vmid: number
}

/**
 * POST create; "already exists" after a lost answer is resolved by re-reading the VM: it is ours
 * when `isOurs` says so (its pgi meta), otherwise VMID_TAKEN (pgi never touches a VM it did not create).
 */
export async function createVmFromImage(
  api: PveApi,
  place: VmPlace & {uai: string},
  params: PveParams,
  opts: {io: Io; update: (text: string) => void; isOurs: (meta: VmMeta | undefined) => boolean; suggestion?: string; making?: string},
): Promise<void> {
  try {
    await api.createVm(place.node, place.vmid, params, {timeoutMs: 3600_000, onProgress: opts.update})
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err)
    if (!/already exists/i.test(msg)) throw err
    const cfg = await api.vmConfig(place.node, place.vmid)
    const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
    if (!cfg || !opts.isOurs(meta)) {
      throw new UserError(ErrorCode.VMID_TAKEN, `vmid ${place.vmid} was taken by another VM while ${opts.making ?? `deploying ${place.uai}`}`, {
        where: {uai: place.uai, hypervisor: place.hypervisor, node: place.node, vmid: place.vmid},
        suggestions: [opts.suggestion ?? 'Choose another `vmid:` in the inventory (pgi never touches a VM it did not create).'],
        cause: err,
      })
    }
    opts.io.debug(`${place.uai}: create answered "already exists" but the VM is ours: continuing`)
  }
}

/** Wait until the VM has no lock (an interrupted create/import finishing on the node). */
export async function waitUnlocked(target: GuestTarget, opts: {update: (text: string) => void; pollIntervalMs?: number}): Promise<PveVmConfig> {
  const deadline = Date.now() + 3600_000
  for (;;) {
    const cfg = await target.api.vmConfig(target.node, target.vmid)
    if (!cfg) {
      throw new UserError(ErrorCode.PVE_HTTP, `VM ${target.vmid} disappeared during deploy`, {
        where: {uai: target.uai, hypervisor: target.api.hypervisor, node: target.node, vmid: target.vmid},
        suggestions: ['Run deploy again: it will create it.'],
      })
    }
    if (!cfg.lock) return cfg
    if (Date.now() > deadline) {
      throw new UserError(ErrorCode.PVE_LOCKED, `VM ${target.vmid} stayed locked (${cfg.lock})`, {where: {uai: target.uai, node: target.node, vmid: target.vmid}})
    }
    opts.update(`waiting for lock "${cfg.lock}" to be released`)
    await sleep(opts.pollIntervalMs ?? 3000)
  }
}

/** Waits of a boot: guest agent (default 10 min: software-emulated boots are slow), then pgi-health (default 20 min). */
export interface BootWaits {
  agentTimeoutMs?: number
  healthTimeoutMs?: number
  pollIntervalMs?: number
  signal?: AbortSignal
}

const GiB = 2 ** 30

/**
 * A created VM up to a healthy guest: unlocked, OS disk grown to `osDiskGb`, started, guest agent,
 * pgi-health. `step` is told each step done (deploy's journal).
 */
export async function bootVm(
  target: GuestTarget,
  osDiskGb: number,
  opts: BootWaits & {update: (text: string) => void; step?: (s: 'resized' | 'started' | 'agent' | 'healthy') => Promise<void>},
): Promise<void> {
  const {api, node, vmid} = target
  const step = opts.step ?? (async () => undefined)
  const cfg = await waitUnlocked(target, opts)
  const os = parseDisk(cfg.virtio0)
  if (os?.size !== undefined && os.size < osDiskGb * GiB) {
    opts.update(`growing the OS disk to ${osDiskGb} GiB`)
    await api.resizeDisk(node, vmid, 'virtio0', `${osDiskGb}G`)
    await step('resized')
  }
  const status = await api.vmStatus(node, vmid)
  if (status?.status !== 'running') {
    opts.update('starting')
    await api.startVm(node, vmid, {timeoutMs: 600_000})
    await step('started')
  }
  opts.update('waiting for the guest agent')
  await waitForAgent(target, {timeoutMs: opts.agentTimeoutMs ?? 600_000, intervalMs: opts.pollIntervalMs, onProgress: opts.update, signal: opts.signal})
  await step('agent')
  opts.update('waiting for pgi-health')
  await waitForHealthy(target, {timeoutMs: opts.healthTimeoutMs ?? 1_200_000, intervalMs: opts.pollIntervalMs, onProgress: opts.update, signal: opts.signal})
  await step('healthy')
}

/** Records `configuredAt` in the VM description (digest compare-and-swap; one re-read on a race). */
export async function markConfigured(target: GuestTarget, establishmentName: string, now: () => Date): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const cfg = await target.api.vmConfig(target.node, target.vmid)
    const meta = parseDescription(typeof cfg?.description === 'string' ? cfg.description : undefined)
    if (!cfg || !meta) throw new UserError(ErrorCode.PVE_HTTP, `VM ${target.vmid} lost its pgi description during deploy`, {where: {uai: target.uai, node: target.node, vmid: target.vmid}})
    try {
      await target.api.updateVmConfig(target.node, target.vmid, {
        description: formatDescription({...meta, configuredAt: now().toISOString()}, establishmentName),
        digest: cfg.digest,
      })
      return
    } catch (err) {
      if (attempt === 0 && err instanceof PgiError && err.code === ErrorCode.PVE_DIGEST_MISMATCH) continue
      throw err
    }
  }
}

/** Stops (when running) and deletes a VM with every disk it has or had (purge). Nothing to do when it is gone. */
export async function removeVm(api: PveApi, node: string, vmid: number, update: (text: string) => void = () => undefined): Promise<boolean> {
  const status = await api.vmStatus(node, vmid)
  if (!status) return false
  if (status.status === 'running') {
    update(`stopping VM ${vmid}`)
    await api.stopVm(node, vmid)
  }
  update(`deleting VM ${vmid} and its disks`)
  await api.deleteVm(node, vmid, {purge: true, destroyUnreferencedDisks: true})
  return true
}
