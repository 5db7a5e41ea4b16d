import {randomInt, webcrypto} from 'node:crypto'
import {chmod, mkdir, readdir, readFile, rmdir, stat, unlink} from 'node:fs/promises'
import {dirname, join, sep} from 'node:path'

import {bech32} from '@scure/base'
import {armor, Decrypter, Encrypter} from 'age-encryption'

import {BugError, ErrorCode, UserError} from '../errors.js'
import {settleAll} from '../fleet/pool.js'
import type {SecretRef} from '../inventory/types.js'
import {Secret} from '../secret.js'
import {syncDir, writeFileAtomic} from './atomic.js'
import {environmentIdentities, localIdentity, readIdentityFile, type LoadedIdentity} from './identity.js'

/**
 * The secret store: a directory of age-encrypted files `<dir>/<key>.age` (ASCII-armored, so the
 * directory can be kept in git and diffs stay readable). Every file is encrypted to every
 * recipient of the inventory (the Région's technicians and CI) plus the identities this process
 * decrypts with, so that what we write we can always read back.
 *
 * Keys are slash-separated names such as `establishments/0130040Y/sql-admin`.
 */

export interface SecretStoreOptions {
  /** The store folder (created, mode 0700, on the first write). */
  dir: string
  /** age public keys ("age1…") every file is encrypted to (the inventory's `recipients`). */
  recipients: string[]
  /**
   * age identity files used to decrypt. Default: the key in `PGI_AGE_SECRET_KEY` when set (CI),
   * else the local identity (`localIdentity(env)`, created on first use).
   */
  identityFiles?: string[]
  env?: NodeJS.ProcessEnv
  /**
   * Test seam for crash-safety tests only: called after the temp file is written and synced and
   * before it is renamed into place. Production code never sets it.
   */
  beforeRename?: (tmpFile: string, key: string) => Promise<void> | void
}

export interface ReencryptResult {
  /** Keys re-encrypted to the current recipients. */
  reencrypted: string[]
  /** Keys this identity cannot read (left as they were). */
  failed: {key: string; code: string; message: string}[]
  /** How many recipients each file is now encrypted to. */
  recipients: number
}

const ARMOR_HEADER = '-----BEGIN AGE ENCRYPTED FILE-----'
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._@+-]*$/
const MAX_KEY_LENGTH = 200

/** Throws SECRET_KEY_INVALID unless `key` is a safe relative name (no `..`, no absolute path). */
export function validateSecretKey(key: string): void {
  const bad = (why: string) =>
    new UserError(ErrorCode.SECRET_KEY_INVALID, `invalid secret name "${key}": ${why}`, {
      suggestions: ['Secret names are relative paths of letters, digits, ".", "_", "-", "@", "+" separated by "/", e.g. establishments/0130040Y/sql-admin.'],
    })
  if (typeof key !== 'string' || key === '') throw bad('empty')
  if (key.length > MAX_KEY_LENGTH) throw bad(`longer than ${MAX_KEY_LENGTH} characters`)
  if (key.startsWith('/') || /^[A-Za-z]:/.test(key)) throw bad('absolute paths are not allowed')
  if (key.includes('\\')) throw bad('backslashes are not allowed')
  for (const seg of key.split('/')) {
    if (seg === '') throw bad('empty path segment')
    if (seg === '.' || seg === '..') throw bad('"." and ".." segments are not allowed')
    if (!SEGMENT.test(seg)) throw bad(`segment "${seg}" must start with a letter or digit and use only letters, digits, ".", "_", "-", "@", "+"`)
    if (seg.endsWith('.tmp')) throw bad('names ending in ".tmp" are reserved')
  }
}

export class SecretStore {
  readonly dir: string
  /** Every recipient files are encrypted to (deduplicated, sorted). */
  readonly recipients: readonly string[]
  readonly #identities: LoadedIdentity[]
  /** What the Decrypter is given: X25519 keys imported once as WebCrypto keys, others as text. */
  #decryptKeys?: Promise<(string | webcrypto.CryptoKey)[]>
  readonly #beforeRename?: SecretStoreOptions['beforeRename']

  private constructor(dir: string, recipients: string[], identities: LoadedIdentity[], beforeRename?: SecretStoreOptions['beforeRename']) {
    this.dir = dir
    this.recipients = recipients
    this.#identities = identities
    this.#beforeRename = beforeRename
  }

  static async open(opts: SecretStoreOptions): Promise<SecretStore> {
    const env = opts.env ?? process.env
    const identities: LoadedIdentity[] = []
    if (opts.identityFiles && opts.identityFiles.length > 0) {
      for (const f of opts.identityFiles) identities.push(...(await readIdentityFile(f)))
    } else {
      // a key held by a CI variable (PGI_AGE_SECRET_KEY) comes before the local identity file,
      // which is then neither read nor created: a runner writes no key to its disk
      const fromEnv = await environmentIdentities(env)
      if (fromEnv) identities.push(...fromEnv)
      else identities.push(...(await readIdentityFile((await localIdentity(env)).identityFile)))
    }
    const all = new Set<string>()
    for (const r of opts.recipients) {
      const k = r.trim()
      checkRecipient(k)
      all.add(k)
    }
    for (const id of identities) all.add(id.recipient)
    return new SecretStore(opts.dir, [...all].sort(), identities, opts.beforeRename)
  }

  /** The public keys of the identities this store decrypts with. */
  get ownRecipients(): string[] {
    return [...new Set(this.#identities.map((i) => i.recipient))]
  }

  /** The file that holds `key`. */
  fileFor(key: string): string {
    validateSecretKey(key)
    return join(this.dir, ...key.split('/')) + '.age'
  }

  async get(key: string): Promise<Secret> {
    const file = this.fileFor(key)
    let data: Buffer
    try {
      data = await readFile(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new UserError(ErrorCode.SECRET_MISSING, `secret "${key}" is not in the secret store`, {
          where: {file},
          details: {key, store: this.dir},
          suggestions: secretMissingSuggestions(key),
        })
      }
      throw err
    }
    return new Secret(await this.#decrypt(data, key, file))
  }

  async tryGet(key: string): Promise<Secret | undefined> {
    try {
      return await this.get(key)
    } catch (err) {
      if (err instanceof UserError && err.code === ErrorCode.SECRET_MISSING) return undefined
      throw err
    }
  }

  async has(key: string): Promise<boolean> {
    try {
      return (await stat(this.fileFor(key))).isFile()
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw err
    }
  }

  /** Encrypts `value` to every recipient and writes it atomically (temp file + fsync + rename), mode 0600. */
  async put(key: string, value: Secret): Promise<void> {
    if (!(value instanceof Secret)) throw new BugError('SecretStore.put takes a Secret')
    const file = this.fileFor(key)
    const e = new Encrypter()
    for (const r of this.recipients) e.addRecipient(r)
    const armored = armor.encode(await e.encrypt(value.reveal()))
    await this.#ensureDir(dirname(file))
    await writeFileAtomic(file, armored, {mode: 0o600, beforeRename: async (tmp) => this.#beforeRename?.(tmp, key)})
  }

  /** Removes `key`; true when it existed. */
  async delete(key: string): Promise<boolean> {
    const file = this.fileFor(key)
    try {
      await unlink(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw err
    }
    await syncDir(dirname(file))
    // Drop folders left empty, up to (not including) the store root.
    let d = dirname(file)
    while (d.startsWith(this.dir + sep) && d !== this.dir) {
      try {
        await rmdir(d)
      } catch {
        break
      }
      d = dirname(d)
    }
    return true
  }

  /** Every key in the store (sorted), or those starting with `prefix`. */
  async list(prefix?: string): Promise<string[]> {
    const keys: string[] = []
    const walk = async (dir: string, rel: string[]): Promise<void> => {
      let entries
      try {
        entries = await readdir(dir, {withFileTypes: true})
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
        throw err
      }
      for (const ent of entries) {
        if (ent.name.startsWith('.')) continue // temp files, .git, editor files
        if (ent.isDirectory()) await walk(join(dir, ent.name), [...rel, ent.name])
        else if (ent.isFile() && ent.name.endsWith('.age')) {
          const key = [...rel, ent.name.slice(0, -'.age'.length)].join('/')
          if (isValidKey(key)) keys.push(key)
        }
      }
    }
    // Start from the deepest folder the prefix names ("establishments/0130040Y/pending/" → that
    // folder): a fleet run lists one establishment's keys ~200 times, not the whole store each time.
    const folder = (prefix ?? '').split('/').slice(0, -1)
    const safe = folder.every((seg) => seg !== '' && seg !== '.' && seg !== '..')
    if (safe && folder.length > 0) await walk(join(this.dir, ...folder), folder)
    else await walk(this.dir, [])
    keys.sort()
    return prefix === undefined ? keys : keys.filter((k) => k.startsWith(prefix))
  }

  /**
   * Re-encrypts every file (or those under `prefix`) to the current recipients, e.g. after a
   * technician joined or left the inventory's `recipients`. Files this identity cannot read are
   * reported in `failed` and left untouched.
   */
  async reencrypt(prefix?: string): Promise<ReencryptResult> {
    const result: ReencryptResult = {reencrypted: [], failed: [], recipients: this.recipients.length}
    const keys = await this.list(prefix)
    // A few files at a time: each is a decrypt + encrypt (WebCrypto, off the main thread) + fsyncs.
    const settled = await settleAll(keys, () => 'store', async (key) => this.put(key, await this.get(key)), {max: 4})
    for (const r of settled) {
      if (r.ok) result.reencrypted.push(r.item)
      else if (r.error instanceof UserError) result.failed.push({key: r.item, code: r.error.code, message: r.error.message})
      else throw r.error
    }
    return result
  }

  async #decrypt(data: Buffer, key: string, file: string): Promise<string> {
    const d = new Decrypter()
    this.#decryptKeys ??= Promise.all(this.#identities.map((id) => toDecryptKey(id.identity)))
    for (const k of await this.#decryptKeys) d.addIdentity(k)
    let bytes: Uint8Array
    try {
      const text = data.subarray(0, ARMOR_HEADER.length).toString('latin1')
      bytes = text === ARMOR_HEADER ? armor.decode(data.toString('utf8')) : new Uint8Array(data)
    } catch (err) {
      throw new UserError(ErrorCode.SECRET_DECRYPT, `secret "${key}" is not a valid age file: ${(err as Error).message}`, {where: {file}, cause: err})
    }
    try {
      return await d.decrypt(bytes, 'text')
    } catch (err) {
      const msg = (err as Error).message
      const notForUs = /no identity matched/i.test(msg)
      throw new UserError(
        ErrorCode.SECRET_DECRYPT,
        notForUs ? `secret "${key}" is not encrypted to your age key` : `secret "${key}" could not be decrypted: ${msg}`,
        {
          where: {file},
          details: {key, yourRecipients: this.ownRecipients},
          suggestions: notForUs
            ? [
                `Add your public key (${this.ownRecipients.join(', ')}) to the inventory's recipients, then ask someone who can read the store to run \`pgi credentials reencrypt\`.`,
                'Or decrypt with the right identity: set PGI_AGE_IDENTITY to your age key file.',
              ]
            : ['The file may be damaged: restore it from git (the store can be kept in git) or regenerate the secret.'],
          cause: err,
        },
      )
    }
  }

  async #ensureDir(dir: string): Promise<void> {
    // Create each missing level with mode 0700 (mkdir's mode is filtered by the umask; chmod is not).
    const missing: string[] = []
    let d = dir
    for (;;) {
      try {
        await readdir(d)
        break
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        missing.push(d)
        const up = dirname(d)
        if (up === d) break
        d = up
      }
    }
    await mkdir(dir, {recursive: true, mode: 0o700})
    for (const m of missing) await chmod(m, 0o700)
  }
}

const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex')

/**
 * An X25519 identity as a non-extractable WebCrypto key, imported once: age-encryption accepts a
 * CryptoKey and otherwise re-imports the text key for every stanza of every file it decrypts
 * (about 3× slower on a store of thousands of files). Other identity kinds, or a runtime without
 * X25519 in WebCrypto, keep the text form.
 */
async function toDecryptKey(identity: Secret): Promise<string | webcrypto.CryptoKey> {
  const text = identity.reveal()
  if (!text.startsWith('AGE-SECRET-KEY-1')) return text
  try {
    const raw = bech32.fromWords(bech32.decode(text as `${string}1${string}`, 200).words)
    if (raw.length !== 32) return text
    return await webcrypto.subtle.importKey('pkcs8', Buffer.concat([X25519_PKCS8_PREFIX, raw]), {name: 'X25519'}, false, ['deriveBits'])
  } catch {
    return text
  }
}

function isValidKey(key: string): boolean {
  try {
    validateSecretKey(key)
    return true
  } catch {
    return false
  }
}

function checkRecipient(r: string): void {
  try {
    new Encrypter().addRecipient(r)
  } catch (err) {
    throw new UserError(ErrorCode.SECRET_DECRYPT, `invalid age recipient "${r}": ${(err as Error).message}`, {
      suggestions: ['Recipients are age public keys starting with "age1" (from `age-keygen -y KEYFILE`).'],
    })
  }
}

function secretMissingSuggestions(key: string): string[] {
  const m = /^establishments\/([^/]+)\//.exec(key)
  if (m) return [`Run \`pgi deploy ${m[1]}\`: it generates the establishment's secrets.`]
  if (key.startsWith('hypervisors/')) return ['Store the hypervisor API token secret in the store, or reference an environment variable in the inventory (token.secret: {env: NAME}).']
  return ['Check --secrets-dir / PGI_SECRETS_DIR points at the right store.']
}

/** Reads a secret reference from the inventory: an environment variable or a store key. */
export async function resolveSecretRef(ref: SecretRef, store: SecretStore | undefined, env: NodeJS.ProcessEnv = process.env): Promise<Secret> {
  if ('env' in ref) {
    const v = env[ref.env]
    if (v === undefined || v === '') {
      throw new UserError(ErrorCode.SECRET_MISSING, `environment variable ${ref.env} is not set`, {
        details: {variable: ref.env},
        suggestions: [`Export ${ref.env} with the secret (e.g. from your CI's secret variables), or store it in the secret store and reference it as {store: KEY}.`],
      })
    }
    return new Secret(v)
  }
  if ('store' in ref) {
    if (!store) {
      throw new UserError(ErrorCode.SECRET_MISSING, `secret "${ref.store}" needs the secret store, which is not open here`, {
        suggestions: ['Pass --secrets-dir (or set PGI_SECRETS_DIR).'],
      })
    }
    return store.get(ref.store)
  }
  throw new BugError(`unknown secret reference ${JSON.stringify(ref)}`)
}

/**
 * Unambiguous alphabet: no 0/O/o, 1/l/I. Letters and digits only, so a password survives any
 * quoting (shell, libpq connection strings, YAML) and can be read aloud or typed from paper.
 */
export const PASSWORD_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789'
const BITS_PER_CHAR = Math.log2(PASSWORD_ALPHABET.length)
/** Shortest length giving at least 128 bits of entropy (23 characters with this alphabet). */
export const MIN_PASSWORD_LENGTH = Math.ceil(128 / BITS_PER_CHAR)

/** A random password from the CSPRNG (node:crypto randomInt, unbiased); default 24 characters (≈139 bits). */
export function generatePassword(length = 24): Secret {
  if (!Number.isInteger(length) || length < MIN_PASSWORD_LENGTH || length > 256) {
    throw new BugError(`generatePassword: length must be an integer from ${MIN_PASSWORD_LENGTH} (128 bits) to 256, got ${length}`)
  }
  let s = ''
  for (let i = 0; i < length; i++) s += PASSWORD_ALPHABET[randomInt(PASSWORD_ALPHABET.length)]
  return new Secret(s)
}
