import {createHash} from 'node:crypto'
import {mkdir, rename, rm, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {stringify} from 'yaml'

import {ErrorCode, UserError, UsageError} from '../errors.js'
import {hasTool, run} from '../exec.js'
import type {Io} from '../io.js'
import type {Secret} from '../secret.js'

/**
 * Cloud-init NoCloud seeds: the files (meta-data, user-data, network-config v2) built from
 * Proxmox-VE-style settings (`ciuser`, `cipassword` hash, `sshkeys`, `ipconfigN`, `nameserver`,
 * `searchdomain`, hostname from the VM name), and the seed image: an ISO 9660 volume labelled
 * `cidata` made by genisoimage (or xorriso), which needs no root and no loop device.
 *
 * Like Proxmox VE, the instance-id is a digest of the content, so any change of the settings
 * makes cloud-init treat the next boot as a new instance and apply them again.
 */

/** One `ipconfigN` value, parsed. */
export interface IpConfig {
  /** `dhcp`, or an IPv4 address in CIDR form (10.1.2.3/24). */
  ip?: string
  gw?: string
  /** `dhcp`, `auto` (SLAAC) or an IPv6 CIDR. */
  ip6?: string
  gw6?: string
}

const IPV4_CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

function validIpv4(s: string, cidr: boolean): boolean {
  const m = (cidr ? IPV4_CIDR : IPV4).exec(s)
  if (!m) return false
  if (m.slice(1, 5).some((o) => Number(o) > 255)) return false
  return !cidr || Number(m[5]) <= 32
}

/**
 * Parses a PVE `ipconfigN` string: `ip=10.1.2.3/24,gw=10.1.2.1`, `ip=dhcp`, `ip6=auto`…
 * Throws a UsageError naming the bad part.
 */
export function parseIpConfig(value: string): IpConfig {
  const out: IpConfig = {}
  for (const part of value.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=')
    if (eq < 0) throw new UsageError(`ipconfig "${value}": "${part}" is not key=value`)
    const k = part.slice(0, eq)
    const v = part.slice(eq + 1)
    switch (k) {
      case 'ip':
        if (v !== 'dhcp' && !validIpv4(v, true)) throw new UsageError(`ipconfig "${value}": ip must be "dhcp" or an IPv4 CIDR like 10.1.2.3/24`)
        out.ip = v
        break
      case 'gw':
        if (!validIpv4(v, false)) throw new UsageError(`ipconfig "${value}": gw must be an IPv4 address`)
        out.gw = v
        break
      case 'ip6':
        if (v !== 'dhcp' && v !== 'auto' && !/^[0-9a-fA-F:]+\/\d{1,3}$/.test(v)) throw new UsageError(`ipconfig "${value}": ip6 must be dhcp, auto or an IPv6 CIDR`)
        out.ip6 = v
        break
      case 'gw6':
        if (!/^[0-9a-fA-F:]+$/.test(v)) throw new UsageError(`ipconfig "${value}": gw6 must be an IPv6 address`)
        out.gw6 = v
        break
      default:
        throw new UsageError(`ipconfig "${value}": unknown key "${k}" (expected ip, gw, ip6, gw6)`)
    }
  }
  if (out.gw && (!out.ip || out.ip === 'dhcp')) throw new UsageError(`ipconfig "${value}": gw needs a static ip`)
  return out
}

/** A NIC of the seed: its name in the guest, MAC address to match, and its addressing. */
export interface SeedNic {
  /** Interface name set in the guest (default eth0, eth1…). */
  name?: string
  /** MAC address; when set, the config matches on it and renames the interface to `name`. */
  mac?: string
  ipconfig: IpConfig
}

export interface SeedSpec {
  hostname: string
  /** Explicit instance-id; default: a digest of everything else (changes re-run cloud-init). */
  instanceId?: string
  /** Login created by cloud-init (PVE `ciuser`). */
  user?: string
  /** crypt(3) SHA-512 hash (`$6$…`) of the password: the clear text never goes into a seed. */
  passwordHash?: string
  sshKeys?: string[]
  /** `package_upgrade: true` (PVE's `ciupgrade`, default on). */
  packageUpgrade?: boolean
  nics?: SeedNic[]
  nameservers?: string[]
  searchdomain?: string
}

export interface SeedFiles {
  'meta-data': string
  'user-data': string
  'network-config': string
}

/** Builds the network-config (version 2) document. */
export function networkConfig(spec: SeedSpec): Record<string, unknown> {
  const ethernets: Record<string, Record<string, unknown>> = {}
  ;(spec.nics ?? []).forEach((nic, i) => {
    const name = nic.name ?? `eth${i}`
    const e: Record<string, unknown> = {}
    if (nic.mac) {
      e.match = {macaddress: nic.mac.toLowerCase()}
      e['set-name'] = name
    }
    const addresses: string[] = []
    const c = nic.ipconfig
    if (c.ip === 'dhcp') e.dhcp4 = true
    else if (c.ip) addresses.push(c.ip)
    if (c.ip6 === 'dhcp') e.dhcp6 = true
    else if (c.ip6 === 'auto') e['accept-ra'] = true
    else if (c.ip6) addresses.push(c.ip6)
    if (addresses.length > 0) e.addresses = addresses
    // gateway4/gateway6: understood by every cloud-init release Debian ships (22.4 in Debian 12)
    if (c.gw) e.gateway4 = c.gw
    if (c.gw6) e.gateway6 = c.gw6
    const dns: Record<string, unknown> = {}
    if (spec.nameservers?.length) dns.addresses = spec.nameservers
    if (spec.searchdomain) dns.search = spec.searchdomain.split(/[\s,]+/).filter(Boolean)
    if (Object.keys(dns).length > 0) e.nameservers = dns
    ethernets[name] = e
  })
  return {version: 2, ethernets}
}

/**
 * Builds the #cloud-config user-data document PVE writes for a VM (qemu-server's
 * `cloudinit_userdata`), key for key: `user` renames the image's default user (which keeps the
 * image's groups and sudo rule: `users: [default]`), `password` is the crypt hash of cipassword,
 * `package_upgrade` unless `ciupgrade` is 0. What the VM gets in the lab is what it gets on PVE.
 */
export function userData(spec: SeedSpec): Record<string, unknown> {
  const doc: Record<string, unknown> = {hostname: spec.hostname, manage_etc_hosts: true}
  if (spec.searchdomain) doc.fqdn = `${spec.hostname}.${spec.searchdomain.split(/[\s,]+/)[0]}`
  if (spec.user) doc.user = spec.user
  if (spec.user === 'root') doc.disable_root = false
  if (spec.passwordHash) doc.password = spec.passwordHash
  if (spec.sshKeys?.length) doc.ssh_authorized_keys = spec.sshKeys
  doc.chpasswd = {expire: false}
  if (spec.user !== 'root') doc.users = ['default']
  if (spec.packageUpgrade ?? true) doc.package_upgrade = true
  return doc
}

function validateSpec(spec: SeedSpec): void {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(spec.hostname)) throw new UsageError(`hostname "${spec.hostname}" is not a valid DNS label`)
  if (spec.user !== undefined && !/^[a-z_][a-z0-9_-]{0,31}$/.test(spec.user)) throw new UsageError(`user "${spec.user}" is not a valid login`)
  if (spec.passwordHash !== undefined && !/^\$(6|5|y|2[aby])\$/.test(spec.passwordHash)) {
    throw new UsageError('passwordHash must be a crypt(3) hash ($6$…), never a clear-text password')
  }
  for (const k of spec.sshKeys ?? []) if (/[\r\n]/.test(k.trim())) throw new UsageError('an SSH key must be one line')
}

/** The three seed files, as text. Deterministic: same spec, same bytes. */
export function seedFiles(spec: SeedSpec): SeedFiles {
  validateSpec(spec)
  // YAML 1.1 output: cloud-init reads with PyYAML (YAML 1.1), where an unquoted MAC address
  // 52:54:00:12:34:56 is a sexagesimal integer and yes/no are booleans; this quotes them.
  const y = (doc: unknown) => stringify(doc, {version: '1.1', lineWidth: 0})
  const user = '#cloud-config\n' + y(userData(spec))
  const net = y(networkConfig(spec))
  const instanceId = spec.instanceId ?? createHash('sha1').update(user).update('\0').update(net).update('\0').update(spec.hostname).digest('hex')
  const meta = y({'instance-id': instanceId, 'local-hostname': spec.hostname})
  return {'meta-data': meta, 'user-data': user, 'network-config': net}
}

/**
 * Writes a NoCloud seed image (ISO 9660 + Joliet + Rock Ridge, volume label `cidata`) to
 * `outPath`, atomically. Temporary files live beside `outPath` and are removed.
 */
export async function writeSeedImage(spec: SeedSpec | SeedFiles, outPath: string, io?: Io): Promise<SeedFiles> {
  const files = 'user-data' in spec ? spec : seedFiles(spec)
  const work = `${outPath}.d`
  const tmpOut = `${outPath}.tmp`
  await rm(work, {recursive: true, force: true})
  await mkdir(work, {recursive: true, mode: 0o700})
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(work, name), text, {mode: 0o600})
    const names = Object.keys(files)
    if (await hasTool('genisoimage')) {
      await run('genisoimage', ['-quiet', '-output', tmpOut, '-volid', 'cidata', '-joliet', '-rock', ...names], {cwd: work}, io)
    } else if (await hasTool('xorriso')) {
      await run('xorriso', ['-as', 'mkisofs', '-quiet', '-output', tmpOut, '-volid', 'cidata', '-joliet', '-rock', ...names], {cwd: work}, io)
    } else {
      throw new UserError(ErrorCode.TOOL_MISSING, 'required tool "genisoimage" is not installed', {suggestions: ['Install it: apt-get install genisoimage']})
    }
    await mkdir(dirname(outPath), {recursive: true})
    await rename(tmpOut, outPath)
  } finally {
    await rm(work, {recursive: true, force: true})
    await rm(tmpOut, {force: true})
  }
  return files
}

/** SHA-512 crypt hash of a password (openssl passwd -6, password on stdin), for `passwordHash`. */
export async function hashPassword(password: Secret, io?: Io): Promise<string> {
  const r = await run('openssl', ['passwd', '-6', '-stdin'], {input: password.reveal() + '\n'}, io)
  const h = r.stdout.trim()
  if (!h.startsWith('$6$')) throw new UserError(ErrorCode.TOOL_FAILED, 'openssl passwd -6 returned no SHA-512 hash')
  return h
}
