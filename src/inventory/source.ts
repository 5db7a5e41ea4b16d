import {isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node} from 'yaml'

import type {InventoryProblem, SourceRef} from './types.js'

/** A path into a YAML document: map keys and sequence indexes. */
export type YamlPath = readonly (string | number)[]

/** Where in a node a problem points: at its key (unknown key, duplicate) or at its value. */
export type At = 'key' | 'value'

/**
 * One parsed inventory file: the YAML document with a line counter, so any path in it can be turned
 * into `line:column` for error messages.
 */
export class SourceFile {
  readonly lineCounter = new LineCounter()
  readonly doc: Document.Parsed
  /** The document as plain JS (maps become objects), or undefined when the file is empty or unreadable. */
  readonly value: unknown
  /** False when a YAML syntax error keeps the file from being read. */
  readonly readable: boolean

  constructor(
    /** The file's path as shown to the user. */
    readonly file: string,
    readonly text: string,
    /** The file's absolute path (relative paths inside it, e.g. tls.ca_file, are resolved against it). */
    readonly absPath: string = file,
  ) {
    this.doc = parseDocument(text, {lineCounter: this.lineCounter, prettyErrors: false, uniqueKeys: true})
    // A document with only duplicate keys is still usable (the checks go on); one with a syntax
    // error is not read further: its structure is unreliable and would cause confusing follow-ups.
    this.readable = this.doc.errors.every((e) => e.code === 'DUPLICATE_KEY')
    this.value = this.readable ? this.doc.toJS({maxAliasCount: 1000}) : undefined
  }

  /** The node at `path` (aliases resolved), or undefined when it does not exist. */
  node(path: YamlPath): Node | undefined {
    let cur: unknown = this.doc.contents
    for (const seg of path) {
      cur = this.resolve(cur)
      if (isMap(cur)) {
        const pair = cur.items.find((p) => isPair(p) && keyString(p.key) === String(seg))
        cur = pair?.value
      } else if (isSeq(cur)) {
        cur = cur.items[Number(seg)]
      } else {
        return undefined
      }
      if (cur === undefined || cur === null) return undefined
    }
    return (this.resolve(cur) as Node | null) ?? undefined
  }

  /** The key node of the last segment of `path` (a map key), when there is one. */
  keyNode(path: YamlPath): Node | undefined {
    if (path.length === 0) return undefined
    const parent = this.node(path.slice(0, -1))
    if (!isMap(parent)) return undefined
    const last = String(path.at(-1))
    const pair = parent.items.find((p) => isPair(p) && keyString(p.key) === last)
    return (pair?.key as Node | undefined) ?? undefined
  }

  /**
   * Line and column (1-based) of `path`: its key or its value. When the path does not exist (a
   * missing key), the nearest existing ancestor is used, so every problem has a position.
   */
  pos(path: YamlPath, at: At = 'value'): {line: number; column: number} {
    for (let p = path; ; p = p.slice(0, -1)) {
      const n = at === 'key' && p === path ? this.keyNode(p) ?? this.node(p) : this.node(p)
      const offset = n?.range?.[0]
      if (offset !== undefined) return this.linePos(offset)
      if (p.length === 0) return {line: 1, column: 1}
    }
  }

  /** The original text of a scalar (e.g. "0130040" that YAML read as the number 130040). */
  sourceText(path: YamlPath): string | undefined {
    const n = this.node(path)
    return isScalar(n) ? (n.source ?? (n.range ? this.text.slice(n.range[0], n.range[1]) : undefined)) : undefined
  }

  ref(path: YamlPath, at: At = 'value'): SourceRef {
    return {file: this.file, ...this.pos(path, at)}
  }

  linePos(offset: number): {line: number; column: number} {
    const {line, col} = this.lineCounter.linePos(offset)
    return {line, column: col}
  }

  private resolve(n: unknown): unknown {
    return isAlias(n) ? n.resolve(this.doc) : n
  }
}

function keyString(k: unknown): string {
  if (isScalar(k)) return String(k.value)
  return String(k)
}

/** Collects problems; one instance per load. */
export class ProblemList {
  readonly items: InventoryProblem[] = []

  add(
    src: SourceFile,
    path: YamlPath,
    rule: string,
    message: string,
    opts: {suggestion?: string; severity?: 'error' | 'warning'; at?: At} = {},
  ): void {
    this.items.push({
      ...src.ref(path, opts.at ?? 'value'),
      rule,
      message,
      ...(opts.suggestion ? {suggestion: opts.suggestion} : {}),
      severity: opts.severity ?? 'error',
    })
  }

  /** A problem at a raw position (YAML syntax errors). */
  addAt(ref: SourceRef, rule: string, message: string, suggestion?: string, severity: 'error' | 'warning' = 'error'): void {
    this.items.push({...ref, rule, message, ...(suggestion ? {suggestion} : {}), severity})
  }
}

/** "establishments[2].network.address" */
export function describePath(path: YamlPath): string {
  let s = ''
  for (const seg of path) s += typeof seg === 'number' || /^\d+$/.test(String(seg)) ? `[${seg}]` : s === '' ? String(seg) : `.${seg}`
  return s === '' ? 'the document' : s
}
