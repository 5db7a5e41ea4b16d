import {readFile} from 'node:fs/promises'
import {isAbsolute} from 'node:path'

import {parse as parseYaml} from 'yaml'

import {ErrorCode, UserError} from '../errors.js'

/**
 * The link simulator's configuration (`<lab dir>/link-sim.yaml`, docs/lab.md "Guest path to the
 * host and link simulator"): which host-side TCP targets lab guests reach through their uplink
 * address, and the link each establishment's traffic crosses.
 *
 *   uplink:
 *     ports:                        # guest port on the uplink address → host TCP target (loopback only)
 *       80: {dir: /var/tmp/store}   #   or a directory the lab serves over plain HTTP on loopback
 *       22: 127.0.0.1:2222          #   (a chunk store of `pgi image publish`: src/lab/static-store.ts)
 *   seed: 1                         # losses are drawn from this seed (replayable)
 *   default:                        # every establishment not named under sites
 *     bandwidth: 20M                # bit/s from the host to the guest (k, M, G: decimal); 0 or "unlimited"
 *     upload: 5M                    # bit/s from the guest to the host (default: bandwidth)
 *     latency_ms: 20                # one way, each direction
 *     loss: 0.001                   # fraction of 1448-byte segments lost (each re-sent after a timeout)
 *   sites:                          # by UAI, VM name (pgi-0990001a) or node/vmid (lab1/1001)
 *     0990001A: {bandwidth: 2M}
 *     lab1/1002: {cut_at_byte: 50000000}   # cut once this many bytes crossed since the profile was set
 *     lab1/1003: {down: true}              # cut now
 *
 * A site's entry is merged over `default`. The guest ports are read when a VM starts; targets and
 * profiles apply to new and running connections as soon as the file changes.
 */

export interface LinkProfile {
  /** Host → guest, bytes per second (Infinity: no cap). */
  downBytesPerS: number
  /** Guest → host, bytes per second. */
  upBytesPerS: number
  /** One-way delay added in each direction, ms. */
  latencyMs: number
  /** Probability that a segment is lost (then re-sent after a retransmission timeout). */
  loss: number
  /** Cut the link once this many bytes (both directions) crossed it since the profile was set. */
  cutAtByte?: number
  /** The link is cut: connections are closed at once. */
  down: boolean
}

/** A host-side target: a loopback TCP address, or a directory the lab serves over HTTP itself. */
export type LinkTarget = {host: string; port: number} | {dir: string}

export interface LinkSimConfig {
  /** guest port → host target ("127.0.0.1:PORT" or {dir: PATH}). */
  ports: Map<number, LinkTarget>
  seed: number
  default: LinkProfile
  /** Site key as written (UAI, VM name or node/vmid) → partial profile. */
  sites: Map<string, Partial<LinkProfile>>
}

export const UNLIMITED: LinkProfile = {downBytesPerS: Infinity, upBytesPerS: Infinity, latencyMs: 0, loss: 0, down: false}

export function emptyLinkSimConfig(): LinkSimConfig {
  return {ports: new Map(), seed: 1, default: {...UNLIMITED}, sites: new Map()}
}

function bad(source: string, message: string): UserError {
  return new UserError(ErrorCode.USAGE, `${source}: ${message}`, {where: {file: source}, suggestions: ['See docs/lab.md ("Guest path to the host and link simulator") for the format.']})
}

/**
 * A bandwidth in bits per second: a number, or `2M`, `512k`, `1.5G`, `2Mbit`, `2 Mbit/s` (decimal
 * multiples, as network links are sold); `0` and `unlimited` mean no cap. Returns bytes per second.
 */
export function parseBandwidth(v: unknown, what = 'bandwidth'): number {
  if (v === 0 || v === '0' || v === 'unlimited') return Infinity
  if (typeof v === 'number' && Number.isFinite(v) && v > 0) return v / 8
  if (typeof v === 'string') {
    const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bit|bps|b)?(?:\/s)?$/.exec(v.trim())
    if (m) {
      const mult = {'': 1, k: 1e3, m: 1e6, g: 1e9}[m[2].toLowerCase() as '' | 'k' | 'm' | 'g']
      const bits = Number(m[1]) * mult
      if (bits > 0) return bits / 8
    }
  }
  throw new Error(`${what} must be a bit rate such as 2M, 512k or 1G (bit/s), 0 or "unlimited"; got ${JSON.stringify(v)}`)
}

const PROFILE_KEYS = new Set(['bandwidth', 'upload', 'latency_ms', 'loss', 'cut_at_byte', 'down'])

function profileFrom(obj: unknown, where: string, source: string): Partial<LinkProfile> {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw bad(source, `${where} must be a mapping`)
  const o = obj as Record<string, unknown>
  for (const k of Object.keys(o)) if (!PROFILE_KEYS.has(k)) throw bad(source, `${where}: unknown key "${k}" (known: ${[...PROFILE_KEYS].join(', ')})`)
  const p: Partial<LinkProfile> = {}
  try {
    if (o.bandwidth !== undefined) p.downBytesPerS = parseBandwidth(o.bandwidth, `${where}.bandwidth`)
    if (o.upload !== undefined) p.upBytesPerS = parseBandwidth(o.upload, `${where}.upload`)
  } catch (error) {
    throw bad(source, (error as Error).message)
  }
  if (o.bandwidth !== undefined && o.upload === undefined) p.upBytesPerS = p.downBytesPerS
  if (o.latency_ms !== undefined) {
    if (typeof o.latency_ms !== 'number' || !(o.latency_ms >= 0 && o.latency_ms <= 60_000)) throw bad(source, `${where}.latency_ms must be a number of ms between 0 and 60000`)
    p.latencyMs = o.latency_ms
  }
  if (o.loss !== undefined) {
    if (typeof o.loss !== 'number' || !(o.loss >= 0 && o.loss < 1)) throw bad(source, `${where}.loss must be a fraction, 0 <= loss < 1`)
    p.loss = o.loss
  }
  if (o.cut_at_byte !== undefined && o.cut_at_byte !== null) {
    if (typeof o.cut_at_byte !== 'number' || !Number.isInteger(o.cut_at_byte) || o.cut_at_byte < 0) throw bad(source, `${where}.cut_at_byte must be a whole number of bytes`)
    p.cutAtByte = o.cut_at_byte
  }
  if (o.down !== undefined) {
    if (typeof o.down !== 'boolean') throw bad(source, `${where}.down must be true or false`)
    p.down = o.down
  }
  return p
}

function targetFrom(v: unknown, where: string, source: string): LinkTarget {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Record<string, unknown>
    for (const k of Object.keys(o)) if (k !== 'dir') throw bad(source, `${where}: unknown key "${k}" (known: dir)`)
    if (typeof o.dir !== 'string' || !isAbsolute(o.dir)) throw bad(source, `${where}.dir must be an absolute directory path, got ${JSON.stringify(o.dir)}`)
    return {dir: o.dir}
  }
  const m = typeof v === 'string' ? /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost):(\d{1,5})$/.exec(v.trim()) : null
  const port = m ? Number(m[2]) : NaN
  // the lab reaches nothing but this machine's loopback (as its download-url does)
  if (!m || !(port >= 1 && port <= 65535)) throw bad(source, `${where} must be a loopback TCP address such as 127.0.0.1:8080 or {dir: /absolute/path}, got ${JSON.stringify(v)}`)
  return {host: m[1] === 'localhost' ? '127.0.0.1' : m[1], port}
}

/** Builds the configuration from the YAML's plain object. */
export function linkSimConfigFrom(obj: unknown, source = 'link-sim'): LinkSimConfig {
  if (obj === null || obj === undefined) return emptyLinkSimConfig()
  if (typeof obj !== 'object' || Array.isArray(obj)) throw bad(source, 'expected a YAML mapping')
  const o = obj as Record<string, unknown>
  const known = new Set(['uplink', 'seed', 'default', 'sites'])
  for (const k of Object.keys(o)) if (!known.has(k)) throw bad(source, `unknown key "${k}" (known: ${[...known].join(', ')})`)
  const cfg = emptyLinkSimConfig()
  if (o.seed !== undefined) {
    if (!Number.isInteger(o.seed)) throw bad(source, 'seed must be an integer')
    cfg.seed = o.seed as number
  }
  if (o.uplink !== undefined) {
    const u = o.uplink as Record<string, unknown> | null
    if (!u || typeof u !== 'object' || Array.isArray(u)) throw bad(source, 'uplink must be a mapping with ports')
    for (const k of Object.keys(u)) if (k !== 'ports') throw bad(source, `uplink: unknown key "${k}" (known: ports)`)
    const ports = (u.ports ?? {}) as Record<string, unknown>
    if (typeof ports !== 'object' || Array.isArray(ports)) throw bad(source, 'uplink.ports must map guest ports to host targets')
    for (const [gp, target] of Object.entries(ports)) {
      const n = Number(gp)
      if (!Number.isInteger(n) || n < 1 || n > 65535) throw bad(source, `uplink.ports: "${gp}" is not a TCP port`)
      cfg.ports.set(n, targetFrom(target, `uplink.ports.${gp}`, source))
    }
  }
  if (o.default !== undefined) cfg.default = {...UNLIMITED, ...profileFrom(o.default, 'default', source)}
  if (o.sites !== undefined && o.sites !== null) {
    if (typeof o.sites !== 'object' || Array.isArray(o.sites)) throw bad(source, 'sites must map a UAI, VM name or node/vmid to a profile')
    for (const [k, v] of Object.entries(o.sites as Record<string, unknown>)) cfg.sites.set(k, profileFrom(v, `sites.${k}`, source))
  }
  return cfg
}

export async function loadLinkSimFile(file: string): Promise<LinkSimConfig> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    throw new UserError(ErrorCode.USAGE, `${file}: cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, {where: {file}})
  }
  let obj: unknown
  try {
    obj = parseYaml(text)
  } catch (error) {
    throw bad(file, `not valid YAML: ${(error as Error).message.split('\n')[0]}`)
  }
  return linkSimConfigFrom(obj, file)
}

/** Who a connection belongs to: the VM's node and id, and its name (`pgi-<uai>` once deployed). */
export interface SiteIdentity {
  node: string
  vmid: number
  name?: string
}

/** The profile of one site: `default`, then the first site entry that names it (node/vmid, VM name, UAI). */
export function profileFor(cfg: LinkSimConfig, site: SiteIdentity): {profile: LinkProfile; key?: string} {
  const name = site.name?.toLowerCase()
  for (const [k, p] of cfg.sites) {
    const lk = k.toLowerCase()
    if (lk === `${site.node}/${site.vmid}` || (name && (lk === name || `pgi-${lk}` === name))) return {profile: {...cfg.default, ...p}, key: k}
  }
  return {profile: {...cfg.default}}
}
