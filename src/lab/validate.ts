import {isIP} from 'node:net'

import {NUMBERED_PARAMS, type ParamDef, type SubKeyDef} from './params.js'

/**
 * Parameter verification as PVE's JSONSchema module does it: the same checks and the same texts
 * (so clients that match on them behave the same against the lab). Written here because PVE's
 * formats (property strings, pve-tag-list, urlencoded…) are not JSON Schema and no library knows them.
 */

export type RawParams = Record<string, string | string[]>
export type ParamErrors = Record<string, string>

/** Thrown by handlers for a 400 with per-parameter errors. */
export class ParamError extends Error {
  constructor(readonly errors: ParamErrors) {
    super('Parameter verification failed.')
  }
}

const NODE_RE = /^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$/
const STORAGE_ID_RE = /^[a-z][a-z0-9\-_.]*[a-z0-9]$/i
const CONFIGID_RE = /^[a-z][a-z0-9_-]+$/i
const DNS_LABEL = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)'
const DNS_NAME_RE = new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*$`)
const TAG_RE = /^[a-z0-9_][a-z0-9_\-+.]*$/i
const URLENCODED_RE = /^[-%a-zA-Z0-9_.!~*'()]*$/
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i
const POOL_RE = /^[A-Za-z0-9_\-.]+$/
const REALM_RE = /^[A-Za-z][A-Za-z0-9.\-_]+$/
const CONTENT_TYPES = ['images', 'rootdir', 'vztmpl', 'iso', 'backup', 'snippets', 'import', 'none']

/** Splits a PVE "-list" value on `,`, `;` and whitespace. */
export function splitList(v: string): string[] {
  return v.split(/[,;\s]+/).filter((x) => x !== '')
}

/** Tag normalisation as PVE stores it: lower case, unique, sorted, `;`-joined. */
export function normalizeTags(v: string): string {
  return [...new Set(splitList(v).map((t) => t.toLowerCase()))].sort().join(';')
}

/** Parses "k=v,k2=v2" (a value without "k=" goes to `defaultKey`). Throws a PVE-style text. */
export function parsePropertyString(value: string, keys: Record<string, SubKeyDef>): Record<string, string> {
  const out: Record<string, string> = {}
  const defaultKey = Object.entries(keys).find(([, d]) => d.defaultKey)?.[0]
  for (const part of value.split(',')) {
    if (part === '') continue
    const eq = part.indexOf('=')
    let k: string
    let v: string
    if (eq < 0) {
      if (!defaultKey || out[defaultKey] !== undefined) throw new Error(`value without key, but schema does not define a default key`)
      k = defaultKey
      v = part
    } else {
      k = part.slice(0, eq)
      v = part.slice(eq + 1)
    }
    const def = keys[k]
    if (!def) throw new Error(`invalid format - format error\n${k}: property is not defined in schema and the schema does not allow additional properties`)
    if (out[k] !== undefined) throw new Error(`invalid format - duplicate key in comma-separated list property: ${k}`)
    const problem = checkScalar(v, def)
    if (problem) throw new Error(`invalid format - format error\n${k}: ${problem}`)
    out[k] = v
  }
  return out
}

/** Serialises a property string in PVE's order: default key first (bare), then the others. */
export function formatPropertyString(obj: Record<string, string | number | undefined>, defaultKey?: string): string {
  const parts: string[] = []
  if (defaultKey && obj[defaultKey] !== undefined) parts.push(String(obj[defaultKey]))
  for (const [k, v] of Object.entries(obj)) if (k !== defaultKey && v !== undefined) parts.push(`${k}=${v}`)
  return parts.join(',')
}

function checkScalar(v: string, def: {type: string; enum?: string[]; minimum?: number; maximum?: number}): string | undefined {
  if (def.type === 'integer' || def.type === 'number') {
    const ok = def.type === 'integer' ? /^-?\d+$/.test(v) : /^-?\d+(\.\d+)?$/.test(v)
    if (!ok) return `type check ('${def.type}') failed - got '${v}'`
    const n = Number(v)
    if (def.minimum !== undefined && n < def.minimum) return `value must have a minimum value of ${def.minimum}`
    if (def.maximum !== undefined && n > def.maximum) return `value must have a maximum value of ${def.maximum}`
  }
  if (def.type === 'boolean' && !/^(0|1|true|false|yes|no|on|off)$/i.test(v)) return `type check ('boolean') failed - got '${v}'`
  if (def.enum && !def.enum.includes(v)) return `value '${v}' does not have a value in the enumeration '${def.enum.join(', ')}'`
  return undefined
}

/** Checks a named PVE format; returns the PVE error text or undefined. */
export function checkFormat(format: string, v: string): string | undefined {
  switch (format) {
    case 'pve-node':
      return NODE_RE.test(v) ? undefined : `value does not look like a valid node name`
    case 'pve-vmid':
      return undefined // integer range is checked by minimum/maximum
    case 'pve-storage-id':
      return STORAGE_ID_RE.test(v) ? undefined : `storage ID '${v}' contains illegal characters`
    case 'pve-configid':
      return CONFIGID_RE.test(v) ? undefined : `invalid configuration ID '${v}'`
    case 'pve-configid-list':
      for (const x of splitList(v)) if (!CONFIGID_RE.test(x)) return `invalid configuration ID '${x}'`
      return undefined
    case 'dns-name':
      return DNS_NAME_RE.test(v) ? undefined : `value does not look like a valid DNS name`
    case 'pve-tag-list':
      for (const t of splitList(v)) if (!TAG_RE.test(t)) return `invalid characters in tag '${t}'`
      return undefined
    case 'urlencoded':
      return URLENCODED_RE.test(v) ? undefined : `invalid urlencoded string: ${v}`
    case 'address-list':
      for (const a of splitList(v)) if (!isIP(a)) return `value does not look like a valid IP address`
      return undefined
    case 'pve-poolid':
      return POOL_RE.test(v) ? undefined : `pool name '${v}' contains illegal characters`
    case 'pve-realm':
      return REALM_RE.test(v) ? undefined : `value does not look like a valid realm name`
    case 'pve-storage-content':
      return CONTENT_TYPES.includes(v) ? undefined : `invalid content type '${v}'`
    case 'pve-storage-content-list':
      for (const c of splitList(v)) if (!CONTENT_TYPES.includes(c)) return `invalid content type '${c}'`
      return undefined
    case 'pve-qm-ipconfig':
      return checkIpconfig(v)
    case 'pve-qm-boot':
      return /^(order=[a-z0-9]+(;[a-z0-9]+)*|legacy=[acdn]{1,4})?$/.test(v) ? undefined : `invalid format - format error`
    case 'pve-vm-cpu-conf':
      return /^(cputype=)?[A-Za-z0-9_\-.]+$/.test(v) ? undefined : `invalid format - format error`
    case 'mac-addr':
      return MAC_RE.test(v) ? undefined : `value does not look like a valid MAC address`
    default:
      return undefined
  }
}

/** ip=<CIDR|dhcp>,gw=<IP>,ip6=…,gw6=… */
function checkIpconfig(v: string): string | undefined {
  for (const part of v.split(',')) {
    const [k, val = ''] = part.split('=', 2)
    if (k === 'ip') {
      if (val === 'dhcp') continue
      const [addr, prefix] = val.split('/')
      if (isIP(addr ?? '') !== 4 || !/^\d+$/.test(prefix ?? '') || Number(prefix) > 32) return `invalid format - format error\nip: value does not look like a valid IPv4 network configuration`
    } else if (k === 'gw') {
      if (isIP(val) !== 4) return `invalid format - format error\ngw: value does not look like a valid IPv4 address`
    } else if (k === 'ip6') {
      if (!['dhcp', 'auto'].includes(val) && isIP(val.split('/')[0] ?? '') !== 6) return `invalid format - format error\nip6: value does not look like a valid IPv6 network configuration`
    } else if (k === 'gw6') {
      if (isIP(val) !== 6) return `invalid format - format error\ngw6: value does not look like a valid IPv6 address`
    } else return `invalid format - format error\n${k}: property is not defined in schema and the schema does not allow additional properties`
  }
  return undefined
}

/** Validates one value against its definition; returns the PVE error text or undefined. */
export function checkParam(def: ParamDef, raw: string | string[]): string | undefined {
  // A single form value is a one-element array (PVE's form decoding does the same).
  if (def.type === 'array') return undefined
  if (Array.isArray(raw)) return `type check ('${def.type}') failed - got ARRAY`
  const v = raw
  const scalar = checkScalar(v, def)
  if (scalar) return scalar
  if (def.maxLength !== undefined && v.length > def.maxLength) return `value may only be ${def.maxLength} characters long`
  if (def.pattern !== undefined && !new RegExp(`^(?:${def.pattern})$`).test(v)) return `value does not match the regex pattern`
  if (def.format) {
    const f = checkFormat(def.format, v)
    if (f) return f
  }
  if (def.keys) {
    try {
      parsePropertyString(v, def.keys)
    } catch (e) {
      return (e as Error).message
    }
  }
  return undefined
}

/** Looks up the definition of an incoming parameter name (handles numbered keys: virtio1 → virtio). */
export function paramDefFor(defs: Record<string, ParamDef>, name: string): ParamDef | undefined {
  const direct = defs[name]
  if (direct && direct.maxIndex === undefined) return direct
  const m = /^([a-z]+)(\d+)$/.exec(name)
  if (m && NUMBERED_PARAMS.has(m[1]!)) {
    const d = defs[m[1]!]
    if (d && d.maxIndex !== undefined && Number(m[2]) <= d.maxIndex) return d
  }
  return undefined
}

/**
 * Validates all parameters of a request (path params included). Returns PVE's error map, empty
 * when valid: unknown parameters, missing required ones, wrong type/format, `requires`.
 */
export function validateParams(defs: Record<string, ParamDef>, params: RawParams): ParamErrors {
  const errors: ParamErrors = {}
  for (const [name, raw] of Object.entries(params)) {
    const def = paramDefFor(defs, name)
    if (!def) {
      errors[name] = 'property is not defined in schema and the schema does not allow additional properties'
      continue
    }
    const p = checkParam(def, raw)
    if (p) errors[name] = p
    else if (def.requires && params[def.requires] === undefined) errors[def.requires] = `parameter is missing and it is not optional`
  }
  for (const [name, def] of Object.entries(defs)) {
    if (def.optional || def.maxIndex !== undefined) continue
    if (params[name] === undefined && errors[name] === undefined) errors[name] = 'property is missing and it is not optional'
  }
  return errors
}

/** PVE booleans: 1/0, true/false, yes/no, on/off. */
export function parseBool(v: string | string[] | undefined): boolean | undefined {
  if (v === undefined || Array.isArray(v)) return undefined
  return /^(1|true|yes|on)$/i.test(v)
}

/** "32" (GiB), "512M", "+2G", "10.5G" → bytes (PVE's disk-size: default unit G for bare numbers in STORAGE:SIZE, K/M/G/T suffixes). */
export function parseSize(v: string, defaultUnit: 'G' | 'B' = 'G'): number {
  const m = /^\+?(\d+(?:\.\d+)?)([KMGT])?$/.exec(v)
  if (!m) throw new Error(`unable to parse size '${v}'`)
  const unit = m[2] ?? (defaultUnit === 'G' ? 'G' : '')
  const mult = {'': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4}[unit] ?? 1
  return Math.round(Number(m[1]) * mult)
}

/** Bytes → PVE's size text ("32G", "512M", "1536K"). */
export function formatSize(bytes: number): string {
  for (const [u, m] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= m && bytes % m === 0) return `${bytes / m}${u}`
  }
  return String(bytes)
}
