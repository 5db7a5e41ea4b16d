import {createHash} from 'node:crypto'
import {readFile, rename, writeFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import type {Recipe} from './recipe.js'

/**
 * `image.lock` (`image@2.lock` for `image@2.yaml`), next to the recipe: every package installed in the image with its exact
 * version. The first build writes it; later builds pin every package to it (apt preferences,
 * priority 1001) and fail if the result differs, so a rebuild from the same lock gets the same
 * packages. `--update-lock` resolves again from the mirror and rewrites it.
 *
 * Format (text, sorted, stable for review in git):
 *   # comment lines
 *   @suite bookworm
 *   @architecture amd64
 *   @request <sha256 of the requested package list and kernel>
 *   <package> <version>
 */
export interface ImageLock {
  suite: string
  architecture: string
  /** Digest of what the recipe asked for; a change of the recipe's package list makes the lock stale. */
  request: string
  packages: Map<string, string>
}

const PKG_RE = /^[a-z0-9][a-z0-9.+-]*(:[a-z0-9]+)?$/
const VER_RE = /^[A-Za-z0-9.+~:-]+$/

/** Next to the recipe, named after it: image.yaml → image.lock, image@2.yaml → image@2.lock. */
export function lockPath(recipe: Pick<Recipe, 'path'>): string {
  const name = basename(recipe.path).replace(/\.ya?ml$/, '')
  return join(dirname(recipe.path), `${name}.lock`)
}

/** What the recipe requests (package names, kernel, suite): the lock is valid for one request. */
export function requestDigest(recipe: Pick<Recipe, 'packages' | 'kernel' | 'suite' | 'architecture' | 'components'>): string {
  const req = {suite: recipe.suite, architecture: recipe.architecture, components: recipe.components, kernel: recipe.kernel.package, packages: [...recipe.packages].sort()}
  return createHash('sha256').update(JSON.stringify(req)).digest('hex')
}

export function parseLock(text: string, path: string): ImageLock {
  const lock: ImageLock = {suite: '', architecture: '', request: '', packages: new Map()}
  const lines = text.split('\n')
  lines.forEach((raw, i) => {
    const line = raw.trim()
    if (!line || line.startsWith('#')) return
    const bad = (why: string) =>
      new UserError(ErrorCode.IMAGE_INVALID, `${path}:${i + 1}: ${why}`, {
        exitCode: ExitCode.INVALID_INPUT,
        where: {file: path, line: i + 1},
        suggestions: ['The lock is written by `pgi image build`: restore it from git, or rebuild it with --update-lock.'],
      })
    const [k, v, extra] = line.split(/\s+/)
    if (!v || extra !== undefined) throw bad(`expected "<package> <version>" or "@key value", got "${line}"`)
    if (k.startsWith('@')) {
      if (k === '@suite') lock.suite = v
      else if (k === '@architecture') lock.architecture = v
      else if (k === '@request') lock.request = v
      else throw bad(`unknown header ${k}`)
      return
    }
    if (!PKG_RE.test(k) || !VER_RE.test(v)) throw bad(`"${line}" is not a package and a version`)
    if (lock.packages.has(k)) throw bad(`package ${k} listed twice`)
    lock.packages.set(k, v)
  })
  if (!lock.suite || !lock.request || lock.packages.size === 0) {
    throw new UserError(ErrorCode.IMAGE_INVALID, `${path}: incomplete lock (needs @suite, @request and packages)`, {exitCode: ExitCode.INVALID_INPUT, where: {file: path}})
  }
  return lock
}

export function formatLock(lock: ImageLock, name: string): string {
  const rows = [...lock.packages.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return [
    `# image.lock of ${name}: every package of the image and its exact version.`,
    '# Written by `pgi image build`, reused by every later build; refresh with --update-lock.',
    `@suite ${lock.suite}`,
    `@architecture ${lock.architecture}`,
    `@request ${lock.request}`,
    ...rows.map(([p, v]) => `${p} ${v}`),
    '',
  ].join('\n')
}

export async function readLock(path: string): Promise<ImageLock | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  return parseLock(text, path)
}

export async function writeLock(path: string, lock: ImageLock, name: string): Promise<void> {
  await writeFile(path + '.tmp', formatLock(lock, name))
  await rename(path + '.tmp', path)
}

/** apt preferences pinning every locked package to its version (priority 1001 allows downgrades). */
export function aptPreferences(lock: ImageLock): string {
  return [...lock.packages.entries()]
    .map(([p, v]) => `Package: ${p.replace(/:.*$/, '')}\nPin: version ${v}\nPin-Priority: 1001\n`)
    .join('\n')
}

/** The differences between a lock and what a build installed ([] when identical). */
export function lockDrift(lock: ImageLock, installed: Map<string, string>): string[] {
  const out: string[] = []
  for (const [p, v] of lock.packages) {
    const got = installed.get(p)
    if (got === undefined) out.push(`${p} ${v}: locked but not installed`)
    else if (got !== v) out.push(`${p}: locked ${v}, installed ${got}`)
  }
  for (const [p, v] of installed) if (!lock.packages.has(p)) out.push(`${p} ${v}: installed but not in the lock`)
  return out
}

/** Parses `dpkg-query -W -f '${Package}\t${Version}\n'` output. */
export function parseDpkgList(text: string): Map<string, string> {
  const m = new Map<string, string>()
  for (const line of text.split('\n')) {
    const [p, v] = line.split('\t')
    if (p && v) m.set(p, v)
  }
  return m
}
