/**
 * What the VM of one establishment should look like on its hypervisor (the PVE config pgi
 * creates), and how a VM that exists differs from it. Pure functions: the planner and the
 * orchestration use them, tests check them without any hypervisor.
 */
import {formatDescription, formatTags, parseDescription, type VmMeta} from '../fleet/vm-meta.js'
import type {Establishment, Hypervisor} from '../inventory/types.js'
import type {PveParams, PveVmConfig} from '../proxmox/types.js'
import {importVolid, parseDisk, type DeployImage} from '../fleet/images.js'

// what the fleet core defines and deploy's callers long took from here
export {importVolid, parseDisk, type DeployImage} from '../fleet/images.js'

/** Serial of the data disk: the guest finds it at /dev/disk/by-id/virtio-pgi-data. */
export const DATA_DISK_SERIAL = 'pgi-data'
export const PGI_VERSION = 'pgi/0.1.0'

/** `pgi-0130040y`: the VM name (and guest hostname) of an establishment; a DNS label. */
export function vmName(uai: string): string {
  return `pgi-${uai.toLowerCase().replace(/[^a-z0-9-]/g, '-')}`
}

/** `ip=10.1.2.3/24,gw=10.1.2.1` */
export function ipconfig0(est: Establishment): string {
  return `ip=${est.network.address},gw=${est.network.gateway}`
}

/** PVE stores `sshkeys` percent-encoded (spaces as %20, never `+`). */
export function encodeSshKeys(keys: string): string {
  return encodeURIComponent(keys.trim() + '\n')
}

function decodeSshKeys(v: string | number | undefined): string {
  if (v === undefined) return ''
  try {
    return decodeURIComponent(String(v)).trim()
  } catch {
    return String(v).trim()
  }
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

/** Parameters of `POST /nodes/{node}/qemu` for a new establishment VM. */
export function createParams(est: Establishment, hv: Hypervisor, image: DeployImage, now: Date): PveParams {
  const m = managedSettings(est, hv)
  const meta = metaFor(est, image, now)
  const p: PveParams = {
    name: m.name,
    ostype: 'l26',
    cores: est.cores,
    memory: est.memoryMb,
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
    tags: formatTags(meta, est.ring),
    description: formatDescription(meta, est.name),
  }
  if (m.searchdomain) p.searchdomain = m.searchdomain
  if (est.ami.sshKey) p.sshkeys = encodeSshKeys(est.ami.sshKey)
  return p
}

function netWithoutMac(v: string | number | undefined): string {
  if (v === undefined) return ''
  const parts = String(v).split(',')
  const out: string[] = []
  let model = ''
  for (const p of parts) {
    const [k, val] = p.split('=')
    if (val === undefined) continue
    if (['virtio', 'e1000', 'rtl8139', 'vmxnet3'].includes(k!)) model = k!
    else if (k === 'model') model = val
    else if (k === 'bridge') out.push(`bridge=${val}`)
    else if (k === 'firewall' || k === 'tag') out.push(`${k}=${val}`)
  }
  return [model, ...out].join(',')
}

/** One setting that differs between the inventory and the VM. */
export interface Drift {
  setting: string
  want: string
  have: string
  /** How deploy fixes it: a config update, a disk resize, a start, creating databases — or not at all (`manual`). */
  fix: 'config' | 'resize' | 'start' | 'database' | 'manual'
  /** Why it cannot be fixed by deploy (fix=manual). */
  note?: string
}

const GiB = 2 ** 30

/** Differences between what the inventory wants and the VM `cfg` (and its run state). */
export function diffVm(est: Establishment, hv: Hypervisor, cfg: PveVmConfig, imageVersion: string, running: boolean): Drift[] {
  const drifts: Drift[] = []
  const want = managedSettings(est, hv)
  for (const [k, w] of Object.entries(want)) {
    let have: string
    if (k === 'sshkeys') have = decodeSshKeys(cfg.sshkeys)
    else if (k === 'net0') have = netWithoutMac(cfg.net0)
    else if (k === 'agent') have = String(cfg.agent ?? '0').split(',')[0]!.replace(/^enabled=/, '')
    else have = cfg[k] === undefined ? '' : String(cfg[k])
    if (have !== w) drifts.push({setting: k, want: w, have, fix: 'config'})
  }
  if (!est.ami.sshKey && cfg.sshkeys !== undefined) drifts.push({setting: 'sshkeys', want: '', have: decodeSshKeys(cfg.sshkeys), fix: 'config'})
  if (!est.network.searchdomain && cfg.searchdomain !== undefined) drifts.push({setting: 'searchdomain', want: '', have: String(cfg.searchdomain), fix: 'config'})

  const meta = parseDescription(typeof cfg.description === 'string' ? cfg.description : undefined)
  const haveImage = meta?.image ?? ''
  if (haveImage !== imageVersion) {
    drifts.push({setting: 'image', want: imageVersion, have: haveImage, fix: 'manual', note: 'a new image version is applied by `pgi rollout`, which backs the data up first'})
  }
  const tags = formatTags({uai: est.uai, image: haveImage || imageVersion}, est.ring)
  const haveTags = String(cfg.tags ?? '').split(/[;, ]+/).filter(Boolean).sort().join(';')
  if (haveTags !== tags) drifts.push({setting: 'tags', want: tags, have: haveTags, fix: 'config'})

  const os = parseDisk(cfg.virtio0)
  if (!os) drifts.push({setting: 'virtio0', want: `OS disk of ${est.osDiskGb} GiB`, have: 'none', fix: 'manual', note: 'the VM has no OS disk on virtio0'})
  else if (os.size !== undefined && os.size < est.osDiskGb * GiB) {
    drifts.push({setting: 'os_disk_gb', want: String(est.osDiskGb), have: fmtGb(os.size), fix: 'resize'})
  } else if (os.size !== undefined && os.size > est.osDiskGb * GiB) {
    drifts.push({setting: 'os_disk_gb', want: String(est.osDiskGb), have: fmtGb(os.size), fix: 'manual', note: 'disks are never shrunk'})
  }
  const data = parseDisk(cfg.virtio1)
  if (!data) drifts.push({setting: 'virtio1', want: `data disk of ${est.dataDiskGb} GiB`, have: 'none', fix: 'manual', note: 'the data disk is missing: check the VM by hand'})
  else {
    if (data.opts.serial !== DATA_DISK_SERIAL) drifts.push({setting: 'virtio1.serial', want: DATA_DISK_SERIAL, have: data.opts.serial ?? '', fix: 'manual', note: 'the guest mounts the data disk by this serial'})
    if (data.size !== undefined && data.size < est.dataDiskGb * GiB) drifts.push({setting: 'data_disk_gb', want: String(est.dataDiskGb), have: fmtGb(data.size), fix: 'resize'})
    else if (data.size !== undefined && data.size > est.dataDiskGb * GiB) {
      drifts.push({setting: 'data_disk_gb', want: String(est.dataDiskGb), have: fmtGb(data.size), fix: 'manual', note: 'disks are never shrunk'})
    }
  }
  if (!running) drifts.push({setting: 'status', want: 'running', have: 'stopped', fix: 'start'})
  return drifts
}

function fmtGb(bytes: number): string {
  const g = bytes / GiB
  return Number.isInteger(g) ? String(g) : g.toFixed(1)
}

/** The config update (PUT) that fixes the `config` drifts, or undefined when there is none. */
export function updateParams(drifts: Drift[], est: Establishment, hv: Hypervisor, cfg: PveVmConfig): (PveParams & {delete?: string}) | undefined {
  const cfgDrifts = drifts.filter((d) => d.fix === 'config')
  if (cfgDrifts.length === 0) return undefined
  const want = managedSettings(est, hv)
  const p: PveParams & {delete?: string} = {}
  const del: string[] = []
  for (const d of cfgDrifts) {
    if (d.setting === 'tags') {
      p.tags = d.want
      continue
    }
    if (d.want === '') {
      del.push(d.setting)
      continue
    }
    if (d.setting === 'sshkeys') p.sshkeys = encodeSshKeys(want.sshkeys!)
    else if (d.setting === 'net0') {
      // keep the MAC address: the guest's network config (and DHCP leases) depend on it
      const mac = /(?:^|,)(?:virtio|e1000|rtl8139|vmxnet3)=([0-9A-Fa-f:]{17})/.exec(String(cfg.net0 ?? ''))?.[1]
      p.net0 = mac ? `virtio=${mac},bridge=${hv.bridge}` : want.net0!
    } else p[d.setting] = want[d.setting]!
  }
  if (del.length > 0) p.delete = del.join(',')
  return p
}

/** Does a config change need the cloud-init drive regenerated? */
export function touchesCloudInit(params: PveParams & {delete?: string}): boolean {
  const keys = [...Object.keys(params), ...(params.delete ?? '').split(',')]
  return keys.some((k) => ['ciuser', 'ciupgrade', 'sshkeys', 'ipconfig0', 'nameserver', 'searchdomain', 'name'].includes(k))
}
