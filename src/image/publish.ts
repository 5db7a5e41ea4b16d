/**
 * `pgi image publish`: an image as a content-defined chunk store plus a signed index, for delivery
 * over slow links (docs/delivery.md). The store is plain files that any static HTTP(S) server
 * serves (nginx, an object store, a CDN):
 *
 *   STORE/default.castr/XXXX/<chunk id>.cacnk   chunks (zstd), shared by every version and image
 *   STORE/<name>/<version>/disk.caibx           casync's index of the raw disk (chunk ids, offsets)
 *   STORE/<name>/<version>/delivery.json        what was published (index digest, raw digest, sizes)
 *   STORE/<name>/<version>/delivery.sig         Ed25519 signature of delivery.json (the image key)
 *   STORE/<name>/<version>/manifest.json|.sig   the image's own signed manifest
 *
 * The chunking engine is casync (Debian 12 and 13 ship it; docs/delivery.md weighs it against a
 * desync-compatible implementation and RAUC's block-hash index on numbers). A node or a guest that
 * holds an older version fetches only the chunks it lacks (`casync extract --seed=<old disk>`) and
 * checks the assembled disk against the manifest's signed raw sha256.
 *
 * A published version is never changed: publishing it again with the same bits is a no-op, with
 * other bits a refusal (the store's readers may hold the first index).
 */
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {ErrorCode, UsageError, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {requireTools, run} from '../exec.js'
import type {Io} from '../io.js'
import {imagesDir, secretsDir} from '../paths.js'
import {compareVersions, findImage, verifyImage, type ImageRef} from './images.js'
import {majorOf} from './recipe.js'
import {parseCaibx} from './caibx.js'
import {makePatch, type PatchEntry} from './patch.js'
import {keyId, loadTrustedKeys, publicKeyOf, sha256OfFile, signBytes, SIGNING_KEY_SECRET, type ImageManifest} from './manifest.js'

export {parseCaibx, type IndexChunk} from './caibx.js'

/** The chunk store's folder inside STORE (casync's own default name). */
export const CHUNK_STORE = 'default.castr'

/** Chunk sizes (bytes): casync's defaults, written in delivery.json so that a reader knows them. */
export const CHUNK_SIZE = {min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024}

/** What `delivery.json` says about one published version (signed: delivery.sig). */
export interface DeliveryManifest {
  format: 1
  name: string
  version: string
  /** sha256 of the image's manifest.json as published beside it. */
  image_manifest_sha256: string
  engine: {tool: 'casync'; digest: 'sha512-256'; compression: 'zstd'; chunk_size: typeof CHUNK_SIZE}
  store: string
  index: {file: string; sha256: string; size_bytes: number}
  raw: {sha256: string; size_bytes: number}
  chunks: {count: number; distinct: number; stored_bytes: number}
  /** Binary patches from older versions (src/image/patch.ts): absent when none was written. */
  patches?: PatchEntry[]
  signing: {algorithm: 'ed25519'; key_id: string}
}

export interface PublishOptions {
  /** VERSION or NAME@VERSION. */
  ref: string | ImageRef
  store: string
  imagesRoot?: string
  secretsDir?: string
  /**
   * Versions to write a binary patch from (each published in the store and present in the images
   * folder); default: the newest older version of the image published in the store, when the
   * images folder holds it. An empty list: no patch.
   */
  patchFrom?: string[]
  env?: NodeJS.ProcessEnv
  io: Io
}

export interface PublishResult {
  name: string
  version: string
  store: string
  /** False when this version was already published with the same bits (nothing written). */
  published: boolean
  index: {path: string; sha256: string; sizeBytes: number}
  rawSha256: string
  chunks: {count: number; distinct: number; storedBytes: number; newChunks: number; newBytes: number}
  /** The qcow2 a full transfer would send, for comparison. */
  imageBytes: number
  /** Patches written (from older versions), with what each rebuilds. */
  patches: {from: string; file: string; sizeBytes: number; chunks: number; chunkBytes: number; patched: number}[]
}

/** The chunk file of `id` in a casync store folder. */
export function chunkPath(storeDir: string, id: string): string {
  return join(storeDir, id.slice(0, 4), `${id}.cacnk`)
}

/** Ids of the chunks a casync store already holds (its folder listing: no chunk is read). */
export async function storedChunks(storeDir: string): Promise<Set<string>> {
  const ids = new Set<string>()
  let dirs: string[]
  try {
    dirs = await readdir(storeDir)
  } catch {
    return ids
  }
  for (const d of dirs) {
    if (!/^[0-9a-f]{4}$/.test(d)) continue
    for (const f of await readdir(join(storeDir, d))) if (f.endsWith('.cacnk')) ids.add(f.slice(0, -'.cacnk'.length))
  }
  return ids
}

/** The image signing key of this machine's secret store; it must be a key the images folder trusts. */
async function signingKey(opts: PublishOptions, manifest: ImageManifest, imagesRoot: string) {
  const {SecretStore} = await import('../secrets/store.js')
  const store = await SecretStore.open({dir: opts.secretsDir ?? secretsDir(opts.env), recipients: [], env: opts.env})
  const key = await store.tryGet(SIGNING_KEY_SECRET)
  if (!key) {
    throw new UserError(ErrorCode.SECRET_MISSING, `no image signing key in this machine's secret store (secret ${SIGNING_KEY_SECRET}): delivery.json must be signed by the key that signed ${manifest.name} ${manifest.version}`, {
      suggestions: ['Publish on the machine that built the image (pgi image build creates the key), or pass its secrets folder with --secrets-dir.'],
    })
  }
  const id = keyId(publicKeyOf(key))
  if (!(await loadTrustedKeys(imagesRoot)).has(id)) {
    throw new UserError(ErrorCode.IMAGE_INVALID, `the signing key of this machine (key id ${id}) is not trusted by the images folder ${imagesRoot}`, {
      exitCode: ExitCode.REFUSED,
      suggestions: [`Publish with the secrets folder of the machine that built the image (the manifest names key ${manifest.signing.key_id}).`],
    })
  }
  return {key, id}
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory()
  } catch {
    return false
  }
}

const VERSION_NAME = /^[0-9A-Za-z][0-9A-Za-z.+~-]*$/

/**
 * The versions to write a patch from: the ones asked (each published in the store and in the
 * images folder), or by default the newest older version of the same line published in the store,
 * if the images folder holds it (a patch across lines — Debian 12 to 13 — rebuilds little: it is
 * made only when asked).
 */
async function patchSources(opts: PublishOptions, name: string, version: string, storeRoot: string, imagesRoot: string): Promise<string[]> {
  const dir = join(storeRoot, name)
  const published = (await readdir(dir).catch(() => [] as string[])).filter((v) => VERSION_NAME.test(v))
  const isPublished = async (v: string) => (await stat(join(dir, v, 'delivery.json')).catch(() => undefined))?.isFile() === true
  if (opts.patchFrom) {
    for (const v of opts.patchFrom) {
      const where = {flag: 'patch-from'}
      if (!VERSION_NAME.test(v)) throw new UsageError(`--patch-from ${JSON.stringify(v)}: not a version`, {where})
      if (v === version) throw new UsageError(`--patch-from ${v}: that is the version being published`, {where})
      if (!published.includes(v) || !(await isPublished(v))) {
        throw new UsageError(`--patch-from ${v}: ${name} ${v} is not published in ${storeRoot}`, {where, suggestions: [`Publish it first (pgi image publish ${name}@${v} --store ${storeRoot}), or leave --patch-from out.`]})
      }
      await findImage({name, version: v}, {root: imagesRoot})
    }
    return [...new Set(opts.patchFrom)]
  }
  const older: string[] = []
  for (const v of published) if (compareVersions(v, version) < 0 && majorOf(v) === majorOf(version) && (await isPublished(v))) older.push(v)
  const v = older.sort(compareVersions).at(-1)
  if (!v) return []
  try {
    await findImage({name, version: v}, {root: imagesRoot})
  } catch {
    opts.io.info(`no patch from ${v}: the images folder ${imagesRoot} does not hold it (guests running ${v} fetch chunks only)`)
    return []
  }
  return [v]
}

/**
 * Publishes a verified image into a chunk store: the raw disk (converted from the qcow2 and
 * checked against the manifest's signed raw sha256) chunked by casync, the index and a signed
 * delivery.json beside the image's manifest. Chunks already in the store are not written again.
 */
export async function publishImage(opts: PublishOptions): Promise<PublishResult> {
  const imagesRoot = opts.imagesRoot ?? imagesDir(opts.env)
  const storeRoot = resolve(opts.store)
  const {manifest, diskPath, entry} = await verifyImage(opts.ref, {root: imagesRoot})
  await requireTools(['qemu-img', 'casync'])

  if (!(await isDirectory(storeRoot))) {
    try {
      await mkdir(storeRoot, {recursive: true})
    } catch (err) {
      throw new UsageError(`--store ${opts.store}: cannot create the folder (${(err as Error).message})`, {
        where: {flag: 'store'},
        suggestions: ['Give a folder this user can write to (the web server serves it read-only).'],
      })
    }
  }
  const versionDir = join(storeRoot, manifest.name, manifest.version)
  const castr = join(storeRoot, CHUNK_STORE)
  const imageBytes = (await stat(diskPath)).size
  const manifestText = await readFile(entry.manifestPath)
  // the key is checked before any work: a machine that cannot sign adds nothing to the store
  // (a version already published needs none: it is only compared)
  const signer = (await isDirectory(versionDir)) ? undefined : await signingKey(opts, manifest, imagesRoot)
  // the patches' sources are checked before any work too: a bad --patch-from adds nothing either
  const sources = signer ? await patchSources(opts, manifest.name, manifest.version, storeRoot, imagesRoot) : []

  const work = await mkdtemp(join(storeRoot, '.publish-'))
  try {
    // the raw disk, sparse: the store chunks what a guest's disk holds, not the qcow2's layout
    const raw = join(work, 'disk.raw')
    opts.io.info(`converting ${manifest.name} ${manifest.version} to a raw disk`)
    await run('qemu-img', ['convert', '-O', 'raw', diskPath, raw], {}, opts.io)
    const rawSha = await sha256OfFile(raw)
    if (rawSha !== manifest.disk.raw_sha256) {
      throw new UserError(ErrorCode.IMAGE_INVALID, `${manifest.name} ${manifest.version}: the raw disk's sha256 ${rawSha} is not the manifest's ${manifest.disk.raw_sha256}`, {
        exitCode: ExitCode.REFUSED,
        suggestions: ['The qcow2 does not hold the bits the manifest signed: rebuild the image (pgi image build).'],
      })
    }
    const rawBytes = (await stat(raw)).size
    const before = await storedChunks(castr)
    opts.io.info(`chunking ${(rawBytes / 2 ** 30).toFixed(1)} GiB into ${castr}`)
    const index = join(work, 'disk.caibx')
    await run('casync', ['make', `--store=${castr}`, '--compression=zstd', `--chunk-size=${CHUNK_SIZE.min}:${CHUNK_SIZE.avg}:${CHUNK_SIZE.max}`, index, raw], {}, opts.io)
    const indexBytes = await readFile(index)
    const chunks = parseCaibx(indexBytes)
    const distinct = [...new Set(chunks.map((c) => c.id))]
    let storedBytes = 0
    let newBytes = 0
    let newChunks = 0
    for (const id of distinct) {
      const size = (await stat(chunkPath(castr, id))).size
      storedBytes += size
      if (!before.has(id)) {
        newChunks++
        newBytes += size
      }
    }
    const indexSha = createHash('sha256').update(indexBytes).digest('hex')
    const result: PublishResult = {
      name: manifest.name,
      version: manifest.version,
      store: storeRoot,
      published: true,
      index: {path: join(versionDir, 'disk.caibx'), sha256: indexSha, sizeBytes: indexBytes.length},
      rawSha256: rawSha,
      chunks: {count: chunks.length, distinct: distinct.length, storedBytes, newChunks, newBytes},
      imageBytes,
      patches: [],
    }

    if (!signer || (await isDirectory(versionDir))) {
      // published before: the same index is a no-op, another one a refusal (versions never change)
      const prior = await readFile(join(versionDir, 'delivery.json'), 'utf8')
        .then((t) => JSON.parse(t) as DeliveryManifest)
        .catch(() => undefined)
      if (prior?.index.sha256 === indexSha) return {...result, published: false}
      throw new UserError(ErrorCode.IMAGE_EXISTS, `${manifest.name} ${manifest.version} is already published in ${storeRoot} with other bits`, {
        exitCode: ExitCode.REFUSED,
        suggestions: ['A published version never changes: build and publish a new version.'],
      })
    }

    const {key, id} = signer
    const patches: PatchEntry[] = []
    for (const from of sources) {
      const old = await verifyImage({name: manifest.name, version: from}, {root: imagesRoot})
      const oldDir = join(storeRoot, manifest.name, from)
      const oldDelivery = JSON.parse(await readFile(join(oldDir, 'delivery.json'), 'utf8')) as DeliveryManifest
      if (oldDelivery.raw?.sha256 !== old.manifest.disk.raw_sha256) {
        throw new UserError(ErrorCode.IMAGE_INVALID, `${manifest.name} ${from}: the store holds other bits (raw sha256 ${oldDelivery.raw?.sha256}) than the images folder (${old.manifest.disk.raw_sha256}): no patch can be made from it`, {
          exitCode: ExitCode.REFUSED,
          suggestions: ['Publish from the images folder the store was filled from, or pass --patch-from with another version (or --no-patch).'],
        })
      }
      const oldRaw = join(work, `from-${from}.raw`)
      opts.io.info(`writing the patch from ${from}: converting ${manifest.name} ${from} to a raw disk`)
      await run('qemu-img', ['convert', '-O', 'raw', old.diskPath, oldRaw], {}, opts.io)
      const file = `from-${from}.pgipatch`
      const r = await makePatch({
        name: manifest.name,
        from: {version: from, raw: oldRaw, rawSha256: old.manifest.disk.raw_sha256, index: parseCaibx(await readFile(join(oldDir, oldDelivery.index.file)))},
        to: {version: manifest.version, raw, rawSha256: rawSha, index: chunks},
        out: join(work, file),
        work: join(work, `patch-${from}`),
        io: opts.io,
      })
      await rm(oldRaw, {force: true})
      await rm(join(work, `patch-${from}`), {recursive: true, force: true})
      patches.push({from, from_raw_sha256: old.manifest.disk.raw_sha256, file, sha256: r.sha256, size_bytes: r.sizeBytes, chunks: r.chunks, chunk_bytes: r.chunkBytes})
      result.patches.push({from, file: join(versionDir, file), sizeBytes: r.sizeBytes, chunks: r.chunks, chunkBytes: r.chunkBytes, patched: r.patched})
      opts.io.info(`patch from ${from}: ${r.chunks} chunks (${(r.chunkBytes / 1e6).toFixed(1)} MB) in ${(r.sizeBytes / 1e6).toFixed(1)} MB, ${r.patched} of them against ${from}'s bytes`)
    }
    const delivery: DeliveryManifest = {
      format: 1,
      name: manifest.name,
      version: manifest.version,
      image_manifest_sha256: createHash('sha256').update(manifestText).digest('hex'),
      engine: {tool: 'casync', digest: 'sha512-256', compression: 'zstd', chunk_size: CHUNK_SIZE},
      store: CHUNK_STORE,
      index: {file: 'disk.caibx', sha256: indexSha, size_bytes: indexBytes.length},
      raw: {sha256: rawSha, size_bytes: rawBytes},
      chunks: {count: chunks.length, distinct: distinct.length, stored_bytes: storedBytes},
      ...(patches.length ? {patches} : {}),
      signing: {algorithm: 'ed25519', key_id: id},
    }
    // the same canonical form as manifest.json (what is signed is what is written)
    const deliveryBytes = Buffer.from(JSON.stringify(delivery, null, 2) + '\n')
    // the version's files are written in a folder beside it, then renamed: a reader of the store
    // sees a version whole or not at all
    const staged = join(work, 'version')
    await mkdir(staged)
    await rename(index, join(staged, 'disk.caibx'))
    await writeFile(join(staged, 'manifest.json'), manifestText)
    await writeFile(join(staged, 'manifest.sig'), await readFile(entry.signaturePath))
    await writeFile(join(staged, 'delivery.json'), deliveryBytes)
    await writeFile(join(staged, 'delivery.sig'), signBytes(deliveryBytes, key))
    for (const p of patches) await rename(join(work, p.file), join(staged, p.file))
    await mkdir(join(storeRoot, manifest.name), {recursive: true})
    await rename(staged, versionDir)
    opts.io.info(`published ${manifest.name} ${manifest.version}: ${newChunks} new chunks (${(newBytes / 1e6).toFixed(1)} MB) of ${distinct.length}`)
    return result
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}
