import {readFileSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

/**
 * The official Proxmox VE API schema (../shared/pve-api/apidoc.json for 9.1, apidoc-pve8.json for
 * 8.4), read AT TEST TIME — it is never copied into this repository. Used by the lab's conformance
 * test and by anyone who wants to prove that what pgi sends is valid:
 *
 *   const s = loadPveSchema('9.1')
 *   expect(validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 100, virtio0: 'local:0,import-from=…'})).toEqual({})
 */

export type PveVersionKey = '9.1' | '8.4'

export interface SchemaParam {
  type?: string
  format?: string | Record<string, SchemaParam & {default_key?: number; alias?: string; keyAlias?: string}>
  optional?: number
  enum?: string[]
  minimum?: number
  maximum?: number
  maxLength?: number
  pattern?: string
  requires?: string
  items?: SchemaParam
  default_key?: number
  alias?: string
}

export interface SchemaMethod {
  method: string
  name: string
  allowtoken?: number
  permissions?: {check?: unknown[]; user?: string; description?: string}
  parameters?: {additionalProperties?: number; properties?: Record<string, SchemaParam>}
  returns?: unknown
}

interface SchemaNode {
  path: string
  info?: Record<string, SchemaMethod>
  children?: SchemaNode[]
}

export interface PveSchema {
  version: PveVersionKey
  /** Template path → node. */
  byPath: Map<string, SchemaNode>
  /** [regex, template] for concrete-path lookup. */
  matchers: [RegExp, string][]
}

const cache = new Map<PveVersionKey, PveSchema>()

/** Folder of the schema files: PGI_PVE_SCHEMA_DIR, else ../shared/pve-api beside the repository. */
export function schemaDir(): string {
  if (process.env.PGI_PVE_SCHEMA_DIR) return resolve(process.env.PGI_PVE_SCHEMA_DIR)
  const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
  return resolve(repo, '..', 'shared', 'pve-api')
}

export function loadPveSchema(version: PveVersionKey = '9.1'): PveSchema {
  const hit = cache.get(version)
  if (hit) return hit
  const file = join(schemaDir(), version === '9.1' ? 'apidoc.json' : 'apidoc-pve8.json')
  const roots = JSON.parse(readFileSync(file, 'utf8')) as SchemaNode[]
  const byPath = new Map<string, SchemaNode>()
  const walk = (nodes: SchemaNode[]) => {
    for (const n of nodes) {
      byPath.set(n.path, n)
      if (n.children) walk(n.children)
    }
  }
  walk(roots)
  const matchers: [RegExp, string][] = [...byPath.keys()].map((p) => [new RegExp('^' + p.replace(/\{\w+\}/g, '[^/]+') + '$'), p])
  // Literal segments must win over placeholders (e.g. /nodes/{node}/qemu before /nodes/{node}/{x}).
  matchers.sort((a, b) => b[1].replace(/\{\w+\}/g, '').length - a[1].replace(/\{\w+\}/g, '').length)
  const s: PveSchema = {version, byPath, matchers}
  cache.set(version, s)
  return s
}

/** The schema template of a path: "/nodes/pve1/qemu/100/config" → "/nodes/{node}/qemu/{vmid}/config" (templates map to themselves). */
export function templateOf(schema: PveSchema, path: string): string | undefined {
  const clean = path.replace(/^\/api2\/json/, '').replace(/\/$/, '')
  if (schema.byPath.has(clean)) return clean
  return schema.matchers.find(([re]) => re.test(clean))?.[1]
}

/** The method description for a method + path (concrete or template), or undefined. */
export function findMethod(schema: PveSchema, method: string, path: string): SchemaMethod | undefined {
  const t = templateOf(schema, path)
  return t ? schema.byPath.get(t)?.info?.[method.toUpperCase()] : undefined
}

/** The schema name of a parameter: "virtio1" → "virtio[n]" when the schema has that family. */
export function schemaParamKey(props: Record<string, SchemaParam>, name: string): string | undefined {
  if (props[name]) return name
  const m = /^([a-z]+)(\d+)$/.exec(name)
  if (m && props[`${m[1]}[n]`]) return `${m[1]}[n]`
  return undefined
}

function scalarProblem(p: SchemaParam, v: string): string | undefined {
  if (p.type === 'integer' && !/^-?\d+$/.test(v)) return `type check ('integer') failed - got '${v}'`
  if (p.type === 'number' && !/^-?\d+(\.\d+)?$/.test(v)) return `type check ('number') failed - got '${v}'`
  if (p.type === 'boolean' && !/^(0|1|true|false|yes|no|on|off)$/i.test(v)) return `type check ('boolean') failed - got '${v}'`
  if ((p.type === 'integer' || p.type === 'number') && p.minimum !== undefined && Number(v) < p.minimum) return `value must have a minimum value of ${p.minimum}`
  if ((p.type === 'integer' || p.type === 'number') && p.maximum !== undefined && Number(v) > p.maximum) return `value must have a maximum value of ${p.maximum}`
  if (p.enum && !p.enum.includes(v)) return `value '${v}' does not have a value in the enumeration '${p.enum.join(', ')}'`
  if (p.maxLength !== undefined && v.length > p.maxLength) return `value may only be ${p.maxLength} characters long`
  if (p.pattern !== undefined && !new RegExp(`^(?:${p.pattern})$`).test(v)) return `value does not match the regex pattern`
  return undefined
}

/** Checks a property-string value against a format object ("k=v,…" with a default key). */
function propertyStringProblem(format: Record<string, SchemaParam>, v: string): string | undefined {
  const defaultKey = Object.entries(format).find(([, d]) => d.default_key)?.[0]
  const seen = new Set<string>()
  for (const part of v.split(',')) {
    if (part === '') continue
    const eq = part.indexOf('=')
    let k = eq < 0 ? defaultKey : part.slice(0, eq)
    const val = eq < 0 ? part : part.slice(eq + 1)
    if (!k) return `value without key, but schema does not define a default key`
    let def = format[k]
    if (!def) return `invalid format - ${k}: property is not defined in schema`
    if ((def as {alias?: string}).alias) {
      // "virtio=MAC" style: the key is an alias (keyAlias) of another key.
      k = (def as {alias: string}).alias
      def = format[k] ?? def
    }
    if (seen.has(k)) return `invalid format - duplicate key ${k}`
    seen.add(k)
    const p = def.type ? scalarProblem(def, val) : undefined
    if (p) return `invalid format - ${k}: ${p}`
    if (def.format === 'urlencoded' && !/^[-%a-zA-Z0-9_.!~*'()]*$/.test(val)) return `invalid format - ${k}: invalid urlencoded string`
  }
  for (const [k, d] of Object.entries(format)) {
    if (!d.optional && d.type && !seen.has(k) && !(d as {alias?: string}).alias) return `invalid format - ${k}: property is missing and it is not optional`
  }
  return undefined
}

/**
 * Validates a request's parameters against the schema the way PVE does (path parameters are
 * taken from the concrete path). Returns {param: reason}; empty when valid. Values are given as
 * they would be sent: booleans as 1/0 (true/false are converted), arrays for array params.
 */
export function validateRequest(schema: PveSchema, method: string, path: string, params: Record<string, unknown>): Record<string, string> {
  const t = templateOf(schema, path)
  const m = t ? schema.byPath.get(t)?.info?.[method.toUpperCase()] : undefined
  if (!t || !m) return {'<path>': `no ${method} ${path} in the PVE ${schema.version} schema`}
  const props = m.parameters?.properties ?? {}
  const all: Record<string, unknown> = {...params}
  // Path parameters from the concrete path.
  const names = [...t.matchAll(/\{(\w+)\}/g)].map((x) => x[1]!)
  const re = new RegExp('^' + t.replace(/\{\w+\}/g, '([^/]+)') + '$')
  const vals = re.exec(path.replace(/^\/api2\/json/, '').replace(/\/$/, ''))
  names.forEach((n, i) => {
    const v = vals?.[i + 1]
    if (v !== undefined && !/^\{\w+\}$/.test(v)) all[n] = decodeURIComponent(v)
    else all[n] ??= `{${n}}`
  })
  const errors: Record<string, string> = {}
  for (const [name, raw] of Object.entries(all)) {
    if (raw === undefined) continue
    const key = schemaParamKey(props, name)
    if (!key) {
      errors[name] = 'property is not defined in schema and the schema does not allow additional properties'
      continue
    }
    const p = props[key]!
    if (typeof raw === 'string' && /^\{\w+\}$/.test(raw)) continue // placeholder path param
    if (p.type === 'array') {
      if (!Array.isArray(raw) && typeof raw !== 'string') errors[name] = `type check ('array') failed`
      continue
    }
    if (Array.isArray(raw)) {
      errors[name] = `type check ('${p.type}') failed - got ARRAY`
      continue
    }
    const v = typeof raw === 'boolean' ? (raw ? '1' : '0') : String(raw)
    const problem = scalarProblem(p, v) ?? (p.format && typeof p.format === 'object' ? propertyStringProblem(p.format as Record<string, SchemaParam>, v) : undefined) ?? (p.format === 'urlencoded' && !/^[-%a-zA-Z0-9_.!~*'()]*$/.test(v) ? `invalid urlencoded string: ${v}` : undefined)
    if (problem) errors[name] = problem
    else if (p.requires && all[p.requires] === undefined) errors[p.requires] = 'parameter is missing and it is not optional'
  }
  for (const [name, p] of Object.entries(props)) {
    if (p.optional || name.endsWith('[n]')) continue
    if (all[name] === undefined && !errors[name]) errors[name] = 'property is missing and it is not optional'
  }
  return errors
}
