import {createHash} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import {createRequire} from 'node:module'
import {join} from 'node:path'

import {cjsExports} from '../interop.js'
import {moduleTreeDir, packageRoot} from '../paths.js'
import {describePath, type ProblemList, type SourceFile, type YamlPath} from './source.js'
import {looksSecret, quote} from './redact.js'
import {didYouMean, suggestAmong} from './suggest.js'

/** The subset of an ajv error this module reads (ajv's ErrorObject, without importing ajv). */
export interface SchemaError {
  keyword: string
  instancePath: string
  schemaPath: string
  params: Record<string, unknown>
  message?: string
  propertyName?: string
}

export interface SchemaValidateFn {
  (data: unknown): boolean
  errors?: SchemaError[] | null
}

export type JsonSchema = Record<string, unknown>

/** Options shared by the build-time (standalone) and the run-time compilation. */
export const AJV_OPTIONS = {allErrors: true, strict: true} as const

/** File name of the validator generated at build time, next to the compiled module. */
export const GENERATED_VALIDATOR = 'schema-validator.cjs'

export function schemaPath(): string {
  return join(packageRoot(), 'inventory', 'schema.json')
}

export function schemaHash(text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/**
 * The inventory schema and its validator. `npm run build` precompiles the validator to standalone
 * code (see build-schema-validator.ts): compiling the schema with ajv at run time costs ~150 ms,
 * loading the generated code ~5 ms. When the generated file is missing or was built from another
 * version of schema.json (tests run from sources; a schema edited without a rebuild), the schema is
 * compiled here instead — same options, same result, slower.
 */
export function loadSchemaValidator(): Promise<LoadedValidator> {
  cached ??= loadValidatorOnce().catch((err: unknown) => {
    cached = undefined
    throw err
  })
  return cached
}

export interface LoadedValidator {
  validate: SchemaValidateFn
  schema: JsonSchema
  compiled: 'build' | 'runtime'
}

let cached: Promise<LoadedValidator> | undefined

async function loadValidatorOnce(): Promise<LoadedValidator> {
  const text = await readFile(schemaPath(), 'utf8')
  const schema = JSON.parse(text) as JsonSchema
  const hash = schemaHash(text)
  try {
    // next to this module in dist/src/inventory/ (also when this code runs from the CLI bundle)
    const req = createRequire(join(moduleTreeDir(), 'inventory', 'schema-check.js'))
    const mod = req(`./${GENERATED_VALIDATOR}`) as SchemaValidateFn & {schemaHash?: string}
    if (mod.schemaHash === hash) return {validate: mod, schema, compiled: 'build'}
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err
  }
  return {validate: await compileSchema(schema), schema, compiled: 'runtime'}
}

export async function compileSchema(schema: JsonSchema, code?: {source: boolean}): Promise<SchemaValidateFn> {
  const Ajv = await ajvClass()
  const ajv = new Ajv({...AJV_OPTIONS, ...(code ? {code} : {})})
  return ajv.compile(schema) as unknown as SchemaValidateFn
}

/** ajv is CommonJS: its module.exports is the class, which also sits under `.default`. */
export async function ajvClass(): Promise<typeof import('ajv').default> {
  return cjsExports(await import('ajv')).default
}

const YAML_TYPE: Record<string, string> = {
  object: 'a mapping (key: value)',
  array: 'a list',
  string: 'text',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  null: 'empty',
}

/** The value as a message shows it; a string is quoted unless it may be a secret (redact.ts). */
function yamlTypeOf(v: unknown, path: YamlPath): string {
  if (v === null || v === undefined) return 'empty'
  if (Array.isArray(v)) return 'a list'
  if (typeof v === 'object') return 'a mapping'
  if (typeof v === 'number') return `the number ${v}`
  if (typeof v === 'boolean') return `${v}`
  return quote(String(v), path)
}

/** A key as a message shows it (a key, too, can be a pasted secret). */
function keyText(k: string): string {
  return looksSecret(k) ? 'a key not shown here (it may be a secret)' : quote(k)
}

function unescapePointer(seg: string): string {
  return seg.replace(/~1/g, '/').replace(/~0/g, '~')
}

function pointerToPath(ptr: string): string[] {
  return ptr === '' ? [] : ptr.slice(1).split('/').map(unescapePointer)
}

/**
 * The (sub)schema that describes the value at `path`, found by walking the schema along the
 * instance path (properties, additionalProperties, items; $ref resolved). ajv's own schemaPath is
 * relative to the last $ref, so it cannot be used on its own.
 */
function schemaFor(root: JsonSchema, path: YamlPath): Record<string, unknown> | undefined {
  const deref = (s: unknown): Record<string, unknown> | undefined => {
    let cur = s
    for (let i = 0; i < 16 && cur !== null && typeof cur === 'object' && typeof (cur as Record<string, unknown>).$ref === 'string'; i++) {
      const ref = (cur as Record<string, unknown>).$ref as string
      const target = ref.replace(/^#\/?/, '').split('/').filter(Boolean).map(unescapePointer).reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], root)
      // keep the referring schema's own annotations (description, examples) over the target's
      const {$ref: _ref, ...own} = cur as Record<string, unknown>
      cur = {...(target as Record<string, unknown>), ...own}
    }
    return cur !== null && typeof cur === 'object' ? (cur as Record<string, unknown>) : undefined
  }
  let cur = deref(root)
  for (const seg of path) {
    if (!cur) return undefined
    const props = cur.properties as Record<string, unknown> | undefined
    if (props && Object.hasOwn(props, String(seg))) cur = deref(props[String(seg)])
    else if (cur.items !== undefined && /^\d+$/.test(String(seg))) cur = deref(cur.items)
    else if (cur.additionalProperties !== undefined && typeof cur.additionalProperties === 'object') cur = deref(cur.additionalProperties)
    else return undefined
  }
  return cur
}

function valueAt(root: unknown, path: YamlPath): unknown {
  let cur = root
  for (const s of path) {
    if (cur === null || typeof cur !== 'object') return undefined
    cur = (cur as Record<string, unknown>)[String(s)]
  }
  return cur
}

function example(s: Record<string, unknown> | undefined): string | undefined {
  const ex = s?.examples
  if (!Array.isArray(ex) || ex.length === 0) return undefined
  return typeof ex[0] === 'string' ? ex[0] : JSON.stringify(ex[0])
}

function firstSentence(s: unknown): string | undefined {
  if (typeof s !== 'string') return undefined
  const i = s.indexOf('. ')
  return (i === -1 ? s : s.slice(0, i)).replace(/\.$/, '')
}

/**
 * Turns ajv's errors for one file into problems at the right YAML nodes, with stable rule ids:
 * unknown-key (with "did you mean"), missing-key, wrong-type, invalid-value, invalid-format,
 * invalid-name, and the specific secret-missing / tls-missing.
 */
export function schemaProblems(src: SourceFile, errors: SchemaError[], schema: JsonSchema, out: ProblemList): void {
  for (const e of errors) {
    const path = pointerToPath(e.instancePath)
    const what = describePath(path)
    const s = schemaFor(schema, path)
    const value = valueAt(src.value, path)
    if (e.propertyName !== undefined) {
      // a map key that is not a valid name (propertyNames); ajv reports it once more as 'propertyNames'
      const container = path.at(-1) ?? 'a name'
      const names = schemaFor(schema, [...path, e.propertyName])
      const ns = names && (schema.definitions as Record<string, Record<string, unknown>> | undefined)?.[`${String(container).replace(/s$/, '')}Name`]
      out.add(src, [...path, e.propertyName], 'invalid-name', `${keyText(e.propertyName)} is not a valid name in ${String(container)}`, {
        at: 'key',
        suggestion: [firstSentence(ns?.description), example(ns) && `e.g. ${example(ns)}`].filter(Boolean).join(', ') || 'letters, digits and dashes',
      })
      continue
    }
    switch (e.keyword) {
      case 'propertyNames':
        continue
      case 'additionalProperties': {
        const key = String(e.params.additionalProperty)
        const allowed = Object.keys((s?.properties as Record<string, unknown> | undefined) ?? {})
        const close = didYouMean(key, allowed)
        out.add(src, [...path, key], 'unknown-key', `unknown key ${keyText(key)} in ${what}`, {
          at: 'key',
          suggestion: close ? `did you mean "${close}"?` : `allowed keys here: ${allowed.join(', ')}`,
        })
        continue
      }
      case 'required': {
        const key = String(e.params.missingProperty)
        if (key === 'secret' && path.at(-1) === 'token') {
          const hv = String(path.at(-2) ?? 'NAME')
          out.add(src, path, 'secret-missing', `${what} has no secret reference`, {
            suggestion: `add secret: {env: ${envNameFor(hv)}} or secret: {store: hypervisors/${hv}/token}`,
          })
        } else if (key === 'tls' && path.at(-2) === 'hypervisors') {
          const hv = String(path.at(-1))
          out.add(src, path, 'tls-missing', `hypervisor "${hv}" has no tls: pgi always verifies the API certificate`, {
            suggestion: `run \`pgi inventory trust ${hv}\` and add tls: {fingerprint: …}, or tls: {ca_file: …}`,
          })
        } else {
          const sub = (s?.properties as Record<string, Record<string, unknown>> | undefined)?.[key]
          out.add(src, path, 'missing-key', `${what} lacks the required key "${key}"`, {
            suggestion: [firstSentence(sub?.description), example(sub) && `e.g. ${key}: ${example(sub)}`].filter(Boolean).join('; ') || undefined,
          })
        }
        continue
      }
      case 'type': {
        const t = String(e.params.type)
        out.add(src, path, 'wrong-type', `${what} must be ${YAML_TYPE[t] ?? t}, not ${yamlTypeOf(value, path)}`, {
          suggestion: example(s) ? `e.g. ${example(s)}` : undefined,
        })
        continue
      }
      case 'enum': {
        const allowed = ((e.params.allowedValues as unknown[]) ?? []).map(String)
        out.add(src, path, 'invalid-value', `${what} is ${yamlTypeOf(value, path)}, not one of ${allowed.join(', ')}`, {
          suggestion: typeof value === 'string' && looksSecret(value) ? `one of ${allowed.join(', ')}` : suggestAmong(String(value), allowed, 'allowed'),
        })
        continue
      }
      case 'pattern': {
        out.add(src, path, 'invalid-format', `${what} is not valid: ${yamlTypeOf(value, path)}`, {
          suggestion: [firstSentence(s?.description), example(s) && `e.g. ${example(s)}`].filter(Boolean).join(', ') || undefined,
        })
        continue
      }
      default:
        out.add(src, path, 'invalid-value', `${what} ${e.message ?? `fails ${e.keyword}`}`, {
          suggestion: firstSentence(s?.description),
        })
    }
  }
}

/** The environment variable name suggested for a hypervisor's token secret. */
export function envNameFor(hypervisor: string): string {
  return `PGI_TOKEN_${hypervisor.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`
}
