import {mkdirSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {createRequire} from 'node:module'
import {join, resolve} from 'node:path'

import {parse} from 'yaml'
import {afterAll, describe, expect, it} from 'vitest'

import {buildSchemaValidator} from '../../../src/inventory/build-schema-validator.js'
import {compileSchema, schemaHash, type JsonSchema, type SchemaValidateFn} from '../../../src/inventory/schema-check.js'

const text = readFileSync('inventory/schema.json', 'utf8')
const schema = JSON.parse(text) as JsonSchema
// inside the project, so that the generated code's require('ajv/dist/runtime/…') resolves
mkdirSync('node_modules/.cache', {recursive: true})
const tmp = mkdtempSync(join('node_modules/.cache', 'pgi-schema-test-'))
afterAll(() => rmSync(tmp, {recursive: true, force: true}))

type S = Record<string, unknown>

/** Every schema node reachable from the root, with its JSON path. */
function walk(node: unknown, path: string, out: [string, S][] = []): [string, S][] {
  if (node === null || typeof node !== 'object' || Array.isArray(node)) return out
  const s = node as S
  out.push([path, s])
  for (const [k, v] of Object.entries((s.properties as S | undefined) ?? {})) walk(v, `${path}.properties.${k}`, out)
  for (const [k, v] of Object.entries((s.definitions as S | undefined) ?? {})) walk(v, `${path}.definitions.${k}`, out)
  if (s.items) walk(s.items, `${path}.items`, out)
  if (typeof s.additionalProperties === 'object') walk(s.additionalProperties, `${path}.additionalProperties`, out)
  return out
}

function deref(s: S): S {
  if (typeof s.$ref !== 'string') return s
  const target = (schema.definitions as S)[s.$ref.replace('#/definitions/', '')] as S
  return {...deref(target), ...s}
}

describe('inventory/schema.json', () => {
  it('describes every property, for editors', () => {
    for (const [path, s] of walk(schema, '$')) {
      if (path.includes('.properties.')) {
        const d = deref(s)
        expect(d.description, `${path} has no description`).toEqual(expect.any(String))
        const leaf = d.type !== 'object' && d.type !== 'array'
        if (leaf) expect(d.examples ?? d.enum ?? (d.items as S | undefined), `${path} has no examples`).toBeTruthy()
      }
    }
  })

  it('closes every fixed-shape object (additionalProperties: false)', () => {
    for (const [path, s] of walk(schema, '$')) {
      if (s.type === 'object' && s.properties) expect(s.additionalProperties, path).toBe(false)
    }
  })

  it('accepts the example inventory files', async () => {
    const validate = await compileSchema(schema)
    for (const f of ['region.yaml', 'hypervisors.yaml', 'establishments.yaml']) {
      const doc = parse(readFileSync(`inventory/example/${f}`, 'utf8')) as unknown
      expect(validate(doc), JSON.stringify(validate.errors)).toBe(true)
    }
    expect(readFileSync('inventory/example/region.yaml', 'utf8')).toMatch(/^# yaml-language-server: \$schema=\.\.\/schema\.json/)
  })

  it('the build-time standalone validator gives the same errors as ajv at run time', async () => {
    const out = join(tmp, 'schema-validator.cjs')
    await buildSchemaValidator(out)
    const generated = createRequire(import.meta.url)(resolve(out)) as SchemaValidateFn & {schemaHash: string}
    expect(generated.schemaHash).toBe(schemaHash(text))
    const runtime = await compileSchema(schema)
    const bad = {establishments: [{uai: 'x', vmid: 'a', netwrk: {}}], hypervisors: {'BAD NAME': {}}, rings: 'canary'}
    expect(generated(bad)).toBe(false)
    expect(runtime(bad)).toBe(false)
    const key = (e: {instancePath: string; keyword: string; params: unknown}) => `${e.instancePath} ${e.keyword} ${JSON.stringify(e.params)}`
    expect(generated.errors!.map(key).sort()).toEqual(runtime.errors!.map(key).sort())
    expect(generated.errors!.length).toBeGreaterThan(5)
  })
})
