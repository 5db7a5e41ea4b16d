import {readdir, stat} from 'node:fs/promises'
import {isAbsolute, join, relative, resolve} from 'node:path'

import {formatBytes, readRegularFile, type FileProblem} from '../bounded-read.js'
import {compareIds} from '../compare.js'
import {decodeUtf8} from './encoding.js'
import {quote} from './redact.js'

import {InventoryInvalidError, InventoryNotFoundError} from './errors.js'
import {where, type Item, type Merged} from './rule-values.js'
import {checkInventory} from './rules.js'
import {checkSecretLiterals} from './secret-rules.js'
import {loadSchemaValidator, schemaProblems} from './schema-check.js'
import {ProblemList, SourceFile} from './source.js'
import type {Inventory, InventoryProblem, SourceRef} from './types.js'

/**
 * Size limits. An inventory file of 1,000 establishments is ~0.4 MiB; the limits leave room for
 * several times the largest Région and keep a run within ~300 MB of memory whatever the files
 * hold (a file that fails the fast reader is parsed again with yaml, which takes ~70 MB per MiB).
 */
export const MAX_FILE_BYTES = 2 * 1024 * 1024
export const MAX_INVENTORY_BYTES = 4 * 1024 * 1024

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
  const listing = await listInventory(path)
  const problems = new ProblemList()
  for (const p of listing.problems) problems.addAt(p.ref, p.rule, p.message, p.suggestion)
  const sources = await readSources(listing.files, problems)
  const generic = new ProblemList()
  const {validate, schema} = await loadSchemaValidator()

  for (const src of sources) {
    // every YAML error has its line, up to MAX_YAML_ERRORS a file (a file of garbage has thousands)
    for (const e of src.errors.slice(0, MAX_YAML_ERRORS)) {
      const {rule, message, suggestion} = syntaxProblem(e.code, e.code === 'DUPLICATE_KEY' ? duplicateKeyMessage(src, e.offset) : e.message)
      problems.addAt({file: src.file, ...src.linePos(e.offset)}, rule, message, suggestion)
    }
    if (src.errors.length > MAX_YAML_ERRORS) {
      const last = src.errors[MAX_YAML_ERRORS]!
      problems.addAt({file: src.file, ...src.linePos(last.offset)}, 'yaml-syntax', `${src.errors.length - MAX_YAML_ERRORS} more YAML errors from here on, not listed`, 'fix the ones above first: later errors often follow from them')
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
    files: listing.files.map(displayPath),
    complete: sources.length === listing.files.length && listing.problems.length === 0 && sources.every((s) => s.readable),
  })
  checkSecretLiterals(sources, problems)

  // A specific rule (uai-check-letter, secret-literal, …) says more than the schema's generic
  // "invalid format" at the same node: keep only the specific one.
  const specific = new Set(problems.items.map((p) => `${p.file}:${p.line}:${p.column}`))
  const all = [...problems.items, ...generic.items.filter((p) => !(GENERIC_RULES.has(p.rule) && specific.has(`${p.file}:${p.line}:${p.column}`)))]
  const order = new Map(listing.files.map((f, i) => [displayPath(f), i]))
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
  return (await listInventory(path)).files
}

/** A problem found before any file is parsed: a file or folder that cannot be read. */
interface FileLevelProblem {
  ref: SourceRef
  rule: string
  message: string
  suggestion?: string
}

/**
 * The YAML files of an inventory path (absolute, sorted), and the folders under it that could not
 * be read. Every *.yaml / *.yml entry is listed whatever it is (a FIFO, a device, a link to one,
 * a broken link): reading it says what is wrong with it (readSources). Folders are walked here,
 * not followed through symbolic links (a link loop cannot trap the walk). Throws
 * InventoryNotFoundError only when the path does not exist or holds no YAML at all.
 */
async function listInventory(path: string): Promise<{files: string[]; problems: FileLevelProblem[]}> {
  const abs = resolve(path)
  let st
  try {
    st = await stat(abs)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new InventoryNotFoundError(path, code === 'ENOENT' ? 'no such file or folder' : 'no such file or folder (a part of the path is not a folder)', [
        'The example inventory shipped with pgi is inventory/example (in the pgi package folder).',
      ])
    }
    // EACCES, ELOOP, …: read it as a file, which reports what is wrong with it
    return {files: [abs], problems: []}
  }
  if (!st.isDirectory()) return {files: [abs], problems: []}
  const files: string[] = []
  const problems: FileLevelProblem[] = []
  const todo = [abs]
  while (todo.length > 0) {
    const dir = todo.pop()!
    let entries
    try {
      entries = await readdir(dir, {withFileTypes: true})
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      problems.push({
        ref: {file: displayPath(dir), line: 1, column: 1},
        rule: 'file-unreadable',
        message: `the folder cannot be read (${code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (code ?? (err as Error).message)}): the inventory files in it are not checked`,
        suggestion: 'give the user running pgi read and search permission on it (chmod u+rx), or move the folder out of the inventory',
      })
      continue
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue
      const p = join(dir, e.name)
      if (e.isDirectory()) todo.push(p)
      else if (/\.ya?ml$/i.test(e.name)) files.push(p)
    }
  }
  files.sort(compareIds)
  if (files.length === 0 && problems.length === 0) throw new InventoryNotFoundError(path, 'the folder holds no *.yaml or *.yml file')
  return {files, problems}
}

/** YAML errors listed for one file; the rest are counted in one more line. */
const MAX_YAML_ERRORS = 20

/** "the key "bridge" appears twice in this mapping", from the key's text at `offset`. */
function duplicateKeyMessage(src: SourceFile, offset: number): string {
  const key = /^(?:"[^"\n]*"|'[^'\n]*'|[^:#\n]*[^\s:#])/.exec(src.text.slice(offset, offset + 200))?.[0]
  return key ? `the key ${quote(key.replace(/^["']|["']$/g, ''))} is already in this mapping` : 'a key is already in this mapping'
}

/** Rule ids of files that cannot be read, by what is wrong with them. */
const FILE_RULES: Record<FileProblem['kind'], string> = {
  missing: 'file-unreadable',
  unreadable: 'file-unreadable',
  'not-regular': 'not-a-file',
  'too-large': 'file-too-large',
}

/**
 * Reads and parses the files, in order. A file that cannot be read (not a regular file, too
 * large, unreadable), is not UTF-8, or would take the inventory past MAX_INVENTORY_BYTES is a
 * problem at its line 1 (or at its first non-UTF-8 byte) and is left out; nothing of its content
 * is put in a message.
 */
async function readSources(files: string[], problems: ProblemList): Promise<SourceFile[]> {
  const reads = await Promise.all(files.map((abs) => readRegularFile(abs, MAX_FILE_BYTES, 'an inventory file')))
  const sources: SourceFile[] = []
  let total = 0
  for (const [i, r] of reads.entries()) {
    const abs = files[i]!
    const file = displayPath(abs)
    const at = {file, line: 1, column: 1}
    if (!r.ok) {
      problems.addAt(at, FILE_RULES[r.problem.kind], `the file ${r.problem.message}`, fileSuggestion(r.problem))
      continue
    }
    total += r.data.length
    if (total > MAX_INVENTORY_BYTES) {
      problems.addAt(at, 'file-too-large', `the inventory's files add up to more than ${formatBytes(MAX_INVENTORY_BYTES)} with this one, the limit for an inventory: this file is not read`, 'an inventory of 1,000 establishments is ~0.4 MiB: check that only inventory files are in the folder')
      continue
    }
    const d = decodeUtf8(r.data)
    if (!d.ok) {
      problems.addAt({file, line: d.problem.line, column: d.problem.column}, d.problem.rule, d.problem.message, d.problem.suggestion)
      continue
    }
    sources.push(await SourceFile.parse(file, d.text, abs))
  }
  return sources
}

function fileSuggestion(p: FileProblem): string {
  switch (p.kind) {
    case 'not-regular':
      return 'an inventory file is a regular YAML file: remove or rename this entry (only *.yaml and *.yml entries are read)'
    case 'too-large':
      return 'split the inventory into several files in one folder, or check that this is an inventory file'
    case 'missing':
      return 'a broken symbolic link, or a file removed while pgi ran: fix or remove it'
    default:
      return p.code === 'EACCES' || p.code === 'EPERM' ? 'give the user running pgi read permission on it (chmod u+r)' : 'fix or remove this entry'
  }
}

/** A path as shown in messages: relative to the current folder when inside it, else absolute. */
export function displayPath(abs: string): string {
  const rel = relative(process.cwd(), abs)
  return rel === '' ? '.' : rel.startsWith('..') || isAbsolute(rel) ? abs : rel
}

/** The rule, message and suggestion of a YAML issue, by yaml's (or the reader's) code. */
function syntaxProblem(code: string, message: string): {rule: string; message: string; suggestion: string} {
  switch (code) {
    case 'DUPLICATE_KEY':
      return {rule: 'duplicate-key', message, suggestion: 'a key may appear only once in a mapping: remove or rename one'}
    case 'TAG_RESOLVE_FAILED':
    case 'BAD_COLLECTION_TYPE':
      return {rule: 'yaml-tag', message: `${message.replace(/^Unresolved tag: /, 'unknown tag ').replace('tag:yaml.org,2002:', '!!')}: an inventory holds plain values (text, numbers, true/false, lists, mappings)`, suggestion: 'remove the tag (the !… before the value)'}
    case 'MULTIPLE_DOCS':
      return {rule: 'yaml-syntax', message: 'a second YAML document starts here (---): an inventory file holds one document', suggestion: 'split the documents into separate files, or remove the --- line'}
    case 'TOO_DEEP':
      return {rule: 'yaml-limit', message, suggestion: 'an inventory nests a few levels deep: check the brackets'}
    case 'RESOURCE_EXHAUSTION':
      return {rule: 'yaml-limit', message: `the YAML is nested too deeply to be read (${message})`, suggestion: 'an inventory nests a few levels deep: check the indentation and brackets'}
    case 'ALIAS_COUNT':
      return {rule: 'yaml-limit', message: 'the YAML aliases (*name) expand to too many values: the file is not read', suggestion: 'use fewer aliases (at most 1,000 expansions), or write the values out'}
    case 'MISSING_CHAR':
      return {rule: 'yaml-syntax', message, suggestion: /quote/i.test(message) ? 'close the quoted value with the same quote it opens with' : 'a closing bracket or quote is missing: check this value and the indentation'}
    case 'BAD_INDENT':
      return {rule: 'yaml-syntax', message, suggestion: 'check the indentation and the closing bracket of this block'}
    case 'TAB_AS_INDENT':
      return {rule: 'yaml-syntax', message, suggestion: 'indent with spaces, not tabs'}
    case 'BLOCK_AS_IMPLICIT_KEY':
      return {rule: 'yaml-syntax', message, suggestion: 'a key needs ": " after it; check the previous line'}
    default:
      return {rule: 'yaml-syntax', message, suggestion: 'fix the YAML syntax here (quote values that contain ": " or start with special characters)'}
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
 * `hypervisors` and `groups` are merged by name; `region`, `rings`, `defaults`, `offsite` and `delivery` are defined once.
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
        case 'defaults':
        case 'offsite':
        case 'delivery': {
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
