import {checkCodeFormat, perlRegex} from '../../src/lab/pve-formats.js'
import {loadPveSchema as loadTrimmed, type PveRelease, type SchemaMethod, type SchemaProp} from '../../src/lab/pve-schema.js'
import {schemaKeyOf, validateParams} from '../../src/lab/validate.js'

/**
 * The Proxmox VE API schema (9.1 and 8.4) for tests: the trimmed copy kept in the repository
 * (src/lab/pve-schema/pve-<release>.json, made from the official files by
 * scripts/trim-pve-schema.mjs), so the tests need nothing outside the clone. The lab validates
 * requests against the same files; this helper adds template lookup by concrete path, request
 * validation of a recorded call, and validation of an answer against the method's return schema.
 *
 *   const s = loadPveSchema('9.1')
 *   expect(validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 100, virtio0: 'local:0,import-from=…'})).toEqual({})
 *   expect(validateResponse(s, 'GET', '/nodes/pve1/qemu/100/config', body.data)).toEqual([])
 */

export type PveVersionKey = PveRelease
export type {SchemaMethod, SchemaProp}
export type SchemaParam = SchemaProp

export interface PveSchema {
  version: PveVersionKey
  /** Template path → {path, info}. */
  byPath: Map<string, {path: string; info?: Record<string, SchemaMethod>}>
  /** [regex, template] for concrete-path lookup, literal segments first. */
  matchers: [RegExp, string][]
}

const cache = new Map<PveVersionKey, PveSchema>()

export function loadPveSchema(version: PveVersionKey = '9.1'): PveSchema {
  const hit = cache.get(version)
  if (hit) return hit
  const s = loadTrimmed(version)
  const matchers: [RegExp, string][] = [...s.byPath.keys()].map((p) => [new RegExp('^' + p.replace(/\{\w+\}/g, '[^/]+') + '$'), p])
  // Literal segments must win over placeholders (e.g. /nodes/{node}/qemu before /nodes/{node}/{x}).
  matchers.sort((a, b) => b[1].replace(/\{\w+\}/g, '').length - a[1].replace(/\{\w+\}/g, '').length)
  const out: PveSchema = {version, byPath: s.byPath, matchers}
  cache.set(version, out)
  return out
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
export function schemaParamKey(props: Record<string, SchemaProp>, name: string): string | undefined {
  return schemaKeyOf(props, name)
}

/**
 * Validates a request's parameters against the schema the way PVE does (the lab's validator,
 * src/lab/validate.ts; path parameters are taken from the concrete path). Returns {param: reason};
 * empty when valid. Values as they would be sent: booleans as 1/0 (true/false are converted),
 * arrays for repeated parameters.
 */
export function validateRequest(schema: PveSchema, method: string, path: string, params: Record<string, unknown>): Record<string, string> {
  const t = templateOf(schema, path)
  const m = t ? schema.byPath.get(t)?.info?.[method.toUpperCase()] : undefined
  if (!t || !m) return {'<path>': `no ${method} ${path} in the PVE ${schema.version} schema`}
  const all: Record<string, string | string[]> = {}
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue
    all[k] = Array.isArray(v) ? v.map(String) : typeof v === 'boolean' ? (v ? '1' : '0') : String(v)
  }
  const names = [...t.matchAll(/\{(\w+)\}/g)].map((x) => x[1]!)
  const re = new RegExp('^' + t.replace(/\{\w+\}/g, '([^/]+)') + '$')
  const vals = re.exec(path.replace(/^\/api2\/json/, '').replace(/\/$/, ''))
  names.forEach((n, i) => {
    const v = vals?.[i + 1]
    if (v !== undefined && !/^\{\w+\}$/.test(v)) all[n] = decodeURIComponent(v)
  })
  const errors = validateParams(m.parameters?.properties ?? {}, all)
  // template placeholders stand for any valid value
  for (const n of names) if (all[n] === undefined && errors[n]?.startsWith('property is missing')) delete errors[n]
  if (m.parameters?.additionalProperties) for (const k of Object.keys(errors)) if (errors[k]!.startsWith('property is not defined')) delete errors[k]
  return errors
}

// ---- answers ------------------------------------------------------------------------------------

const truthy = (x: unknown) => x === 1 || x === true || x === '1'

function typeOk(type: string, v: unknown): boolean {
  switch (type) {
    case 'string':
      return typeof v === 'string'
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v)
    case 'number':
      return typeof v === 'number' && Number.isFinite(v)
    case 'boolean':
      return typeof v === 'boolean' || v === 0 || v === 1
    case 'array':
      return Array.isArray(v)
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v)
    case 'null':
      return v === null
    case 'any':
      return true
    default:
      return true
  }
}

/**
 * Checks an answer's `data` against a return schema: JSON types (integer/number are JSON
 * numbers, boolean is true/false or 1/0, as PVE's JSON has them), required properties, no
 * unknown properties where the schema forbids them, enums, patterns, bounds, named formats, array
 * items. Returns the problems, each with its place (`data.memory.total: …`); empty when valid.
 */
export function checkAgainstSchema(s: SchemaProp | undefined, v: unknown, at = 'data'): string[] {
  if (!s) return []
  const problems: string[] = []
  const type = s.type
  if (v === undefined || v === null) {
    if (type === 'null' || (Array.isArray(type) && type.includes('null'))) return []
    return v === null && s.optional ? [] : [`${at}: missing (${String(type)} expected)`]
  }
  if (type !== undefined && !(Array.isArray(type) ? type.some((t) => typeOk(t, v)) : typeOk(type, v))) return [`${at}: ${JSON.stringify(v)?.slice(0, 80)} is not of type ${String(type)}`]
  if (Array.isArray(v)) {
    v.forEach((x, i) => problems.push(...checkAgainstSchema(s.items, x, `${at}[${i}]`)))
    return problems
  }
  if (typeof v === 'object') {
    const props = s.properties ?? {}
    const obj = v as Record<string, unknown>
    for (const [k, p] of Object.entries(props)) {
      if (k.endsWith('[n]')) continue
      if (obj[k] === undefined) {
        if (!truthy(p.optional)) problems.push(`${at}.${k}: missing (the schema requires it)`)
        continue
      }
      problems.push(...checkAgainstSchema(p, obj[k], `${at}.${k}`))
    }
    for (const [k, x] of Object.entries(obj)) {
      if (props[k]) continue
      const key = schemaKeyOf(props, k)
      if (key) problems.push(...checkAgainstSchema(props[key], x, `${at}.${k}`))
      else if (s.additionalProperties === 0 || s.additionalProperties === false) problems.push(`${at}.${k}: not in the schema, which allows no other properties`)
    }
    return problems
  }
  const text = String(v)
  if (s.enum && !s.enum.includes(text)) problems.push(`${at}: '${text}' not in ${s.enum.join(', ')}`)
  if (s.pattern && !perlRegex(s.pattern).test(text)) problems.push(`${at}: '${text}' does not match ${s.pattern}`)
  if (typeof s.format === 'string') {
    const f = checkCodeFormat(s.format, text)
    if (f) problems.push(`${at}: '${text}' - ${f}`)
  }
  if (typeof v === 'number') {
    if (s.minimum !== undefined && v < Number(s.minimum)) problems.push(`${at}: ${v} below the minimum ${s.minimum}`)
    if (s.maximum !== undefined && v > Number(s.maximum)) problems.push(`${at}: ${v} above the maximum ${s.maximum}`)
  }
  if (typeof v === 'string' && s.maxLength !== undefined && v.length > s.maxLength) problems.push(`${at}: longer than ${s.maxLength}`)
  return problems
}

/** Validates an answer (`data`) of method + path against that method's return schema. */
export function validateResponse(schema: PveSchema, method: string, path: string, data: unknown): string[] {
  const m = findMethod(schema, method, path)
  if (!m) return [`no ${method} ${path} in the PVE ${schema.version} schema`]
  return checkAgainstSchema(m.returns, data)
}
