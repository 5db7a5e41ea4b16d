import {existsSync} from 'node:fs'
import {readdir, readFile, stat} from 'node:fs/promises'
import {join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {imagesDir} from '../paths.js'
import {loadTrustedKeys, verifyManifestAndDisk, type ImageManifest} from './manifest.js'
import {majorOf} from './recipe.js'

/** The image recipe used when only a version is given. */
export const DEFAULT_IMAGE = 'pgi-tryton'

export interface ImageRef {
  name: string
  version: string
}

export interface ImageEntry extends ImageRef {
  dir: string
  diskPath: string
  manifestPath: string
  signaturePath: string
  sizeBytes?: number
  sha256?: string
  buildTime?: string
  keyId?: string
}

export interface ImageLookupOptions {
  /** Images folder (default imagesDir()). */
  root?: string
  env?: NodeJS.ProcessEnv
  /** The folder was named (a flag, PGI_IMAGES_DIR): its absence is an error, not an empty list. */
  named?: boolean
}

/** "1.2.0" (the default image), "pgi-tryton@1.2.0" or "pgi-tryton/1.2.0". */
export function parseImageRef(ref: string, defaultName = DEFAULT_IMAGE): ImageRef {
  const m = /^(?:([a-z0-9][a-z0-9-]*)[@/])?([0-9][0-9A-Za-z.+~-]*)$/.exec(ref.trim())
  if (!m) throw new UserError(ErrorCode.USAGE, `"${ref}" is not an image version (1.2.0, or NAME@1.2.0)`, {suggestions: ['List the images with `pgi image list`.']})
  return {name: m[1] ?? defaultName, version: m[2]}
}

export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.+~-]/)
  const pb = b.split(/[.+~-]/)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? ''
    const y = pb[i] ?? ''
    const d = /^\d+$/.test(x) && /^\d+$/.test(y) ? Number(x) - Number(y) : x.localeCompare(y)
    if (d !== 0) return d
  }
  return 0
}

async function entryFor(root: string, name: string, version: string): Promise<ImageEntry | undefined> {
  const dir = join(root, name, version)
  const manifestPath = join(dir, 'manifest.json')
  if (!existsSync(manifestPath)) return undefined
  const e: ImageEntry = {name, version, dir, manifestPath, signaturePath: join(dir, 'manifest.sig'), diskPath: join(dir, `${name}-${version}.qcow2`)}
  try {
    const m = JSON.parse(await readFile(manifestPath, 'utf8')) as ImageManifest
    e.diskPath = join(dir, m.disk.file)
    e.sizeBytes = m.disk.size_bytes
    e.sha256 = m.disk.sha256
    e.buildTime = m.build_time
    e.keyId = m.signing?.key_id
  } catch {
    // unreadable manifest: listed; `verifyImage` says what is wrong
  }
  return e
}

/** Every published image (a folder with manifest.json), by name then version (oldest first). Not verified. */
export async function listImages(opts: ImageLookupOptions = {}): Promise<ImageEntry[]> {
  const root = opts.root ?? imagesDir(opts.env)
  const out: ImageEntry[] = []
  let names: string[] = []
  try {
    names = (await readdir(root)).filter((n) => n !== 'trusted-keys' && !n.startsWith('.'))
  } catch (err) {
    // the default folder is missing until the first build: no image yet; a folder named by a
    // flag or PGI_IMAGES_DIR that is missing is most likely a typo, and one that cannot be read
    // would hide what it holds
    const code = (err as NodeJS.ErrnoException).code
    if ((code === 'ENOENT' || code === 'ENOTDIR') && !opts.named) return out
    const missing = code === 'ENOENT' || code === 'ENOTDIR'
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `images folder ${root}: ${code === 'ENOENT' ? 'no such folder' : code === 'ENOTDIR' ? 'not a folder' : `cannot be read (${code ?? (err as Error).message})`}`, {
      ...(missing ? {exitCode: ExitCode.USAGE, where: {flag: 'images-dir'}} : {}),
      suggestions: ['Check --images-dir or PGI_IMAGES_DIR (the default is <state dir>/images), or build an image there with `sudo pgi image build --out DIR`.'],
    })
  }
  for (const name of names.sort()) {
    if (!(await stat(join(root, name))).isDirectory()) continue
    const versions = (await readdir(join(root, name))).filter((v) => !v.startsWith('.')).sort(compareVersions)
    for (const v of versions) {
      const e = await entryFor(root, name, v)
      if (e) out.push(e)
    }
  }
  return out
}

/** One published image (not verified); IMAGE_NOT_FOUND when absent. */
export async function findImage(ref: string | ImageRef, opts: ImageLookupOptions = {}): Promise<ImageEntry> {
  const r = typeof ref === 'string' ? parseImageRef(ref) : ref
  const root = opts.root ?? imagesDir(opts.env)
  const e = await entryFor(root, r.name, r.version)
  if (!e) {
    const have = (await listImages({root})).filter((i) => i.name === r.name).map((i) => i.version)
    // "2" (pgi-tryton@2, as `pgi image build` names a recipe's line) is a line, not a version: the
    // versions of that line are what to give; a build suggestion names the line's own recipe
    const ofLine = have.filter((v) => majorOf(v) === majorOf(r.version))
    const isLine = /^[0-9]+$/.test(r.version)
    throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `no image ${r.name} ${r.version} in ${root}${isLine ? ` (${r.version} names a line: give a version)` : ''}`, {
      details: {available: have},
      suggestions: [
        ...(isLine && ofLine.length ? [`Versions of line ${r.version}: ${ofLine.join(', ')}.`] : have.length ? [`Available versions: ${have.join(', ')}.`] : []),
        ...(ofLine.length ? [] : [`Build it first: \`sudo pgi image build ${r.name}@${r.version}\`.`]),
        'Or point --images-dir / PGI_IMAGES_DIR at the folder holding it.',
      ],
    })
  }
  return e
}

/**
 * Verifies an image before anything uses it: the manifest's Ed25519 signature against the
 * trusted keys (`<images dir>/trusted-keys/*.pem`), then the qcow2's size and sha256. Throws
 * IMAGE_INVALID (exit 7, refused) for a modified image or manifest. This is what deploy calls.
 */
export async function verifyImage(ref: string | ImageRef, opts: ImageLookupOptions = {}): Promise<{manifest: ImageManifest; diskPath: string; entry: ImageEntry}> {
  const root = opts.root ?? imagesDir(opts.env)
  const e = await findImage(ref, {root})
  const manifest = await verifyManifestAndDisk({
    what: `${e.name} ${e.version}`,
    manifestPath: e.manifestPath,
    signaturePath: e.signaturePath,
    diskDir: e.dir,
    trusted: await loadTrustedKeys(root),
  })
  if (manifest.name !== e.name || manifest.version !== e.version) {
    throw new UserError(ErrorCode.IMAGE_INVALID, `image ${e.name} ${e.version}: its signed manifest says ${manifest.name} ${manifest.version} (copied to the wrong folder?)`, {exitCode: 7})
  }
  return {manifest, diskPath: join(e.dir, manifest.disk.file), entry: e}
}
