import {checkCodeFormat, CPU_MODELS, NAMED_PROPERTY_FORMATS, perlRegex, splitList, VM_CPU_FLAGS} from './pve-formats.js'
import type {SchemaProp} from './pve-schema.js'

export {splitList} from './pve-formats.js'

/**
 * Parameter verification as PVE's JSONSchema.pm does it (check_prop, check_type, check_object,
 * parse_property_string), driven by the API schema (src/lab/pve-schema/): the same checks in the
 * same order and the same texts, so that clients matching on them behave the same against the lab.
 * Written here because PVE's schema dialect (property strings, named formats, `-list` formats,
 * numbered keys) is not JSON Schema and no library implements it.
 */

export type RawParams = Record<string, string | string[]>
export type ParamErrors = Record<string, string>

/** Thrown by handlers for a 400 with per-parameter errors. */
export class ParamError extends Error {
  constructor(readonly errors: ParamErrors) {
    super('Parameter verification failed.')
  }
}

/**
 * Highest index of each numbered parameter family (`net[n]` in the schema stands for net0…net31).
 * The schema gives these ranges only in prose, so they are PVE's constants (qemu-server's
 * MAX_NETS, MAX_*_DISKS, MAX_UNUSED_DISKS, MAX_SERIAL_PORTS, …; corosync links; pve-manager's
 * ACME domains; pve-container's mount points and devices).
 */
export const NUMBERED_MAX: Record<string, number> = {
  ide: 3, sata: 5, scsi: 30, virtio: 15, unused: 255, net: 31, ipconfig: 31, serial: 3, parallel: 2,
  hostpci: 15, usb: 13, numa: 7, virtiofs: 9, link: 7, mp: 255, dev: 255, acmedomain: 4,
}

/** The schema key of a parameter: `virtio7` → `virtio[n]` (within PVE's range); direct names as they are. */
export function schemaKeyOf(props: Record<string, SchemaProp>, name: string): string | undefined {
  if (props[name] && !name.endsWith('[n]')) return name
  const m = /^([a-z]+)(\d+)$/.exec(name)
  if (m && props[`${m[1]}[n]`] && !/^0\d/.test(m[2]!) && Number(m[2]) <= (NUMBERED_MAX[m[1]!] ?? -1)) return `${m[1]}[n]`
  return undefined
}

const truthy = (x: unknown) => x === 1 || x === true || x === '1'

/** PVE's is_number / is_integer. */
const NUMBER_RE = /^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$/
const INTEGER_RE = /^[+-]?\d+$/

/** PVE's parse_boolean (used inside property strings): 1/on/yes/true, 0/off/no/false. */
export function parseBoolean(v: string): '1' | '0' | undefined {
  if (/^(1|on|yes|true)$/i.test(v)) return '1'
  if (/^(0|off|no|false)$/i.test(v)) return '0'
  return undefined
}

/** check_type for a scalar (form values are strings; JSON booleans arrive as 1/0). */
function typeProblem(type: SchemaProp['type'], v: string): string | undefined {
  if (type === undefined || Array.isArray(type)) return undefined
  if (type === 'boolean' && v !== '1' && v !== '0') return `type check ('boolean') failed - got '${v}'`
  if (type === 'integer' && !INTEGER_RE.test(v)) return `type check ('integer') failed - got '${v}'`
  if (type === 'number' && !NUMBER_RE.test(v)) return `type check ('number') failed - got '${v}'`
  if (type === 'array' || type === 'object') return `type check ('${type}') failed`
  return undefined
}

/** The property-string sub-schema of a parameter, if its format is one (in place, or registered by name). */
export function propertyFormatOf(prop: SchemaProp, props?: Record<string, SchemaProp>): Record<string, SchemaProp> | undefined {
  const f = prop.format
  if (f && typeof f === 'object') return f
  if (typeof f !== 'string') return undefined
  if (f === 'pve-qm-ide') {
    const ide = props?.['ide[n]']?.format
    return ide && typeof ide === 'object' ? ide : undefined
  }
  return NAMED_PROPERTY_FORMATS[f]
}

/** Extra checks PVE runs after parsing some named property strings (format validators). */
function formatValidator(name: string | undefined, parsed: Record<string, string>): string | undefined {
  if (name === 'pve-vm-cpu-conf') {
    const t = parsed.cputype
    if (!t) return 'CPU is missing cputype'
    if (t.startsWith('custom-')) return `CPU model '${t.slice('custom-'.length)}' does not exist`
    if (!CPU_MODELS.includes(t)) return `Built-in cputype '${t}' is not defined (missing 'custom-' prefix?)`
    const flag = `[+-](?:${VM_CPU_FLAGS.join('|')})`
    if (parsed.flags && !new RegExp(`^${flag}(;${flag})*$`).test(parsed.flags)) return `VM-specific CPU flags must be a subset of: ${VM_CPU_FLAGS.join(', ')}`
  }
  return undefined
}

/**
 * PVE's parse_property_string: "k=v,k2=v2" (a bare value goes to the default key, booleans are
 * normalised to 1/0, aliases map to their key) then check_object on the result. Throws an Error
 * whose message is PVE's (e.g. "format error\nvirtio0.bogus: property is not defined in schema…").
 */
export function parsePropertyString(value: string, format: Record<string, SchemaProp>, path = '', formatName?: string): Record<string, string> {
  const res: Record<string, string> = {}
  let defaultKey: string | undefined
  for (const part of value.split(',')) {
    if (/^\s*$/.test(part)) continue
    const kv = /^([^=]+)=(.+)$/s.exec(part)
    if (kv) {
      let k = kv[1]!
      let v = kv[2]!
      if (res[k] !== undefined) throw new Error(`duplicate key in comma-separated list property: ${k}`)
      let schema = format[k]
      if (schema?.alias) {
        if (schema.keyAlias) {
          // "virtio=BC:24:…" in a net property string: the key names the model, the value is the MAC
          if (res[schema.keyAlias] !== undefined) throw new Error(`key alias '${schema.keyAlias}' is already defined`)
          res[schema.keyAlias] = k
        }
        k = schema.alias
        schema = format[k]
        if (res[k] !== undefined) throw new Error(`key '${k}' is already defined (via alias)`)
      }
      if (!schema) throw new Error(`invalid key in comma-separated list property: ${k}`)
      if (schema.type === 'boolean') v = parseBoolean(v) ?? v
      res[k] = v
    } else if (!part.includes('=')) {
      if (defaultKey) throw new Error(`duplicate key in comma-separated list property: ${defaultKey}`)
      defaultKey = Object.keys(format).find((k) => truthy(format[k]!.default_key))
      if (!defaultKey) throw new Error('value without key, but schema does not define a default key')
      if (res[defaultKey] !== undefined) throw new Error(`duplicate key in comma-separated list property: ${defaultKey}`)
      res[defaultKey] = format[defaultKey]!.type === 'boolean' ? (parseBoolean(part) ?? part) : part
    } else {
      throw new Error('missing key in comma-separated list property')
    }
  }
  const errors: ParamErrors = {}
  checkObject(path, format, res, errors)
  if (Object.keys(errors).length > 0) {
    // PVE::Exception's text: the message, then "<path>: <error>" per error, each line ended
    throw new Error('format error\n' + Object.entries(errors).map(([k, e]) => `${k}: ${e}\n`).join(''))
  }
  const extra = formatValidator(formatName, res)
  if (extra) throw new Error(extra)
  return res
}

/** check_object over a parsed property string (additional properties are not allowed). */
function checkObject(path: string, schema: Record<string, SchemaProp>, value: Record<string, string>, errors: ParamErrors): void {
  const at = (k: string) => (path ? `${path}.${k}` : k)
  for (const [k, s] of Object.entries(schema)) {
    const p = checkProp(s, value[k], undefined)
    if (p) errors[at(k)] = p
  }
  for (const k of Object.keys(value)) {
    const s = schema[k]
    if (!s) {
      errors[at(k)] = 'property is not defined in schema and the schema does not allow additional properties'
      continue
    }
    if (typeof s.requires === 'string' && value[s.requires] === undefined) errors[at(s.requires)] = `missing property required by '${at(k)}'`
  }
}

/**
 * check_prop for one value; returns PVE's error text or undefined. `props` are the other
 * parameters of the method (for `pve-qm-ide`, which is the schema's `ide[n]` format).
 */
export function checkProp(prop: SchemaProp, raw: string | string[] | undefined, props: Record<string, SchemaProp> | undefined, path = ''): string | undefined {
  if (prop.alias) return undefined
  if (raw === undefined) return truthy(prop.optional) || prop.type === 'null' ? undefined : 'property is missing and it is not optional'
  if (prop.type === 'array') {
    // A form field given once is a one-element array (RESTHandler's normalize_legacy_param_formats).
    const items = Array.isArray(raw) ? raw : [raw]
    if (prop.items) {
      for (const [i, x] of items.entries()) {
        const p = checkProp(prop.items, x, props, `${path}[${i}]`)
        if (p) return p
      }
    }
    return undefined
  }
  let v: string
  if (Array.isArray(raw)) {
    if (prop.type === 'string' && typeof prop.format === 'string' && prop.format.endsWith('-list')) v = raw.join(',')
    else return `type check ('${String(prop.type)}') failed - got ARRAY`
  } else v = raw
  const t = typeProblem(prop.type, v)
  if (t) return t
  const format = propertyFormatOf(prop, props)
  if (format) {
    try {
      parsePropertyString(v, format, path, typeof prop.format === 'string' ? prop.format : undefined)
    } catch (e) {
      const msg = (e as Error).message
      return `invalid format - ${msg.endsWith('\n') ? msg : `${msg}\n`}`
    }
  } else if (typeof prop.format === 'string') {
    const f = checkCodeFormat(prop.format, v)
    if (f) return `invalid format - ${f}\n`
  }
  if (prop.pattern !== undefined && !perlRegex(prop.pattern).test(v)) return 'value does not match the regex pattern'
  if (prop.maxLength !== undefined && [...v].length > prop.maxLength) return `value may only be ${prop.maxLength} characters long`
  if (prop.minLength !== undefined && [...v].length < prop.minLength) return `value must be at least ${prop.minLength} characters long`
  if (NUMBER_RE.test(v)) {
    if (prop.maximum !== undefined && Number(v) > Number(prop.maximum)) return `value must have a maximum value of ${prop.maximum}`
    if (prop.minimum !== undefined && Number(v) < Number(prop.minimum)) return `value must have a minimum value of ${prop.minimum}`
  }
  if (prop.enum && !prop.enum.includes(v)) return `value '${v}' does not have a value in the enumeration '${prop.enum.join(', ')}'`
  return undefined
}

/**
 * Validates all parameters of a request (path parameters included) against a method's schema
 * properties. Returns PVE's error map, empty when valid: unknown parameters, missing required
 * ones, wrong type/format/pattern/bounds/enum, `requires`.
 */
export function validateParams(props: Record<string, SchemaProp>, params: RawParams): ParamErrors {
  const errors: ParamErrors = {}
  for (const [name, raw] of Object.entries(params)) {
    const key = schemaKeyOf(props, name)
    if (!key) {
      errors[name] = 'property is not defined in schema and the schema does not allow additional properties'
      continue
    }
    const prop = props[key]!
    const p = checkProp(prop, raw, props, name)
    if (p) errors[name] = p
    if (typeof prop.requires === 'string' && params[prop.requires] === undefined) errors[prop.requires] = `missing property required by '${name}'`
  }
  for (const [name, prop] of Object.entries(props)) {
    if (name.endsWith('[n]') || truthy(prop.optional) || params[name] !== undefined || errors[name] !== undefined) continue
    errors[name] = 'property is missing and it is not optional'
  }
  return errors
}

// ---- helpers shared by the handlers ------------------------------------------------------------------

/** Tag normalisation as PVE stores it: lower case, unique, sorted, `;`-joined. */
export function normalizeTags(v: string): string {
  return [...new Set(splitList(v).map((t) => t.toLowerCase()))].sort().join(';')
}

/** Serialises a property string in PVE's order: default key first (bare), then the others. */
export function formatPropertyString(obj: Record<string, string | number | undefined>, defaultKey?: string): string {
  const parts: string[] = []
  if (defaultKey && obj[defaultKey] !== undefined) parts.push(String(obj[defaultKey]))
  for (const [k, v] of Object.entries(obj)) if (k !== defaultKey && v !== undefined) parts.push(`${k}=${v}`)
  return parts.join(',')
}

/** A validated PVE boolean (1/0; JSON true/false arrive as 1/0). */
export function parseBool(v: string | string[] | undefined): boolean | undefined {
  if (v === undefined || Array.isArray(v)) return undefined
  return parseBoolean(v) === '1'
}

/** Bytes → PVE's size text ("32G", "512M", "1536K"; PVE::JSONSchema::format_size). */
export function formatSize(bytes: number): string {
  for (const [u, m] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= m && bytes % m === 0) return `${bytes / m}${u}`
  }
  return String(bytes)
}
