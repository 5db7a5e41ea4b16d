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
import {verifyImage, type ImageRef} from './images.js'
import {keyId, loadTrustedKeys, publicKeyOf, sha256OfFile, signBytes, SIGNING_KEY_SECRET, type ImageManifest} from './manifest.js'

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
  signing: {algorithm: 'ed25519'; key_id: string}
}

export interface PublishOptions {
  /** VERSION or NAME@VERSION. */
  ref: string | ImageRef
  store: string
  imagesRoot?: string
  secretsDir?: string
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
}

/** One entry of a casync index: the chunk's id (hex) and its uncompressed size. */
export interface IndexChunk {
  id: string
  size: number
}

const CA_FORMAT_INDEX = 0x96824d9c7b129ff9n
const CA_FORMAT_TABLE = 0xe75b9e112f17417dn
const CA_FORMAT_TABLE_TAIL_MARKER = 0x4b4f050e5549ecd1n

/**
 * The chunks of a casync blob index (.caibx), in order. casync prints no machine-readable list
 * and no npm package reads the format, so it is read here from its published layout (casync's
 * caformat.h): a 48-byte index header, a table header, then 40-byte items (end offset, 32-byte
 * chunk id) up to a tail that starts with two zero words and ends with a marker.
 */
export function parseCaibx(buf: Buffer): IndexChunk[] {
  const bad = (why: string) => new UserError(ErrorCode.IMAGE_INVALID, `not a casync blob index: ${why}`, {exitCode: ExitCode.REFUSED})
  if (buf.length < 48 + 16 + 40) throw bad('too short')
  if (buf.readBigUInt64LE(0) !== 48n || buf.readBigUInt64LE(8) !== CA_FORMAT_INDEX) throw bad('no index header')
  if (buf.readBigUInt64LE(48) !== 0xffffffffffffffffn || buf.readBigUInt64LE(56) !== CA_FORMAT_TABLE) throw bad('no chunk table')
  const out: IndexChunk[] = []
  let prev = 0
  let pos = 64
  for (; pos + 40 <= buf.length; pos += 40) {
    const end = Number(buf.readBigUInt64LE(pos))
    if (end === 0) break
    if (end <= prev) throw bad(`chunk offsets go backwards at item ${out.length}`)
    out.push({id: buf.subarray(pos + 8, pos + 40).toString('hex'), size: end - prev})
    prev = end
  }
  if (pos + 40 > buf.length || buf.readBigUInt64LE(pos + 32) !== CA_FORMAT_TABLE_TAIL_MARKER) throw bad('no table tail')
  return out
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
    await mkdir(join(storeRoot, manifest.name), {recursive: true})
    await rename(staged, versionDir)
    opts.io.info(`published ${manifest.name} ${manifest.version}: ${newChunks} new chunks (${(newBytes / 1e6).toFixed(1)} MB) of ${distinct.length}`)
    return result
  } finally {
    await rm(work, {recursive: true, force: true})
  }
}
