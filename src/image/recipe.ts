import {createHash} from 'node:crypto'
import {readFile} from 'node:fs/promises'
import {dirname, isAbsolute, join, resolve} from 'node:path'

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
export function parseRecipe(text: string, path: string): Omit<Recipe, 'digest'> {
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

/** The recipe of a name shipped with pgi ("pgi-tryton") or a path to an image.yaml / its folder. */
export function recipePath(nameOrPath: string | undefined): string {
  const v = nameOrPath ?? 'pgi-tryton'
  if (/^[a-z0-9][a-z0-9-]*$/.test(v)) return join(packageRoot(), 'images', v, 'image.yaml')
  const abs = resolve(v)
  return abs.endsWith('.yaml') || abs.endsWith('.yml') ? abs : join(abs, 'image.yaml')
}

/** Reads, validates and digests a recipe (the digest covers the files it installs too). */
export async function loadRecipe(nameOrPath?: string): Promise<Recipe> {
  const path = recipePath(nameOrPath)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `no image recipe at ${path}`, {
      exitCode: ExitCode.INVALID_INPUT,
      cause: err,
      suggestions: ['Give a recipe name shipped with pgi (pgi-tryton) or the path to an image.yaml.'],
    })
  }
  const r = parseRecipe(text, path)
  const {treeDigest} = await import('./tree.js')
  const h = createHash('sha256').update(text)
  for (const f of r.files) h.update(`\0${f.src}\0${f.dest}\0${f.mode ?? ''}\0${f.owner ?? ''}\0${f.group ?? ''}\0`).update(await treeDigest(join(r.dir, f.src)))
  return {...r, digest: h.digest('hex')}
}
