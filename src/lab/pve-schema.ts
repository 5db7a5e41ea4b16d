import {readFileSync} from 'node:fs'
import {join} from 'node:path'

import {moduleTreeDir} from '../paths.js'

/**
 * The Proxmox VE API schema the lab validates against: the official API description (pve-docs'
 * apidata.js, PVE 9.1 and 8.4) without its prose, kept in `src/lab/pve-schema/pve-<release>.json`
 * and made by `scripts/trim-pve-schema.mjs`. It is the one source of truth for which parameters
 * each lab endpoint accepts, their types, formats, enums, patterns and bounds, the privileges each
 * endpoint checks and the shape of what it returns; the tests read the same files
 * (test/helpers/pve-schema.ts). tsc copies the JSON files next to the compiled module (tsconfig
 * `include`), so the lab daemon of an installed pgi finds them as well.
 *
 * File layout: a JSON array whose first element is a header ({path: '', source, sha256, version})
 * and then one object per API path, sorted: {path, info: {GET|POST|PUT|DELETE: method}}.
 */

export type PveRelease = '8.4' | '9.1'
export const PVE_RELEASES: readonly PveRelease[] = ['9.1', '8.4']

/** A parameter, a returned property, or a key of a property string. */
export interface SchemaProp {
  type?: string | string[]
  /** A named format (`pve-vmid`, `dns-name`, `pve-tag-list`…) or a property-string sub-schema. */
  format?: string | Record<string, SchemaProp>
  optional?: number | boolean
  default?: unknown
  enum?: string[]
  minimum?: number | string
  maximum?: number | string
  minLength?: number
  maxLength?: number
  pattern?: string
  requires?: string | SchemaProp
  items?: SchemaProp
  properties?: Record<string, SchemaProp>
  additionalProperties?: number | boolean | SchemaProp
  /** Property strings: the key a bare value goes to. */
  default_key?: number | boolean
  /** Property strings: this key is another name of `alias`. */
  alias?: string
  keyAlias?: string
  oneOf?: SchemaProp[]
  'type-property'?: string
  'instance-types'?: string[]
  links?: unknown
}

/** A permission check as PVE writes it: ['perm', path, privs, 'any'?, …], ['and'|'or', …], … */
export type PermissionCheck = [string, ...unknown[]]

export interface SchemaMethod {
  name: string
  method: string
  allowtoken?: number
  protected?: number
  proxyto?: string
  permissions?: {check?: PermissionCheck; user?: string; description?: string}
  parameters?: {additionalProperties?: number; properties?: Record<string, SchemaProp>}
  returns?: SchemaProp
}

export interface SchemaNode {
  path: string
  info?: Record<string, SchemaMethod>
}

export interface PveSchema {
  release: PveRelease
  /** sha256 of the official file the trimmed copy was made from. */
  sourceSha256: string
  /** Template path ("/nodes/{node}/qemu/{vmid}/config") → node. */
  byPath: Map<string, SchemaNode>
  /** The method at a template path, or undefined. */
  method(verb: string, template: string): SchemaMethod | undefined
}

/** The file of a release's trimmed schema (inside the module tree: src/ or dist/src/). */
export function pveSchemaFile(release: PveRelease): string {
  return join(moduleTreeDir(), 'lab', 'pve-schema', `pve-${release}.json`)
}

const cache = new Map<PveRelease, PveSchema>()

/** Reads (once per process) the trimmed schema of a release. */
export function loadPveSchema(release: PveRelease): PveSchema {
  const hit = cache.get(release)
  if (hit) return hit
  const file = pveSchemaFile(release)
  let nodes: (SchemaNode & {sha256?: string; version?: string})[]
  try {
    nodes = JSON.parse(readFileSync(file, 'utf8')) as typeof nodes
  } catch (e) {
    throw new Error(`the PVE ${release} API schema of the lab cannot be read (${file}): ${(e as Error).message}; rebuild pgi (npm run build)`)
  }
  const header = nodes[0]
  if (!header || header.path !== '' || header.version !== release) throw new Error(`${file} is not the trimmed PVE ${release} schema (regenerate it with scripts/trim-pve-schema.mjs)`)
  const byPath = new Map<string, SchemaNode>()
  for (const n of nodes.slice(1)) byPath.set(n.path, n)
  const s: PveSchema = {
    release,
    sourceSha256: header.sha256 ?? '',
    byPath,
    method: (verb, template) => byPath.get(template)?.info?.[verb.toUpperCase()],
  }
  cache.set(release, s)
  return s
}

/** "9.1.1", "9.1", "8.4.18" → the schema release the lab has for it. */
export function releaseOf(pveVersion: string): PveRelease {
  return pveVersion.startsWith('8') ? '8.4' : '9.1'
}
