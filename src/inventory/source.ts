import {cjsExports} from '../interop.js'
import {redactSecrets} from './redact.js'
import type {InventoryProblem, SourceRef, YamlPath} from './types.js'

export type {YamlPath}

/** Where in a node a problem points: at its key (unknown key, duplicate) or at its value. */
export type At = 'key' | 'value'

/** A YAML syntax error or warning, at a character offset. */
export interface YamlIssue {
  code: string
  message: string
  offset: number
}

/** One node of the position tree: where its value starts, where its key starts (map entries), its children. */
interface PosNode {
  start: number
  end: number
  keyStart?: number
  /** Map entries by key, or sequence items by index. */
  children?: Map<string, PosNode>
}

/**
 * One parsed inventory file: its value, and the position of every node so any path can be turned
 * into `line:column` for problems.
 *
 * Two readers, because of speed: js-yaml (with its parse listener, which reports where each node
 * starts) reads a 1,000-establishment inventory ~10× faster than `yaml`'s document API, so it is the
 * normal path; but js-yaml stops at the first error, so a file it rejects is read again with `yaml`
 * (parseDocument + LineCounter), which reports every syntax error at its place and still yields
 * the rest of a file whose only fault is a duplicate key.
 */
export class SourceFile {
  /** The document as plain JS (maps become objects), or undefined when the file is empty or unreadable. */
  value: unknown
  /** False when a YAML syntax error keeps the file from being read. */
  readable = true
  errors: YamlIssue[] = []
  warnings: YamlIssue[] = []
  private root: PosNode | undefined
  /** True while the js-yaml path's positions are still to be built (see positions). */
  private rootPending = false
  private readonly newlines: number[] = []

  private constructor(
    /** The file's path as shown to the user. */
    readonly file: string,
    readonly text: string,
    /** The file's absolute path (relative paths inside it, e.g. tls.ca_file, are resolved against it). */
    readonly absPath: string,
  ) {
    for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) this.newlines.push(i)
  }

  /** `reader: 'exact'` forces the `yaml` reader (tests compare both readers' positions). */
  static async parse(file: string, text: string, absPath: string = file, opts: {reader?: 'auto' | 'exact'} = {}): Promise<SourceFile> {
    const src = new SourceFile(file, text, absPath)
    if (opts.reader === 'exact' || !(await src.readFast())) await src.readExact()
    return src
  }

  /**
   * The js-yaml path: true when the file was read (no error at all). The positions of its nodes
   * are not built here: most runs never report a problem, and building them (js-yaml's parse
   * listener, a node per YAML node) cost more than the parse itself on a 500-establishment
   * inventory (bench/status, marginal CPU per request). They are built on the first question
   * about a position (see positions).
   */
  private async readFast(): Promise<boolean> {
    jsYaml ??= await import('js-yaml')
    const {load, CORE_SCHEMA} = jsYaml
    let value: unknown
    try {
      value = load(this.text, {schema: CORE_SCHEMA, json: false})
    } catch {
      return false
    }
    // js-yaml shares aliased nodes without limit; nested aliases can expand to billions of nodes
    // ("billion laughs"). Let yaml, which caps alias expansion, report such a file.
    if (expandedSize(value, 1_000_000) > 1_000_000) return false
    this.value = value ?? undefined
    this.rootPending = this.value !== undefined
    return true
  }

  /** The positions of the js-yaml path, built on first use by reading the text again with its listener. */
  private positions(): PosNode | undefined {
    if (!this.rootPending) return this.root
    this.rootPending = false
    // The listener sees every node open and close (nested), with the reader's offset.
    const stack: {start: number; kids: {node: PosNode; result: unknown}[]}[] = [{start: 0, kids: []}]
    // The text was read once without error (readFast): the same text reads the same way.
    loadWithListener(this.text, (event, state) => {
      if (event === 'open') stack.push({start: state.position, kids: []})
      else {
        const open = stack.pop()!
        const node = this.buildNode(open.start, state.position, state.result, open.kids)
        stack.at(-1)!.kids.push({node, result: state.result})
      }
    })
    this.root = stack[0]!.kids.at(-1)?.node
    return this.root
  }

  /** A node from the listener's events: maps alternate key and value children, sequences list items. */
  private buildNode(start: number, end: number, result: unknown, kids: {node: PosNode; result: unknown}[]): PosNode {
    // js-yaml tries a block mapping around a flow collection and wraps it: unwrap.
    if (kids.length === 1 && kids[0]!.result === result && result !== null && typeof result === 'object') return kids[0]!.node
    const node: PosNode = {start: this.skipProps(start), end}
    if (Array.isArray(result)) {
      if (kids.length === result.length) node.children = new Map(kids.map((k, i) => [String(i), k.node]))
    } else if (result !== null && typeof result === 'object' && kids.length % 2 === 0 && kids.length > 0) {
      node.children = new Map()
      for (let i = 0; i < kids.length; i += 2) {
        const k = kids[i]!.node
        const v = kids[i + 1]!.node
        // an empty value (`key:` then a new line) is placed right after the colon, as yaml does
        if (kids[i + 1]!.result === null && !v.children && !/^(null|Null|NULL|~)/.test(this.text.slice(v.start, v.start + 4))) {
          v.start = k.end + 1
        }
        v.keyStart = k.start
        node.children.set(String(kids[i]!.result), v)
      }
    }
    return node
  }

  /** Skips blanks, comments, anchors and tags before a node's content. */
  private skipProps(i: number): number {
    const t = this.text
    for (;;) {
      while (i < t.length && (t[i] === ' ' || t[i] === '\t' || t[i] === '\n' || t[i] === '\r')) i++
      if (t[i] === '#') {
        while (i < t.length && t[i] !== '\n') i++
      } else if ((t[i] === '&' || t[i] === '!') && i + 1 < t.length) {
        while (i < t.length && !/\s/.test(t[i]!)) i++
      } else return i
    }
  }

  /** The `yaml` path: every syntax error with its position; the value when only keys are duplicated. */
  private async readExact(): Promise<void> {
    const deep = flowTooDeep(this.text, MAX_FLOW_DEPTH)
    if (deep !== -1) {
      this.errors = [{code: 'TOO_DEEP', message: `brackets ([ or {) nested more than ${MAX_FLOW_DEPTH} deep: the file is not read further`, offset: deep}]
      this.readable = false
      return
    }
    const Y = cjsExports(await import('yaml'))
    let doc
    try {
      doc = Y.parseDocument(this.text, {prettyErrors: false, uniqueKeys: true})
    } catch (err) {
      // the parser's own recursion (a stack overflow on a very deeply nested file)
      this.errors = [{code: 'RESOURCE_EXHAUSTION', message: (err as Error).message, offset: 0}]
      this.readable = false
      return
    }
    // An unknown tag (!!js/function, !!binary, !custom…) is a warning for yaml, which reads the
    // value as if untagged; the writer meant something pgi does not have: an error here.
    const isTag = (e: {code: string}) => e.code === 'TAG_RESOLVE_FAILED' || e.code === 'BAD_COLLECTION_TYPE'
    const issue = (e: {code: string; message: string; pos: [number, number]}): YamlIssue => ({code: e.code, message: e.message.split('\n')[0] ?? e.message, offset: e.pos[0]})
    this.errors = [...doc.errors, ...doc.warnings.filter(isTag)].map(issue).sort((a, b) => a.offset - b.offset)
    this.warnings = doc.warnings.filter((w) => !isTag(w)).map(issue)
    // A document whose only errors are duplicate keys or unknown tags is still usable (the checks
    // go on); one with a syntax error is not read further: its structure is unreliable and would
    // cause confusing follow-ups.
    this.readable = this.errors.every((e) => e.code === 'DUPLICATE_KEY' || isTag(e))
    if (this.readable) {
      try {
        this.value = doc.toJS({maxAliasCount: 1000}) ?? undefined
      } catch (err) {
        // yaml refuses excessive alias expansion ("billion laughs"); or a stack overflow
        this.errors.push({code: /alias/i.test((err as Error).message) ? 'ALIAS_COUNT' : 'RESOURCE_EXHAUSTION', message: (err as Error).message, offset: 0})
        this.readable = false
        this.value = undefined
      }
    }
    // An alias is a leaf here (its own position): following it could expand exponentially, and
    // the js-yaml reader does the same.
    const toPos = (n: unknown): PosNode | undefined => {
      const range = (n as {range?: [number, number, number]} | null)?.range
      if (!range) return undefined
      const node: PosNode = {start: range[0], end: range[1]}
      if (Y.isMap(n)) {
        node.children = new Map()
        for (const pair of n.items) {
          const k = Y.isScalar(pair.key) ? String(pair.key.value) : String(pair.key)
          const v = toPos(pair.value) ?? {start: (pair.key as {range?: number[]} | null)?.range?.[1] ?? range[0], end: range[1]}
          v.keyStart = (pair.key as {range?: number[]} | null)?.range?.[0]
          if (!node.children.has(k)) node.children.set(k, v)
        }
      } else if (Y.isSeq(n)) {
        node.children = new Map()
        n.items.forEach((item, i) => {
          const v = toPos(item)
          if (v) node.children!.set(String(i), v)
        })
      }
      return node
    }
    try {
      this.root = toPos(doc.contents)
    } catch {
      // too deep to walk: problems point at the file's start
      this.root = undefined
    }
  }

  private nodeAt(path: YamlPath): PosNode | undefined {
    let cur = this.positions()
    for (const seg of path) {
      cur = cur?.children?.get(String(seg))
      if (!cur) return undefined
    }
    return cur
  }

  /**
   * Line and column (1-based) of `path`: its key or its value. When the path does not exist (a
   * missing key), the nearest existing ancestor is used, so every problem has a position.
   */
  pos(path: YamlPath, at: At = 'value'): {line: number; column: number} {
    for (let p = path; ; p = p.slice(0, -1)) {
      const n = this.nodeAt(p)
      if (n) return this.linePos(at === 'key' && p === path && n.keyStart !== undefined ? n.keyStart : n.start)
      if (p.length === 0) return {line: 1, column: 1}
    }
  }

  /** The original text of a scalar (e.g. "0130040" that YAML read as the number 130040). */
  sourceText(path: YamlPath): string | undefined {
    const n = this.nodeAt(path)
    if (!n || n.children) return undefined
    const raw = this.text.slice(n.start, n.end)
    // the reader may stop after trailing blanks, a comma or a closing bracket: keep the scalar itself
    return /^[^\s,\]}#]+/.exec(raw)?.[0] ?? raw.trim()
  }

  /**
   * Where `path` is, for messages: the file at once, the line and column computed when first read
   * (every establishment carries its reference; only the ones a message cites ever need it).
   */
  ref(path: YamlPath, at: At = 'value'): SourceRef {
    let p: {line: number; column: number} | undefined
    const src = this
    return {
      file: this.file,
      get line() {
        return (p ??= src.pos(path, at)).line
      },
      get column() {
        return (p ??= src.pos(path, at)).column
      },
    }
  }

  linePos(offset: number): {line: number; column: number} {
    // binary search: how many newlines come before offset
    let lo = 0
    let hi = this.newlines.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.newlines[mid]! < offset) lo = mid + 1
      else hi = mid
    }
    return {line: lo + 1, column: offset - (lo === 0 ? 0 : this.newlines[lo - 1]! + 1) + 1}
  }
}

/** An inventory nests ~5 levels; flow collections beyond this are refused before parsing. */
export const MAX_FLOW_DEPTH = 64

/**
 * Offset of the first `[` or `{` that opens a flow collection deeper than `max`, or -1.
 *
 * Why: yaml's parser tokenises the whole file before it composes (and then fails on its own
 * stack): 1 MB of "[" took 1.2 GB of memory and 5 s. Written here, as a scan that runs before
 * yaml on files js-yaml rejected. Approximate on purpose: comments and quoted scalars are skipped,
 * every other bracket counts (an unbalanced bracket inside plain text counts too: reaching the
 * limit that way takes dozens of them, in a file that failed to parse already).
 */
export function flowTooDeep(t: string, max: number): number {
  let depth = 0
  for (let i = 0; i < t.length; i++) {
    const c = t.charCodeAt(i)
    const prev = i === 0 ? 10 : t.charCodeAt(i - 1)
    // 91 [  123 {  93 ]  125 }  35 #  34 "  39 '
    if (c === 91 || c === 123) {
      if (++depth > max) return i
    } else if (c === 93 || c === 125) {
      if (depth > 0) depth--
    } else if (c === 35 && (i === 0 || prev === 32 || prev === 9 || prev === 10 || prev === 13)) {
      const nl = t.indexOf('\n', i)
      i = nl === -1 ? t.length : nl
    } else if ((c === 34 || c === 39) && (prev === 10 || prev === 13 || prev === 32 || prev === 9 || prev === 91 || prev === 123 || prev === 44 || prev === 58)) {
      // a quoted scalar: to its closing quote (\" escapes in double quotes, '' in single ones)
      for (i++; i < t.length; i++) {
        const d = t.charCodeAt(i)
        if (c === 34 && d === 92) i++
        else if (d === c) {
          if (c === 39 && t.charCodeAt(i + 1) === 39) i++
          else break
        }
      }
    }
  }
  return -1
}

/** Number of nodes of a value once aliases are expanded, counting up to `limit` (then stops). */
/** js-yaml, once the first file was read with it (readFast). */
let jsYaml: typeof import('js-yaml') | undefined

/** js-yaml's parse of a text already read without error, with a listener of its nodes (positions). */
function loadWithListener(text: string, listener: (event: 'open' | 'close', state: {position: number; result: unknown}) => void): void {
  jsYaml!.load(text, {schema: jsYaml!.CORE_SCHEMA, json: false, listener})
}

function expandedSize(v: unknown, limit: number): number {
  let n = 0
  const stack = [v]
  while (stack.length > 0 && n <= limit) {
    const x = stack.pop()
    n++
    if (Array.isArray(x)) for (const y of x) stack.push(y)
    else if (x !== null && typeof x === 'object') for (const y of Object.values(x)) stack.push(y)
  }
  return n
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
      // the last guard against a secret in a message (see redact.ts)
      message: redactSecrets(message),
      ...(opts.suggestion ? {suggestion: redactSecrets(opts.suggestion)} : {}),
      severity: opts.severity ?? 'error',
    })
  }

  /** A problem at a raw position (YAML syntax errors, files that cannot be read). */
  addAt(ref: SourceRef, rule: string, message: string, suggestion?: string, severity: 'error' | 'warning' = 'error'): void {
    this.items.push({...ref, rule, message: redactSecrets(message), ...(suggestion ? {suggestion: redactSecrets(suggestion)} : {}), severity})
  }
}

/** "establishments[2].network.address" */
export function describePath(path: YamlPath): string {
  let s = ''
  for (const seg of path) s += typeof seg === 'number' || /^\d+$/.test(String(seg)) ? `[${seg}]` : s === '' ? String(seg) : `.${seg}`
  return s === '' ? 'the document' : s
}
