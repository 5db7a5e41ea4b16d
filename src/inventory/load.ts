import {compareIds} from '../compare.js'
import {readdir, readFile, stat} from 'node:fs/promises'
import {isAbsolute, join, relative, resolve, sep} from 'node:path'

import {InventoryInvalidError, InventoryNotFoundError} from './errors.js'
import {checkInventory, where, type Item, type Merged} from './rules.js'
import {loadSchemaValidator, schemaProblems} from './schema-check.js'
import {ProblemList, SourceFile} from './source.js'
import type {Inventory, InventoryProblem} from './types.js'

/** Rules whose generic schema problem is replaced by a specific rule's problem at the same place. */
const GENERIC_RULES = new Set(['wrong-type', 'invalid-value', 'invalid-format'])

export interface LoadResult {
  /**
   * The resolved inventory. When `problems` holds errors it is a best effort (entries with errors
   * may be missing or incomplete): use loadValidInventory() for anything that acts on it.
   */
  inventory: Inventory
  /** Every problem found, errors and warnings, sorted by file, line and column. */
  problems: InventoryProblem[]
}

/**
 * Reads an inventory (one YAML file, or every *.yaml / *.yml under a folder, recursively, in sorted
 * order), validates it completely and resolves it (defaults applied). Never throws for problems
 * in the inventory — they are all returned — only when the path does not exist or holds no YAML.
 */
export async function loadInventory(path: string): Promise<LoadResult> {
  const files = await inventoryFiles(path)
  const sources = await Promise.all(
    files.map(async (abs) => SourceFile.parse(displayPath(abs), await readFile(abs, 'utf8'), abs)),
  )
  const problems = new ProblemList()
  const generic = new ProblemList()
  const {validate, schema} = await loadSchemaValidator()

  for (const src of sources) {
    for (const e of src.errors) {
      const rule = e.code === 'DUPLICATE_KEY' ? 'duplicate-key' : 'yaml-syntax'
      problems.addAt({file: src.file, ...src.linePos(e.offset)}, rule, e.message, syntaxHint(e.code))
    }
    for (const w of src.warnings) {
      problems.addAt({file: src.file, ...src.linePos(w.offset)}, 'yaml-warning', w.message, 'check this value', 'warning')
    }
    if (src.value === null || src.value === undefined) {
      if (src.readable) problems.add(src, [], 'empty-file', 'this file holds no inventory data', {severity: 'warning', suggestion: 'add hypervisors:, establishments: … or remove the file'})
      continue
    }
    if (!validate(src.value)) schemaProblems(src, validate.errors ?? [], schema, generic)
  }

  const merged = mergeFiles(sources, problems)
  const inventory = checkInventory(merged, problems, {
    path: resolve(path),
    files: sources.map((s) => s.file),
    complete: sources.every((s) => s.readable),
  })

  // A specific rule (uai-check-letter, secret-literal, …) says more than the schema's generic
  // "invalid format" at the same node: keep only the specific one.
  const specific = new Set(problems.items.map((p) => `${p.file}:${p.line}:${p.column}`))
  const all = [...problems.items, ...generic.items.filter((p) => !(GENERIC_RULES.has(p.rule) && specific.has(`${p.file}:${p.line}:${p.column}`)))]
  const order = new Map(sources.map((s, i) => [s.file, i]))
  all.sort((a, b) => (order.get(a.file) ?? 0) - (order.get(b.file) ?? 0) || a.line - b.line || a.column - b.column || compareIds(a.rule, b.rule))
  return {inventory, problems: dedupe(all)}
}

/** Like loadInventory, but throws InventoryInvalidError (exit 3, every problem in details) on any error. */
export async function loadValidInventory(path: string): Promise<Inventory> {
  const {inventory, problems} = await loadInventory(path)
  if (problems.some((p) => p.severity === 'error')) throw new InventoryInvalidError(displayPath(resolve(path)), problems)
  return inventory
}

/** The YAML files of an inventory path, absolute, sorted. */
export async function inventoryFiles(path: string): Promise<string[]> {
  const abs = resolve(path)
  let st
  try {
    st = await stat(abs)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new InventoryNotFoundError(path, 'no such file or folder', [
        'The example inventory shipped with pgi is inventory/example (in the pgi package folder).',
      ])
    }
    throw err
  }
  if (st.isFile()) return [abs]
  const entries = await readdir(abs, {recursive: true})
  const files = entries
    .filter((f) => /\.ya?ml$/i.test(f) && !f.split(sep).some((seg) => seg.startsWith('.')))
    .sort()
    .map((f) => join(abs, f))
  if (files.length === 0) throw new InventoryNotFoundError(path, 'the folder holds no *.yaml or *.yml file')
  return files
}

/** A path as shown in messages: relative to the current folder when inside it, else absolute. */
export function displayPath(abs: string): string {
  const rel = relative(process.cwd(), abs)
  return rel === '' ? '.' : rel.startsWith('..') || isAbsolute(rel) ? abs : rel
}

function syntaxHint(code: string): string | undefined {
  switch (code) {
    case 'DUPLICATE_KEY':
      return 'a key may appear only once in a mapping: remove or rename one'
    case 'BAD_INDENT':
    case 'MISSING_CHAR':
      return 'check the indentation and the closing bracket of this block'
    case 'TAB_AS_INDENT':
      return 'indent with spaces, not tabs'
    case 'BLOCK_AS_IMPLICIT_KEY':
      return 'a key needs ": " after it; check the previous line'
    default:
      return 'fix the YAML syntax here (quote values that contain ": " or start with special characters)'
  }
}

/** Same file:line:column + rule + message reported twice (e.g. an alias used twice): keep one. */
function dedupe(ps: InventoryProblem[]): InventoryProblem[] {
  const seen = new Set<string>()
  return ps.filter((p) => {
    const k = `${p.file}:${p.line}:${p.column}:${p.rule}:${p.message}`
    if (seen.has(k)) return false
    seen.add(k)
    return true
  })
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/**
 * Merges the top-level keys of all files. `establishments` and `recipients` lists are concatenated;
 * `hypervisors` and `groups` are merged by name; `region`, `rings` and `defaults` are defined once.
 * A key (or a hypervisor or group name) defined in two places is a `duplicate-key` problem.
 */
function mergeFiles(sources: SourceFile[], problems: ProblemList): Merged {
  const m: Merged = {establishments: [], recipients: [], hypervisors: new Map(), groups: new Map()}
  for (const src of sources) {
    if (!isRecord(src.value)) continue
    for (const [key, value] of Object.entries(src.value)) {
      switch (key) {
        case 'establishments':
        case 'recipients':
          if (Array.isArray(value)) value.forEach((v, i) => m[key].push({src, path: [key, i], value: v}))
          break
        case 'hypervisors':
        case 'groups':
          if (!isRecord(value)) break
          for (const [name, v] of Object.entries(value)) {
            const prev = m[key].get(name)
            const item: Item = {src, path: [key, name], value: v}
            if (prev) {
              problems.add(src, item.path, 'duplicate-key', `${key === 'groups' ? 'group' : 'hypervisor'} "${name}" is already defined at ${where(prev)}`, {
                at: 'key',
                suggestion: 'define it once (rename one of them if they are different)',
              })
            } else m[key].set(name, item)
          }
          break
        case 'region':
        case 'rings':
        case 'defaults': {
          const prev = m[key]
          if (prev) {
            problems.add(src, [key], 'duplicate-key', `"${key}" is already defined at ${where(prev)}`, {
              at: 'key',
              suggestion: `"${key}" may appear in one file of the inventory only`,
            })
          } else m[key] = {src, path: [key], value}
          break
        }
        default:
        // unknown top-level keys are reported by the schema (unknown-key, with a suggestion)
      }
    }
  }
  return m
}
