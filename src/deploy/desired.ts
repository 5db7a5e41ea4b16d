/**
 * What the VM of one establishment should look like on its hypervisor (the PVE config pgi
 * creates), and how a VM that exists differs from it. Pure functions: the planner and the
 * orchestration use them, tests check them without any hypervisor.
 */
import {formatTags, parseDescription} from '../fleet/vm-meta.js'
import type {Establishment, Hypervisor} from '../inventory/types.js'
import type {PveParams, PveVmConfig} from '../proxmox/types.js'
import {parseDisk} from '../fleet/images.js'
import {DATA_DISK_SERIAL, encodeSshKeys, managedSettings} from '../fleet/vm-create.js'

// what the fleet core defines and deploy's callers long took from here
export {importVolid, parseDisk, type DeployImage} from '../fleet/images.js'
export {DATA_DISK_SERIAL, PGI_VERSION, createParams, encodeSshKeys, ipconfig0, managedSettings, metaFor, vmName} from '../fleet/vm-create.js'

function decodeSshKeys(v: string | number | undefined): string {
  if (v === undefined) return ''
  try {
    return decodeURIComponent(String(v)).trim()
  } catch {
    return String(v).trim()
  }
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
