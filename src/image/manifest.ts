import {createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, readdir, readFile, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {Secret} from '../secret.js'

/** What `manifest.json` says about one built image; signed (manifest.sig) with Ed25519. */
export interface ImageManifest {
  format: 1
  name: string
  version: string
  description?: string
  /** ISO-8601 UTC, from SOURCE_DATE_EPOCH. */
  build_time: string
  source_date_epoch: number
  disk: {
    file: string
    format: 'qcow2'
    sha256: string
    size_bytes: number
    virtual_size_bytes: number
    /** sha256 of the raw disk before conversion (reproducibility reports). */
    raw_sha256: string
  }
  kernel: {package: string; release: string; version: string}
  recipe: {name: string; digest: string}
  /** `drift`: where the build took the archive's current version instead of the locked one (--allow-lock-drift). */
  lock: {digest: string; packages: number; drift?: string[]}
  /** Digest of the root file tree (paths, types, modes, owners, content hashes). */
  tree: {digest: string; entries: number}
  packages: {name: string; version: string}[]
  ports: Record<string, number>
  signing: {algorithm: 'ed25519'; key_id: string}
}

export const SIGNING_KEY_SECRET = 'image-signing/ed25519'

export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/** Key id: the first 16 hex digits of the sha256 of the public key (SPKI DER). */
export function keyId(pub: KeyObject): string {
  return createHash('sha256').update(pub.export({type: 'spki', format: 'der'})).digest('hex').slice(0, 16)
}

/** A new Ed25519 private key as PKCS#8 PEM (a Secret). */
export function generateSigningKey(): Secret {
  const {privateKey} = generateKeyPairSync('ed25519')
  return new Secret(privateKey.export({type: 'pkcs8', format: 'pem'}).toString())
}

export function publicKeyOf(privatePem: Secret): KeyObject {
  return createPublicKey(createPrivateKey(privatePem.reveal()))
}

export function publicKeyPem(pub: KeyObject): string {
  return pub.export({type: 'spki', format: 'pem'}).toString()
}

/** The canonical bytes of a manifest (what is signed and written). */
export function manifestBytes(m: ImageManifest): Buffer {
  return Buffer.from(JSON.stringify(m, null, 2) + '\n')
}

export function signBytes(data: Buffer, privatePem: Secret): string {
  return sign(null, data, createPrivateKey(privatePem.reveal())).toString('base64') + '\n'
}

export function verifyBytes(data: Buffer, signatureB64: string, pub: KeyObject): boolean {
  const sig = Buffer.from(signatureB64.trim(), 'base64')
  if (sig.length !== 64) return false
  return verify(null, data, pub, sig)
}

/** Trusted public keys (`<imagesDir>/trusted-keys/<key id>.pem`). */
export function trustedKeysDir(imagesRoot: string): string {
  return join(imagesRoot, 'trusted-keys')
}

export async function exportTrustedKey(imagesRoot: string, pub: KeyObject): Promise<string> {
  const dir = trustedKeysDir(imagesRoot)
  await mkdir(dir, {recursive: true})
  const file = join(dir, `${keyId(pub)}.pem`)
  await writeFile(file, publicKeyPem(pub), {mode: 0o644})
  return file
}

export async function loadTrustedKeys(imagesRoot: string): Promise<Map<string, KeyObject>> {
  const dir = trustedKeysDir(imagesRoot)
  const keys = new Map<string, KeyObject>()
  let names: string[] = []
  try {
    names = await readdir(dir)
  } catch {
    return keys
  }
  for (const n of names.filter((x) => x.endsWith('.pem'))) {
    try {
      const k = createPublicKey(await readFile(join(dir, n), 'utf8'))
      if (k.asymmetricKeyType === 'ed25519') keys.set(keyId(k), k)
    } catch {
      // not a key: ignored (verify reports "no trusted key" if it was the one needed)
    }
  }
  return keys
}

function refused(what: string, message: string, suggestions: string[]): UserError {
  return new UserError(ErrorCode.IMAGE_INVALID, `image ${what}: ${message}`, {exitCode: ExitCode.REFUSED, suggestions})
}

/**
 * Checks a manifest's signature against the trusted keys, then the disk file's size and sha256.
 * Throws IMAGE_INVALID (exit 7) for anything modified, unsigned or signed by an unknown key.
 */
export async function verifyManifestAndDisk(opts: {what: string; manifestPath: string; signaturePath: string; diskDir: string; trusted: Map<string, KeyObject>}): Promise<ImageManifest> {
  const {what} = opts
  let raw: Buffer
  let sig: string
  try {
    raw = await readFile(opts.manifestPath)
    sig = await readFile(opts.signaturePath, 'utf8')
  } catch (err) {
    throw refused(what, `manifest or signature missing (${(err as Error).message})`, ['Rebuild the image, or copy manifest.json and manifest.sig with it.'])
  }
  let m: ImageManifest
  try {
    m = JSON.parse(raw.toString('utf8')) as ImageManifest
  } catch {
    throw refused(what, 'manifest.json is not JSON', ['The manifest was damaged: rebuild or re-copy the image.'])
  }
  const kid = m.signing?.key_id
  const key = kid ? opts.trusted.get(kid) : undefined
  if (!key) {
    throw refused(what, `signed by key ${kid ?? '(none)'}, which is not a trusted key`, [
      'Only images signed by a key in <images dir>/trusted-keys are accepted: add the build host\'s public key there if you trust it.',
    ])
  }
  if (!verifyBytes(raw, sig, key)) {
    throw refused(what, 'the signature of manifest.json does not match: the manifest was modified', ['Do not use this image: rebuild it or copy it again from the build host.'])
  }
  const disk = join(opts.diskDir, m.disk.file)
  let size: number
  try {
    size = (await stat(disk)).size
  } catch {
    throw refused(what, `disk file ${disk} is missing`, ['Copy the qcow2 file next to its manifest.'])
  }
  if (size !== m.disk.size_bytes || (await sha256OfFile(disk)) !== m.disk.sha256) {
    throw refused(what, `the disk file ${disk} does not match the signed manifest (size or sha256): it was modified or damaged`, [
      'Do not use this image: rebuild it or copy it again from the build host.',
    ])
  }
  return m
}
