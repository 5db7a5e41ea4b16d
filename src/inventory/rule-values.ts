import type {SourceFile, YamlPath} from './source.js'

/**
 * What the inventory's rules (rules.ts, secret-rules.ts, database-rules.ts) read values with: one
 * value from one file with its place, the merged sections, and typed readers of YAML values.
 */

/** One value from one file, with its path in that file. */
export interface Item {
  src: SourceFile
  path: YamlPath
  value: unknown
}

/** The files' top-level sections merged (see mergeFiles in load.ts). */
export interface Merged {
  region?: Item
  rings?: Item
  defaults?: Item
  offsite?: Item
  delivery?: Item
  establishments: Item[]
  recipients: Item[]
  hypervisors: Map<string, Item>
  groups: Map<string, Item>
}

export type Rec = Record<string, unknown>

export function isRecord(v: unknown): v is Rec {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined
}

export function int(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) ? v : undefined
}

export function strings(v: unknown): string[] | undefined {
  return Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : undefined
}

/** "file:line:col" of an item (its key by default). */
export function where(item: Item, at: 'key' | 'value' = 'key'): string {
  const {line, column} = item.src.pos(item.path, at)
  return `${item.src.file}:${line}:${column}`
}

