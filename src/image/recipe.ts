import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {readdir, readFile} from 'node:fs/promises'
import {basename, dirname, isAbsolute, join, resolve} from 'node:path'

import {Ajv, type ErrorObject} from 'ajv'
import {isMap, isSeq, LineCounter, parseDocument, type Document} from 'yaml'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {packageRoot} from '../paths.js'

/**
 * An image recipe (`images/<name>/image.yaml`): what goes into a VM image. Format: docs/image.md.
 * Shared by every image (pgi-tryton, lab-test), so it says nothing Tryton-specific.
 */
export interface RecipeFile {
  /** Relative to the recipe folder; a folder is copied recursively. */
  src: string
  /** Absolute path inside the image. */
  dest: string
  /** Octal string ("0644"); single files only. */
  mode?: string
  owner?: string
  group?: string
}

export interface Recipe {
  name: string
  /** Default version when `--version` is not given. */
  version: string
  description?: string
  suite: string
  architecture: string
  components: string[]
  kernel: {package: string; cmdline: string}
  packages: string[]
  files: RecipeFile[]
  services: {enable: string[]; disable: string[]}
  /** Shell run in the image (chroot) after packages and files. */
  configure?: string
  trim: {path_exclude: string[]; path_include: string[]; remove: string[]}
  ports: Record<string, number>
  disk: {size: string; label: string}
  /** Where the recipe was read from (absolute), and its folder. */
  path: string
  dir: string
  /** sha256 of the recipe file and of every file it installs (in order). */
  digest: string
  /**
   * The line (major version) the recipe builds, when its folder holds several lines or it was
   * asked for by line (`pgi-tryton@2`): a build refuses a version of another line.
   */
  line?: string
  /** The version the reference named (`pgi-tryton@2.0.1`). */
  requestedVersion?: string
}

const NAME_RE = '^[a-z0-9][a-z0-9-]{0,62}$'
export const VERSION_RE = /^[0-9]+(\.[0-9]+){0,3}([-~+][0-9A-Za-z.]+)?$/

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'version', 'suite', 'kernel', 'packages'],
  properties: {
    name: {type: 'string', pattern: NAME_RE},
    version: {type: 'string', pattern: VERSION_RE.source},
    description: {type: 'string'},
    suite: {type: 'string', pattern: '^[a-z0-9-]+$'},
    architecture: {type: 'string', enum: ['amd64']},
    components: {type: 'array', items: {type: 'string', pattern: '^[a-z0-9-]+$'}, minItems: 1},
    kernel: {
      type: 'object',
      additionalProperties: false,
      required: ['package'],
      properties: {package: {type: 'string', pattern: '^[a-z0-9][a-z0-9.+-]+$'}, cmdline: {type: 'string'}},
    },
    packages: {type: 'array', items: {type: 'string', pattern: '^[a-z0-9][a-z0-9.+-]+$'}, uniqueItems: true},
    files: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['src', 'dest'],
        properties: {
          src: {type: 'string', minLength: 1},
          dest: {type: 'string', pattern: '^/'},
          mode: {type: 'string', pattern: '^0?[0-7]{3,4}$'},
          owner: {type: 'string', pattern: '^[a-z_][a-z0-9_-]*$'},
          group: {type: 'string', pattern: '^[a-z_][a-z0-9_-]*$'},
        },
      },
    },
    services: {
      type: 'object',
      additionalProperties: false,
      properties: {
        enable: {type: 'array', items: {type: 'string', pattern: '^[A-Za-z0-9@_.:\\\\-]+\\.(service|timer|socket|path|mount|target)$'}},
        disable: {type: 'array', items: {type: 'string', pattern: '^[A-Za-z0-9@_.:\\\\-]+\\.(service|timer|socket|path|mount|target)$'}},
      },
    },
    configure: {type: 'string'},
    trim: {
      type: 'object',
      additionalProperties: false,
      properties: {
        path_exclude: {type: 'array', items: {type: 'string', pattern: '^/'}},
        path_include: {type: 'array', items: {type: 'string', pattern: '^/'}},
        remove: {type: 'array', items: {type: 'string', pattern: '^/[^ ]+$'}},
      },
    },
    ports: {type: 'object', additionalProperties: {type: 'integer', minimum: 1, maximum: 65535}},
    disk: {
      type: 'object',
      additionalProperties: false,
      properties: {size: {type: 'string', pattern: '^[0-9]+[MG]$'}, label: {type: 'string', pattern: '^[A-Za-z0-9_-]{1,16}$'}},
    },
  },
} as const

const ajv = new Ajv({allErrors: true, strict: true})
const validate = ajv.compile(schema)

function invalid(path: string, message: string, line?: number): UserError {
  return new UserError(ErrorCode.IMAGE_INVALID, `recipe ${path}${line ? `:${line}` : ''}: ${message}`, {
    exitCode: ExitCode.INVALID_INPUT,
    where: {file: path, line},
    suggestions: ['Fix the recipe (format: docs/image.md) and run the command again.'],
  })
}

/** The line of the YAML node at an ajv instancePath ("/files/0/mode"), for messages. */
function lineOf(doc: Document, lc: LineCounter, instancePath: string): number | undefined {
  const keys = instancePath.split('/').slice(1).map((k) => (/^\d+$/.test(k) ? Number(k) : k.replace(/~1/g, '/').replace(/~0/g, '~')))
  for (let n = keys.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : doc.getIn(keys.slice(0, n), true)
    const range = (node as {range?: [number, number, number]} | undefined)?.range
    if (range) return lc.linePos(range[0]).line
  }
  return undefined
}

function describe(e: ErrorObject): string {
  const at = e.instancePath || '(top level)'
  if (e.keyword === 'additionalProperties') return `${at}: unknown key "${(e.params as {additionalProperty: string}).additionalProperty}"`
  if (e.keyword === 'required') return `${at}: missing key "${(e.params as {missingProperty: string}).missingProperty}"`
  return `${at}: ${e.message ?? 'invalid'}`
}

/** Parses and validates recipe text (no file access): for tests and for `loadRecipe`. */
export function parseRecipe(text: string, path: string): Omit<Recipe, 'digest' | 'line' | 'requestedVersion'> {
  const lc = new LineCounter()
  const doc = parseDocument(text, {lineCounter: lc, uniqueKeys: true, prettyErrors: false})
  if (doc.errors.length > 0) {
    const e = doc.errors[0]
    throw invalid(path, e.message.split('\n')[0], lc.linePos(e.pos[0]).line)
  }
  if (!isMap(doc.contents)) throw invalid(path, 'must be a YAML mapping', 1)
  const data = doc.toJS() as Record<string, unknown>
  if (!validate(data)) {
    const errs = validate.errors ?? []
    const first = errs[0]
    const line = first ? lineOf(doc, lc, first.instancePath) : undefined
    throw invalid(path, errs.slice(0, 5).map(describe).join('; '), line)
  }
  const r = data as unknown as Partial<Recipe> & {kernel: {package: string; cmdline?: string}}
  for (const f of r.files ?? []) {
    if (isAbsolute(f.src) || f.src.split('/').includes('..')) {
      const idx = (r.files ?? []).indexOf(f)
      throw invalid(path, `files[${idx}].src must be a path inside the recipe folder`, lineOf(doc, lc, `/files/${idx}/src`))
    }
  }
  void isSeq
  return {
    name: r.name!,
    version: r.version!,
    description: r.description,
    suite: r.suite!,
    architecture: r.architecture ?? 'amd64',
    components: r.components ?? ['main'],
    kernel: {package: r.kernel.package, cmdline: r.kernel.cmdline ?? 'console=ttyS0,115200n8'},
    packages: r.packages ?? [],
    files: r.files ?? [],
    services: {enable: r.services?.enable ?? [], disable: r.services?.disable ?? []},
    configure: r.configure,
    trim: {path_exclude: r.trim?.path_exclude ?? [], path_include: r.trim?.path_include ?? [], remove: r.trim?.remove ?? []},
    ports: r.ports ?? {},
    disk: {size: r.disk?.size ?? '2G', label: r.disk?.label ?? 'root'},
    path,
    dir: dirname(path),
  }
}

/**
 * A recipe reference, as `pgi image build` takes it:
 * - a name shipped with pgi: `pgi-tryton` is `images/pgi-tryton/image.yaml`;
 * - a line of it: `pgi-tryton@2` is `images/pgi-tryton/image@2.yaml` (the versions 2.x), and
 *   `pgi-tryton@1` is `image.yaml` when that recipe's versions are 1.x (the line it holds);
 * - a version of a line: `pgi-tryton@2.0.1` is line 2 built at version 2.0.1 (as `--version`);
 * - a path to an image.yaml (or any NAME.yaml, image@2.yaml included) or to its folder.
 */
export interface RecipeRef {
  path: string
  /** The line asked for (`@2`), checked against the recipe's version when it is loaded. */
  line?: string
  /** The version asked for (`@2.0.1`). */
  version?: string
}

const REF_RE = /^([a-z0-9][a-z0-9-]*)(?:@([0-9]+)((?:\.[0-9]+){1,3}(?:[-~+][0-9A-Za-z.]+)?)?)?$/

export function parseRecipeRef(nameOrPath: string | undefined): RecipeRef {
  const v = nameOrPath ?? 'pgi-tryton'
  const m = REF_RE.exec(v)
  if (m) {
    const [, name, line, rest] = m
    const dir = join(packageRoot(), 'images', name)
    if (line === undefined) return {path: join(dir, 'image.yaml')}
    const own = join(dir, `image@${line}.yaml`)
    return {path: existsSync(own) ? own : join(dir, 'image.yaml'), line, version: rest ? line + rest : undefined}
  }
  const abs = resolve(v)
  return {path: abs.endsWith('.yaml') || abs.endsWith('.yml') ? abs : join(abs, 'image.yaml')}
}

/** The recipe file of a reference (see parseRecipeRef). */
export function recipePath(nameOrPath: string | undefined): string {
  return parseRecipeRef(nameOrPath).path
}

/** The major version: the line a version belongs to ("2.0.1" → "2"). */
export function majorOf(version: string): string {
  return version.split(/[.~+-]/)[0]
}

/**
 * The lines of a recipe folder: `image.yaml` and every `image@N.yaml` beside it, by line, each
 * with its version. A folder with several lines builds only versions of the line asked for.
 */
export async function recipeLines(dir: string): Promise<{line: string; file: string; version: string}[]> {
  const out: {line: string; file: string; version: string}[] = []
  let names: string[] = []
  try {
    names = await readdir(dir)
  } catch {
    return out
  }
  for (const n of names.filter((f) => f === 'image.yaml' || /^image@[0-9]+\.yaml$/.test(f)).sort()) {
    const m = /^version:\s*["']?([^"'\s#]+)/m.exec(await readFile(join(dir, n), 'utf8'))
    if (m) out.push({line: majorOf(m[1]), file: join(dir, n), version: m[1]})
  }
  return out.sort((a, b) => Number(a.line) - Number(b.line))
}

/** Reads, validates and digests a recipe (the digest covers the files it installs too). */
export async function loadRecipe(nameOrPath?: string): Promise<Recipe> {
  const ref = parseRecipeRef(nameOrPath)
  const path = ref.path
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `no image recipe at ${path}`, {
      exitCode: ExitCode.INVALID_INPUT,
      cause: err,
      suggestions: ['Give a recipe name shipped with pgi (pgi-tryton, pgi-tryton@2, lab-test) or the path to an image.yaml.'],
    })
  }
  const r = parseRecipe(text, path)
  const fileLine = /^image@([0-9]+)\.yaml$/.exec(basename(path))?.[1]
  if (fileLine !== undefined && majorOf(r.version) !== fileLine) {
    throw invalid(path, `a recipe named image@${fileLine}.yaml builds the versions ${fileLine}.x: its version ${r.version} is of line ${majorOf(r.version)}`, 1)
  }
  if (ref.line !== undefined && majorOf(r.version) !== ref.line) {
    const lines = await recipeLines(r.dir)
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `${nameOrPath}: no line ${ref.line} of ${basename(r.dir)} (lines: ${lines.map((l) => `${l.line} in ${basename(l.file)}`).join(', ') || 'none'})`, {
      exitCode: ExitCode.INVALID_INPUT,
      suggestions: [`Give one of its lines (${lines.map((l) => `${basename(r.dir)}@${l.line}`).join(', ')}), or add images/${basename(r.dir)}/image@${ref.line}.yaml.`],
    })
  }
  const {treeDigest} = await import('./tree.js')
  const h = createHash('sha256').update(text)
  for (const f of r.files) h.update(`\0${f.src}\0${f.dest}\0${f.mode ?? ''}\0${f.owner ?? ''}\0${f.group ?? ''}\0`).update(await treeDigest(join(r.dir, f.src)))
  const lines = await recipeLines(r.dir)
  return {...r, digest: h.digest('hex'), line: lines.length > 1 || ref.line !== undefined || fileLine !== undefined ? majorOf(r.version) : undefined, requestedVersion: ref.version}
}
