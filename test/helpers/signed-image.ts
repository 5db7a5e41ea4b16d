/**
 * A published image for tests that never boot it (simulated labs, image resolution): a random
 * "qcow2" file with a manifest signed by a fresh Ed25519 key, that key trusted in the images
 * folder. `verifyImage` accepts it as it accepts a built one; the simulated lab reads the version
 * from the staged file name.
 */
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {exportTrustedKey, generateSigningKey, keyId, manifestBytes, publicKeyOf, signBytes, type ImageManifest} from '../../src/image/manifest.js'

export async function signedTestImage(root: string, name: string, version: string, bytes = 256 * 1024): Promise<{dir: string; file: string}> {
  const key = generateSigningKey()
  const pub = publicKeyOf(key)
  await exportTrustedKey(root, pub)
  const dir = join(root, name, version)
  await mkdir(dir, {recursive: true})
  const data = randomBytes(bytes)
  const file = `${name}-${version}.qcow2`
  await writeFile(join(dir, file), data)
  const sha = createHash('sha256').update(data).digest('hex')
  await writeSignedManifest(dir, key, {name, version, file, sha256: sha, sizeBytes: data.length, virtualBytes: 8 * 2 ** 30, rawSha256: sha})
  return {dir, file}
}

/**
 * A real qcow2 image (converted by qemu-img from a raw disk made of `parts`, each written at its
 * offset; the rest is sparse zeros) with its manifest signed by `key` (a fresh one by default,
 * trusted in the images folder). For the tests that read the disk's bits (image publish).
 */
export async function signedQcow2Image(
  root: string,
  name: string,
  version: string,
  opts: {virtualBytes: number; parts: {offset: number; data: Buffer}[]; key?: import('../../src/secret.js').Secret},
): Promise<{dir: string; file: string; rawSha256: string; key: import('../../src/secret.js').Secret}> {
  const {execFileSync} = await import('node:child_process')
  const {open, rm, stat} = await import('node:fs/promises')
  const key = opts.key ?? generateSigningKey()
  const pub = publicKeyOf(key)
  await exportTrustedKey(root, pub)
  const dir = join(root, name, version)
  await mkdir(dir, {recursive: true})
  const raw = join(dir, 'disk.raw')
  const fh = await open(raw, 'w')
  try {
    await fh.truncate(opts.virtualBytes)
    for (const p of opts.parts) await fh.write(p.data, 0, p.data.length, p.offset)
  } finally {
    await fh.close()
  }
  const rawHash = createHash('sha256')
  const {readFile} = await import('node:fs/promises')
  rawHash.update(await readFile(raw))
  const rawSha256 = rawHash.digest('hex')
  const file = `${name}-${version}.qcow2`
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', raw, join(dir, file)])
  await rm(raw)
  const qcow = await readFile(join(dir, file))
  await writeSignedManifest(dir, key, {name, version, file, sha256: createHash('sha256').update(qcow).digest('hex'), sizeBytes: (await stat(join(dir, file))).size, virtualBytes: opts.virtualBytes, rawSha256})
  return {dir, file, rawSha256, key}
}

/** manifest.json (a test image's: no packages, test kernel and digests) and its signature by `key`. */
async function writeSignedManifest(
  dir: string,
  key: import('../../src/secret.js').Secret,
  d: {name: string; version: string; file: string; sha256: string; sizeBytes: number; virtualBytes: number; rawSha256: string},
): Promise<void> {
  const m: ImageManifest = {
    format: 1,
    name: d.name,
    version: d.version,
    build_time: new Date(0).toISOString(),
    source_date_epoch: 0,
    disk: {file: d.file, format: 'qcow2', sha256: d.sha256, size_bytes: d.sizeBytes, virtual_size_bytes: d.virtualBytes, raw_sha256: d.rawSha256},
    kernel: {package: 'linux-image-amd64', release: 'test', version: 'test'},
    recipe: {name: d.name, digest: 'test'},
    lock: {digest: 'test', packages: 0},
    tree: {digest: 'test', entries: 0},
    packages: [],
    ports: {ssh: 22, web: 80, jsonrpc: 8000, postgresql: 5432},
    signing: {algorithm: 'ed25519', key_id: keyId(publicKeyOf(key))},
  }
  const raw = manifestBytes(m)
  await writeFile(join(dir, 'manifest.json'), raw)
  await writeFile(join(dir, 'manifest.sig'), signBytes(raw, key))
}
