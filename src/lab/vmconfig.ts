import {createHash} from 'node:crypto'

import {BUS_DISK_KEY_RE, DISK_KEY_RE} from './params.js'
import type {PveSchema, SchemaProp} from './pve-schema.js'
import {parseBoolean, parsePropertyString, schemaKeyOf, splitList} from './validate.js'

/**
 * A VM's configuration as qemu-server keeps it (`/etc/pve/qemu-server/<vmid>.conf`): the current
 * values, the [PENDING] section (changes not applied yet: the VM runs and cannot take them live),
 * the snapshots, and helpers to read and print drives the way PVE does. Pure functions and data;
 * the API layer (api.ts) owns the state and the side effects.
 */

export interface SnapshotRecord {
  config: Record<string, string>
  snaptime: number
  description: string
  parent?: string
}

export interface VmRecord {
  vmid: number
  /** Current values, key → value text as in the .conf file. */
  config: Record<string, string>
  /** Pending values ([PENDING] section). */
  pending: Record<string, string>
  /** Pending deletions: key → force (`delete: !key` in PVE's file). */
  pendingDelete: Map<string, boolean>
  snapshots: Record<string, SnapshotRecord>
  /** Cloud-init keys as they were when the cloud-init drive was last generated (GET …/cloudinit). */
  cloudinitApplied?: Record<string, string>
}

export function newVm(vmid: number, config: Record<string, string> = {}): VmRecord {
  return {vmid, config, pending: {}, pendingDelete: new Map(), snapshots: {}}
}

/** Options that apply to a running VM at once (qemu-server's $fast_plug_option, plus the cloud-init ones). */
export const FAST_PLUG = new Set(['description', 'hookscript', 'lock', 'migrate_downtime', 'migrate_speed', 'name', 'onboot', 'protection', 'shares', 'startup', 'tags', 'vmstatestorage'])
const CLOUDINIT_KEYS = new Set(['citype', 'ciuser', 'cipassword', 'ciupgrade', 'cicustom', 'searchdomain', 'nameserver', 'sshkeys'])

export function isCloudinitKey(k: string): boolean {
  return CLOUDINIT_KEYS.has(k) || /^ipconfig\d+$/.test(k)
}

export function isFastPlug(k: string): boolean {
  return FAST_PLUG.has(k) || isCloudinitKey(k)
}

/** Keys that are not VM options but parameters of the create/update call itself. */
export const CALL_PARAMS = new Set(['node', 'vmid', 'digest', 'delete', 'revert', 'skiplock', 'force', 'background_delay', 'skip_cloud_init', 'import-working-storage', 'start', 'storage', 'pool', 'archive', 'bwlimit', 'unique', 'live-restore', 'ha-managed'])

/** `hotplug` → the enabled features (qemu-server's parse_hotplug_features; default network,disk,usb). */
export function hotplugFeatures(cfg: Record<string, string>): Set<string> {
  const v = cfg.hotplug ?? '1'
  if (v === '0') return new Set()
  return new Set(splitList(v === '1' ? 'network,disk,usb' : v))
}

// ---- drives ------------------------------------------------------------------------------------------

export interface Drive {
  key: string
  file: string
  /** Every other key of the property string, as given (booleans normalised to 1/0). */
  opts: Record<string, string>
}

/** The property-string format of a drive key (virtio3 → the schema's `virtio[n]`). */
export function driveFormat(schema: PveSchema, key: string): Record<string, SchemaProp> {
  const props = schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')?.parameters?.properties ?? {}
  const k = schemaKeyOf(props, key)
  const f = k ? props[k]?.format : undefined
  if (!f || typeof f !== 'object') throw new Error(`lab defect: no drive format for '${key}'`)
  return f
}

export function parseDrive(schema: PveSchema, key: string, value: string): Drive {
  const p = parsePropertyString(value, driveFormat(schema, key))
  const {file = '', ...opts} = p
  return {key, file, opts}
}

/** PVE's print_drive: the volume first, then the other keys in alphabetical order. */
export function printDrive(d: Drive): string {
  return [d.file, ...Object.keys(d.opts).sort().map((k) => `${k}=${d.opts[k]}`)].join(',')
}

export function isCloudinitDrive(d: Drive): boolean {
  return /(^|[:/])vm-\d+-cloudinit(\.\w+)?$/.test(d.file)
}

/** drive_is_cdrom: media=cdrom, or the cloud-init drive. */
export function isCdrom(d: Drive): boolean {
  return d.opts.media === 'cdrom' || isCloudinitDrive(d)
}

export const isDriveKey = (k: string): boolean => DISK_KEY_RE.test(k)
export const isBusDriveKey = (k: string): boolean => BUS_DISK_KEY_RE.test(k)

/** The lowest free `unusedN` key. */
export function nextUnused(cfg: Record<string, string>): string {
  let n = 0
  while (cfg[`unused${n}`] !== undefined) n++
  return `unused${n}`
}

/** Volumes referenced by a config (drives, unused, pending drives), cdroms excepted. */
export function referencedVolids(schema: PveSchema, vm: VmRecord): string[] {
  const out = new Set<string>()
  for (const cfg of [vm.config, vm.pending]) {
    for (const [k, v] of Object.entries(cfg)) {
      if (/^unused\d+$/.test(k)) out.add(v.split(',')[0]!.replace(/^file=/, ''))
      else if (isDriveKey(k)) {
        const d = parseDrive(schema, k, v)
        if (d.file.includes(':') && (!isCdrom(d) || isCloudinitDrive(d))) out.add(d.file)
      }
    }
  }
  return [...out]
}

// ---- reading the config ----------------------------------------------------------------------------------

/** The config with pending changes applied (GET …/config without `current`). */
export function withPending(vm: VmRecord): Record<string, string> {
  const out = {...vm.config, ...vm.pending}
  for (const k of vm.pendingDelete.keys()) delete out[k]
  return out
}

/** SHA-1 of the config file as the lab would write it (current, [PENDING], snapshots), like PVE's digest. */
export function configDigest(config: Record<string, string>, vm?: Pick<VmRecord, 'pending' | 'pendingDelete'>): string {
  const lines = (c: Record<string, string>) =>
    Object.keys(c)
      .filter((k) => k !== 'digest')
      .sort()
      .map((k) => `${k}: ${c[k]}\n`)
      .join('')
  let text = lines(config)
  if (vm && (Object.keys(vm.pending).length > 0 || vm.pendingDelete.size > 0)) {
    text += `\n[PENDING]\n${lines(vm.pending)}`
    if (vm.pendingDelete.size > 0) text += `delete: ${[...vm.pendingDelete].map(([k, f]) => (f ? `!${k}` : k)).join(',')}\n`
  }
  return createHash('sha1').update(text).digest('hex')
}

export function vmDigest(vm: VmRecord): string {
  return configDigest(vm.config, vm)
}

/** Schema type of a config key as GET …/config returns it. */
function returnType(schema: PveSchema, key: string): string | undefined {
  const props = schema.method('GET', '/nodes/{node}/qemu/{vmid}/config')?.returns?.properties ?? {}
  const k = schemaKeyOf(props, key)
  const t = k ? props[k]?.type : undefined
  return typeof t === 'string' ? t : undefined
}

/** A config value as PVE's JSON has it: integers, numbers and booleans are JSON numbers. */
export function outputValue(schema: PveSchema, key: string, value: string): string | number {
  const t = returnType(schema, key)
  if ((t === 'integer' || t === 'number') && /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value)) return Number(value)
  if (t === 'boolean') {
    const b = parseBoolean(value)
    if (b !== undefined) return Number(b)
  }
  return value
}

/** GET …/pending: one item per key, with the current value, the pending one and pending deletions. */
export function pendingItems(vm: VmRecord, digest: string): {key: string; value?: string; pending?: string; delete?: number}[] {
  const mask = (k: string, v: string) => (k === 'cipassword' ? '**********' : v)
  const keys = new Set([...Object.keys(vm.config), ...Object.keys(vm.pending), ...vm.pendingDelete.keys()])
  const out = [...keys].sort().map((key) => {
    const item: {key: string; value?: string; pending?: string; delete?: number} = {key}
    if (vm.config[key] !== undefined) item.value = mask(key, vm.config[key]!)
    if (vm.pending[key] !== undefined) item.pending = mask(key, vm.pending[key]!)
    if (vm.pendingDelete.has(key)) item.delete = vm.pendingDelete.get(key) ? 2 : 1
    return item
  })
  out.push({key: 'digest', value: digest})
  return out.sort((a, b) => a.key.localeCompare(b.key))
}

/** qemu-server's get_default_bootdevices: the first disk, the first cdrom, the first NIC. */
export function defaultBootOrder(cfg: Record<string, string>, schema: PveSchema): string {
  const order: string[] = []
  const drives = ['ide', 'sata', 'scsi', 'virtio'].flatMap((bus) =>
    Object.keys(cfg)
      .filter((k) => new RegExp(`^${bus}\\d+$`).test(k))
      .sort((a, b) => Number(a.replace(/\D/g, '')) - Number(b.replace(/\D/g, ''))),
  )
  const parsed = drives.map((k) => parseDrive(schema, k, cfg[k]!))
  const disk = cfg.bootdisk && cfg[cfg.bootdisk] ? cfg.bootdisk : parsed.find((d) => !isCdrom(d))?.key
  if (disk) order.push(disk)
  const cd = parsed.find((d) => isCdrom(d) && !isCloudinitDrive(d))
  if (cd) order.push(cd.key)
  const net = Object.keys(cfg).filter((k) => /^net\d+$/.test(k)).sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))[0]
  if (net) order.push(net)
  return order.length > 0 ? `order=${order.join(';')}` : ''
}

/** A boolean-typed option's stored text (PVE normalises on/yes/true to 1). */
export function normaliseOption(schema: PveSchema, key: string, value: string): string {
  const props = schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')?.parameters?.properties ?? {}
  const k = schemaKeyOf(props, key)
  if (k && props[k]?.type === 'boolean') return parseBoolean(value) ?? value
  return value
}
