import {isIP} from 'node:net'

import type {SchemaProp} from './pve-schema.js'

/**
 * PVE's named formats: the API schema names them (`format: "dns-name"`, `"pve-qm-boot"`…) but
 * their checks are code in PVE (pve-common's JSONSchema.pm, qemu-server, pve-storage,
 * pve-access-control), so the lab implements them here, with PVE's regular expressions and error
 * texts. Two kinds:
 * - code formats (`CODE_FORMATS`): a function that returns PVE's error text, or undefined;
 *   `<name>-list` checks each element of a list split on `,`, `;` and whitespace, `<name>-opt`
 *   checks a non-empty value;
 * - property-string formats registered by name (`NAMED_PROPERTY_FORMATS`): their keys, in the
 *   schema's own shape (the API schema expands most property strings in place, but not these).
 * Written by hand because these definitions are Perl code, not data; the conformance test fails
 * when a lab endpoint uses a format that is not here.
 */

/** Splits a PVE "-list" value on `,`, `;` and whitespace (PVE::Tools::split_list). */
export function splitList(v: string): string[] {
  return v.split(/[,;\s]+/).filter((x) => x !== '')
}

// ---- regular expressions ------------------------------------------------------------------------

const regexCache = new Map<string, RegExp>()

/**
 * A Perl pattern of the schema (`^…$` implied, as PVE's check_prop does `m/^$pattern$/`) as a
 * JavaScript RegExp: `(?^:…)`/`(?^i:…)` (stringified qr//) become groups, a case-insensitive one
 * makes the whole pattern case-insensitive (JavaScript of Node 20 has no inline modifiers),
 * `(?>…)` becomes a plain group and Perl's `{,n}` is `{0,n}`.
 */
export function perlRegex(pattern: string): RegExp {
  let re = regexCache.get(pattern)
  if (re) return re
  const insensitive = /\(\?\^?i:/.test(pattern)
  const js = pattern
    .replace(/\(\?\^?[a-z]*:/g, '(?:')
    .replace(/\(\?>/g, '(?:')
    .replace(/\{,(\d+)\}/g, '{0,$1}')
  re = new RegExp(`^(?:${js})$`, insensitive ? 'i' : '')
  regexCache.set(pattern, re)
  return re
}

// ---- code formats ---------------------------------------------------------------------------------

const NODE_RE = /^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)$/
const ID_RE = /^[a-z][a-z0-9\-_.]*[a-z0-9]$/i
const CONFIGID_RE = /^[a-z][a-z0-9_-]+$/i
const DNS_LABEL = '([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)'
const DNS_NAME_RE = new RegExp(`^(${DNS_LABEL}\\.)*${DNS_LABEL}$`)
const TAG_RE = /^[a-z0-9_][a-z0-9_\-+.]*$/i
const URLENCODED_RE = /^[-%a-zA-Z0-9_.!~*'()]*$/
const MAC_RE = /^[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$/i
const POOL_RE = /^[A-Za-z0-9.\-_]+$/
const REALM_RE = /^[A-Za-z][A-Za-z0-9.\-_]+$/
const VOLID_RE = /^([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$/i
const SIZE_RE = /^(\d+(\.\d+)?)([KMGT](?:iB)?)?$/
const STORAGE_CONTENT = ['images', 'rootdir', 'vztmpl', 'iso', 'backup', 'snippets', 'import', 'none']
/** qemu-server's drive names (is_valid_drivename) and its limits (MAX_NETS 32, MAX_USB_DEVICES 14, MAX_HOSTPCI_DEVICES 16). */
const DRIVE_NAME_RE = /^(ide[0-3]|sata[0-5]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|efidisk0|tpmstate0)$/
const HOTPLUG_FEATURES = ['network', 'disk', 'cpu', 'memory', 'usb', 'cloudinit']
/** PVE's known privileges (pve-access-control), for `pve-priv`. */
export const PVE_PRIVILEGES = [
  'Datastore.Allocate', 'Datastore.AllocateSpace', 'Datastore.AllocateTemplate', 'Datastore.Audit',
  'Group.Allocate', 'Mapping.Audit', 'Mapping.Modify', 'Mapping.Use', 'Permissions.Modify',
  'Pool.Allocate', 'Pool.Audit', 'Realm.Allocate', 'Realm.AllocateUser', 'SDN.Allocate', 'SDN.Audit', 'SDN.Use',
  'Sys.AccessNetwork', 'Sys.Audit', 'Sys.Console', 'Sys.Incoming', 'Sys.Modify', 'Sys.PowerMgmt', 'Sys.Syslog',
  'User.Modify', 'VM.Allocate', 'VM.Audit', 'VM.Backup', 'VM.Clone', 'VM.Config.CDROM', 'VM.Config.CPU',
  'VM.Config.Cloudinit', 'VM.Config.Disk', 'VM.Config.HWType', 'VM.Config.Memory', 'VM.Config.Network',
  'VM.Config.Options', 'VM.Console', 'VM.GuestAgent.Audit', 'VM.GuestAgent.FileRead', 'VM.GuestAgent.FileSystemMgmt',
  'VM.GuestAgent.FileWrite', 'VM.GuestAgent.Unrestricted', 'VM.Migrate', 'VM.Monitor', 'VM.PowerMgmt',
  'VM.Replicate', 'VM.Snapshot', 'VM.Snapshot.Rollback',
]

const ipv4 = (v: string) => isIP(v) === 4
const ipv6 = (v: string) => isIP(v) === 6
function cidr(v: string, family: 4 | 6): boolean {
  const m = /^([^/]+)\/(\d+)$/.exec(v)
  if (!m || isIP(m[1]!) !== family) return false
  const bits = Number(m[2])
  return bits > 7 && bits <= (family === 4 ? 32 : 128)
}

/** PVE::CpuSet::parse_cpuset: "0-3,8,10-11" (cpus 0…8191). */
function cpuset(v: string): boolean {
  const parts = v.split(/[,;]/)
  return parts.length > 0 && parts.every((p) => {
    const m = /^(\d+)(?:-(\d+))?$/.exec(p)
    if (!m) return false
    const a = Number(m[1])
    const b = m[2] === undefined ? a : Number(m[2])
    return a <= b && b < 8192
  })
}

function startupOrder(v: string): boolean {
  if (v === '') return false
  return v.split(',').every((p) => /^\s*$/.test(p) || /^(order=)?\d+$/.test(p) || /^up=\d+$/.test(p) || /^down=\d+$/.test(p))
}

function bootdev(v: string): boolean {
  if (DRIVE_NAME_RE.test(v)) return !/^(efidisk|tpmstate)/.test(v)
  const m = /^(net|usb|hostpci)(\d+)$/.exec(v)
  if (!m) return false
  const n = Number(m[2])
  return m[1] === 'net' ? n < 32 : m[1] === 'usb' ? n < 14 : n < 16
}

type CodeFormat = (v: string) => string | undefined
const test = (ok: boolean, msg: string): string | undefined => (ok ? undefined : msg)

export const CODE_FORMATS: Record<string, CodeFormat> = {
  string: () => undefined,
  'pve-node': (v) => test(NODE_RE.test(v), 'value does not look like a valid node name'),
  'pve-vmid': (v) => test(/^[1-9][0-9]{2,8}$/.test(v), 'value does not look like a valid VM ID'),
  'pve-storage-id': (v) => (v.length < 2 ? `storage ID '${v}' cannot be shorter than 2 characters` : test(ID_RE.test(v), `storage ID '${v}' contains illegal characters`)),
  'pve-bridge-id': (v) => test(/^[-_.\w\d]+$/.test(v), `invalid bridge ID '${v}'`),
  'pve-configid': (v) => test(CONFIGID_RE.test(v), `invalid configuration ID '${v}'`),
  urlencoded: (v) => test(URLENCODED_RE.test(v), `invalid urlencoded string: ${v}`),
  'dns-name': (v) => test(DNS_NAME_RE.test(v), 'value does not look like a valid DNS name'),
  'mac-addr': (v) => test(MAC_RE.test(v), 'value does not look like a valid unicast MAC address'),
  ipv4: (v) => test(ipv4(v), 'value does not look like a valid IPv4 address'),
  ipv6: (v) => test(ipv6(v), 'value does not look like a valid IPv6 address'),
  ip: (v) => test(isIP(v) !== 0, 'value does not look like a valid IP address'),
  CIDRv4: (v) => test(cidr(v, 4), 'value does not look like a valid IPv4 CIDR network'),
  CIDRv6: (v) => test(cidr(v, 6), 'value does not look like a valid IPv6 CIDR network'),
  CIDR: (v) => test(cidr(v, 4) || cidr(v, 6), 'value does not look like a valid CIDR network'),
  'pve-ipv4-config': (v) => test(/^(dhcp|manual)$/.test(v) || cidr(v, 4), 'value does not look like a valid ipv4 network configuration'),
  'pve-ipv6-config': (v) => test(/^(auto|dhcp|manual)$/.test(v) || cidr(v, 6), 'value does not look like a valid ipv6 network configuration'),
  address: (v) => test(isIP(v) !== 0 || DNS_NAME_RE.test(v), `value does not look like a valid address: ${v}`),
  'disk-size': (v) => test(SIZE_RE.test(v), `value does not look like a valid disk size: ${v}`),
  'pve-startup-order': (v) => test(startupOrder(v), 'unable to parse startup options'),
  'pve-tag': (v) => test(TAG_RE.test(v), 'invalid characters in tag'),
  'pve-poolid': (v) => test(POOL_RE.test(v), `pool name '${v}' contains invalid characters`),
  'pve-realm': (v) => test(REALM_RE.test(v), 'value does not look like a valid realm'),
  'pve-priv': (v) => test(PVE_PRIVILEGES.includes(v), `invalid privilege '${v}'`),
  'pve-iface': (v) => test(/^[a-z][a-z0-9_]{1,20}([:.]\d+)?$/i.test(v), `invalid network interface name '${v}'`),
  'pve-task-status-type': (v) => test(/^(ok|error|warning|unknown)$/i.test(v), `invalid status '${v}'`),
  'pve-storage-content': (v) => test(STORAGE_CONTENT.includes(v), `invalid content type '${v}'`),
  'pve-volume-id': (v) => test(VOLID_RE.test(v), `unable to parse volume ID '${v}'`),
  'pve-volume-id-or-absolute-path': (v) => (v.startsWith('/') ? undefined : CODE_FORMATS['pve-volume-id']!(v)),
  'pve-volume-id-or-qm-path': (v) => (v === 'none' || v === 'cdrom' ? undefined : CODE_FORMATS['pve-volume-id-or-absolute-path']!(v)),
  'pve-cpuset': (v) => test(cpuset(v), 'unable to parse cpuset option'),
  'pve-qm-bootdev': (v) => test(bootdev(v), `invalid boot device '${v}'`),
  'pve-qm-bootdisk': (v) => test(DRIVE_NAME_RE.test(v), `invalid boot disk '${v}'`),
  'pve-hotplug-features': (v) => {
    if (v === '0' || v === '1') return undefined
    const bad = splitList(v).find((f) => !HOTPLUG_FEATURES.includes(f))
    return bad === undefined ? undefined : `invalid hotplug feature '${bad}'`
  },
  // one entry of a storage map (parse_idmap): "1", "<target>", or "<source>:<target>"
  'storage-pair': (v) => {
    if (v === '1') return undefined
    const ids = /^([^:]+):([^:]+)$/.exec(v)?.slice(1) ?? (v.includes(':') ? undefined : [v])
    if (!ids) return `entry '${v}' contains invalid ID - invalid format`
    for (const id of ids) {
      const e = CODE_FORMATS['pve-storage-id']!(id)
      if (e) return `entry '${v}' contains invalid ID - ${e}`
    }
    return undefined
  },
  'pve-phys-bits': (v) => test(/^(host|\d{1,2})$/.test(v) && (v === 'host' || (Number(v) >= 8 && Number(v) <= 64)), "value must be an integer between 8 and 64 or 'host'"),
}

// ---- property-string formats registered by name ----------------------------------------------------

const opt = (p: SchemaProp): SchemaProp => ({...p, optional: 1})
const bool = opt({type: 'boolean'})
const base64 = opt({type: 'string', pattern: '[A-Za-z0-9+\\/]+={0,2}'})
const hexId = opt({type: 'string', pattern: '^0x[0-9a-fA-F]{4}$'})

/** x86 CPU models qemu-server knows (PVE::QemuServer::CPUConfig), for `cpu: cputype=…`. */
export const CPU_MODELS = [
  '486', 'athlon', 'Broadwell', 'Broadwell-IBRS', 'Broadwell-noTSX', 'Broadwell-noTSX-IBRS', 'Cascadelake-Server',
  'Cascadelake-Server-noTSX', 'Cascadelake-Server-v2', 'Cascadelake-Server-v4', 'Cascadelake-Server-v5', 'ClearwaterForest',
  'Conroe', 'Cooperlake', 'Cooperlake-v2', 'core2duo', 'coreduo', 'EPYC', 'EPYC-Genoa', 'EPYC-Genoa-v2', 'EPYC-IBPB',
  'EPYC-Milan', 'EPYC-Milan-v2', 'EPYC-Milan-v3', 'EPYC-Rome', 'EPYC-Rome-v2', 'EPYC-Rome-v3', 'EPYC-Rome-v4', 'EPYC-Rome-v5',
  'EPYC-Turin', 'EPYC-v3', 'EPYC-v4', 'EPYC-v5', 'GraniteRapids', 'GraniteRapids-v2', 'GraniteRapids-v3', 'Haswell',
  'Haswell-IBRS', 'Haswell-noTSX', 'Haswell-noTSX-IBRS', 'host', 'Icelake-Client', 'Icelake-Client-noTSX', 'Icelake-Server',
  'Icelake-Server-noTSX', 'Icelake-Server-v3', 'Icelake-Server-v4', 'Icelake-Server-v5', 'Icelake-Server-v6',
  'Icelake-Server-v7', 'IvyBridge', 'IvyBridge-IBRS', 'KnightsMill', 'kvm32', 'kvm64', 'max', 'Nehalem', 'Nehalem-IBRS',
  'Opteron_G1', 'Opteron_G2', 'Opteron_G3', 'Opteron_G4', 'Opteron_G5', 'Penryn', 'pentium', 'pentium2', 'pentium3', 'phenom',
  'qemu32', 'qemu64', 'SandyBridge', 'SandyBridge-IBRS', 'SapphireRapids', 'SapphireRapids-v2', 'SapphireRapids-v3',
  'SapphireRapids-v4', 'SierraForest', 'SierraForest-v2', 'SierraForest-v3', 'Skylake-Client', 'Skylake-Client-IBRS',
  'Skylake-Client-noTSX-IBRS', 'Skylake-Client-v4', 'Skylake-Server', 'Skylake-Server-IBRS', 'Skylake-Server-noTSX-IBRS',
  'Skylake-Server-v4', 'Skylake-Server-v5', 'Westmere', 'Westmere-IBRS', 'x86-64-v2', 'x86-64-v2-AES', 'x86-64-v3', 'x86-64-v4',
]
/** CPU flags a VM config may set (PVE::QemuServer::CPUFlags, x86_64). */
export const VM_CPU_FLAGS = ['nested-virt', 'md-clear', 'pcid', 'spec-ctrl', 'ssbd', 'ibpb', 'virt-ssbd', 'amd-ssbd', 'amd-no-ssb', 'pdpe1gb', 'hv-tlbflush', 'hv-evmcs', 'aes']

export const NAMED_PROPERTY_FORMATS: Record<string, Record<string, SchemaProp>> = {
  'pve-qm-boot': {
    legacy: {type: 'string', optional: 1, default_key: 1, pattern: '[acdn]{1,4}', default: 'cdn'},
    order: {type: 'string', optional: 1, format: 'pve-qm-bootdev-list'},
  },
  'pve-qm-watchdog': {
    model: {type: 'string', optional: 1, default_key: 1, enum: ['i6300esb', 'ib700'], default: 'i6300esb'},
    action: {type: 'string', optional: 1, enum: ['reset', 'shutdown', 'poweroff', 'pause', 'debug', 'none']},
  },
  'pve-qm-cicustom': {
    meta: opt({type: 'string', format: 'pve-volume-id'}),
    network: opt({type: 'string', format: 'pve-volume-id'}),
    user: opt({type: 'string', format: 'pve-volume-id'}),
    vendor: opt({type: 'string', format: 'pve-volume-id'}),
  },
  'pve-qm-smbios1': {uuid: opt({type: 'string', pattern: '[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}'}), version: base64, serial: base64, manufacturer: base64, product: base64, sku: base64, family: base64, base64: bool},
  'pve-qm-ipconfig': {
    ip: opt({type: 'string', format: 'pve-ipv4-config', default: 'dhcp'}),
    gw: opt({type: 'string', format: 'ipv4', requires: 'ip'}),
    ip6: opt({type: 'string', format: 'pve-ipv6-config', default: 'dhcp'}),
    gw6: opt({type: 'string', format: 'ipv6', requires: 'ip6'}),
  },
  'pve-qm-rng': {
    source: {type: 'string', default_key: 1, enum: ['/dev/urandom', '/dev/random', '/dev/hwrng']},
    max_bytes: opt({type: 'integer', default: 1024}),
    period: opt({type: 'integer', default: 1000}),
  },
  'pve-qm-hostpci': {
    host: opt({type: 'string', default_key: 1, pattern: '(?:(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\\.[0-7])?)(?:;(?:(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\\.[0-7])?))*'}),
    mapping: opt({type: 'string', format: 'pve-configid'}),
    rombar: bool,
    romfile: opt({type: 'string', pattern: '[^,;]+'}),
    pcie: bool,
    'x-vga': bool,
    'legacy-igd': bool,
    mdev: opt({type: 'string', pattern: '[^/\\.:]+'}),
    'vendor-id': hexId,
    'device-id': hexId,
    'sub-vendor-id': hexId,
    'sub-device-id': hexId,
    driver: opt({type: 'string', enum: ['vfio', 'keep']}),
  },
  'pve-vm-cpu-conf': {
    // the model and the flags a VM may use are checked after parsing (validate_vm_cpu_conf, in validate.ts)
    cputype: opt({type: 'string', default_key: 1, default: 'kvm64'}),
    hidden: bool,
    'hv-vendor-id': opt({type: 'string', pattern: '[a-zA-Z0-9]{1,12}'}),
    flags: opt({type: 'string', pattern: '[+-][a-zA-Z0-9\\-_\\.]+(;[+-][a-zA-Z0-9\\-_\\.]+)*'}),
    'guest-phys-bits': opt({type: 'integer', minimum: 32, maximum: 64}),
    'phys-bits': opt({type: 'string', format: 'pve-phys-bits'}),
  },
  'pve-qemu-sev-fmt': {
    type: {type: 'string', default_key: 1, enum: ['std', 'es', 'snp'], maxLength: 3},
    'no-debug': bool,
    'no-key-sharing': bool,
    'allow-smt': bool,
    'kernel-hashes': bool,
  },
  'pve-qemu-tdx-fmt': {
    type: {type: 'string', default_key: 1, enum: ['tdx']},
    attestation: {type: 'boolean', default: 1},
    'vsock-cid': opt({type: 'integer', minimum: 2, default: 2}),
    'vsock-port': opt({type: 'integer', minimum: 0, default: 4050}),
  },
}

/**
 * Checks that a named format exists (plain, -list or -opt). The conformance test uses it on every
 * format of every lab endpoint; `pve-qm-ide` is the schema's own `ide[n]` property string.
 */
export function knownFormat(name: string): boolean {
  const base = name.replace(/-(list|opt)$/, '')
  return name === 'pve-qm-ide' || base in CODE_FORMATS || (name in NAMED_PROPERTY_FORMATS)
}

/**
 * Checks a value against a code format (with -list / -opt); returns PVE's error text (without the
 * "invalid format - " prefix the caller adds) or undefined. Undefined also for an unknown name:
 * callers check `knownFormat` where that matters.
 */
export function checkCodeFormat(name: string, value: string): string | undefined {
  const m = /^(.*?)(?:-(list|opt))?$/.exec(name)!
  const fn = CODE_FORMATS[m[1]!] ?? CODE_FORMATS[name]
  if (!fn) return undefined
  if (m[2] === 'list' && CODE_FORMATS[m[1]!]) {
    for (const x of splitList(value)) {
      const e = fn(x)
      if (e) return e
    }
    return undefined
  }
  if (m[2] === 'opt' && CODE_FORMATS[m[1]!]) return value === '' ? undefined : fn(value)
  return fn(value)
}
