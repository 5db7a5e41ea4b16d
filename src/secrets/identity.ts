import {randomBytes} from 'node:crypto'
import {access, chmod, link, mkdir, unlink, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {generateIdentity, identityToRecipient} from 'age-encryption'

import {readRegularFile} from '../bounded-read.js'
import {ErrorCode, UserError} from '../errors.js'
import {stateDir} from '../paths.js'
import {Secret} from '../secret.js'

/**
 * The local age identity: the private key this machine uses to read the secret store.
 * `PGI_AGE_IDENTITY` names its file; otherwise `<stateDir>/age-identity.txt`. When the file does
 * not exist it is created (mode 0600, in the format `age-keygen` writes), so a technician's first
 * run just works; they then add the printed public key to the inventory's `recipients`.
 */
export interface LocalIdentity {
  identityFile: string
  /** The public key ("age1…") matching the identity. */
  recipient: string
}

/** One identity read from a file: the private key (as a Secret) and its public recipient. */
export interface LoadedIdentity {
  file: string
  identity: Secret
  recipient: string
}

export function localIdentityPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGI_AGE_IDENTITY && env.PGI_AGE_IDENTITY !== '' ? env.PGI_AGE_IDENTITY : join(stateDir(env), 'age-identity.txt')
}

export async function localIdentity(env: NodeJS.ProcessEnv = process.env): Promise<LocalIdentity> {
  const identityFile = localIdentityPath(env)
  if (!(await exists(identityFile))) await createIdentityFile(identityFile)
  const [first] = await readIdentityFile(identityFile)
  return {identityFile, recipient: first.recipient}
}

/**
 * Writes a new X25519 identity to `file` (mode 0600) unless the file already exists. Concurrent
 * callers are safe: the key is written to a private temp file and hard-linked into place, which
 * fails if another process won the race (its key is then kept).
 */
export async function createIdentityFile(file: string): Promise<{created: boolean}> {
  await mkdir(dirname(file), {recursive: true, mode: 0o700})
  const identity = await generateIdentity()
  const recipient = await identityToRecipient(identity)
  const text = `# created: ${new Date().toISOString()}\n# public key: ${recipient}\n${identity}\n`
  const tmp = join(dirname(file), `.age-identity.${process.pid}.${randomBytes(6).toString('hex')}.tmp`)
  await writeFile(tmp, text, {mode: 0o600, flag: 'wx'})
  try {
    await chmod(tmp, 0o600)
    await link(tmp, file)
    return {created: true}
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return {created: false}
    throw err
  } finally {
    await unlink(tmp).catch(() => undefined)
  }
}

/** An identity file holds a few keys (~75 bytes each, post-quantum ones ~2 KiB). */
const MAX_IDENTITY_FILE_BYTES = 1024 * 1024

/** Reads every age identity (`AGE-SECRET-KEY-…` lines) in a file, as `age -i` does. */
export async function readIdentityFile(file: string): Promise<LoadedIdentity[]> {
  // a regular file, bounded: a path to a FIFO or /dev/zero must not hang pgi or fill its memory
  const r = await readRegularFile(file, MAX_IDENTITY_FILE_BYTES, 'an age identity file')
  if (!r.ok) {
    throw new UserError(ErrorCode.SECRET_DECRYPT, r.problem.kind === 'missing' ? 'age identity file not found' : `the age identity file ${r.problem.message}`, {
      where: {file},
      suggestions: ['Check the path (--identity, PGI_AGE_IDENTITY); create a key with `age-keygen -o FILE` if you have none.'],
    })
  }
  return parseIdentities(r.data.toString('utf8'), {file})
}

/**
 * The CI variable that holds the age identity itself (the text `age-keygen` writes, or just its
 * `AGE-SECRET-KEY-1…` line), for runners where the key comes from a masked variable and must not
 * be written to a file. `PGI_AGE_IDENTITY` keeps its meaning: the path of an identity file.
 */
export const IDENTITY_VARIABLE = 'PGI_AGE_SECRET_KEY'

/** Identities already taken out of an environment (the variable is removed from process.env once read). */
const fromEnvironment = new WeakMap<NodeJS.ProcessEnv, Promise<LoadedIdentity[]>>()

/**
 * The identities held by `PGI_AGE_SECRET_KEY`, if set; undefined otherwise. The key is kept in
 * memory only (a Secret: never printed, logged or serialised), and when `env` is this process's
 * environment the variable is deleted from it, so no program pgi starts (local tools, the lab's
 * daemon) inherits the key. Errors name the variable and a line number, never the text.
 */
export async function environmentIdentities(env: NodeJS.ProcessEnv = process.env): Promise<LoadedIdentity[] | undefined> {
  const cached = fromEnvironment.get(env)
  if (cached) return cached
  const text = env[IDENTITY_VARIABLE]
  if (text === undefined || text.trim() === '') return undefined
  if (env === process.env) delete process.env[IDENTITY_VARIABLE]
  const ids = parseIdentities(text, {variable: IDENTITY_VARIABLE})
  fromEnvironment.set(env, ids)
  ids.catch(() => fromEnvironment.delete(env))
  return ids
}

/** Every `AGE-SECRET-KEY-…` line of an identity text; comments and blank lines skipped. */
async function parseIdentities(text: string, source: {file: string} | {variable: string}): Promise<LoadedIdentity[]> {
  const label = 'file' in source ? source.file : `$${source.variable}`
  const whereAt = (line?: number) => ('file' in source ? {file: source.file, ...(line ? {line} : {})} : {variable: source.variable, ...(line ? {line} : {})})
  const what = 'file' in source ? 'an age identity file' : `$${source.variable}`
  const out: LoadedIdentity[] = []
  let lineNo = 0
  // CI variables are often pasted with Windows line ends or as one line with literal "\n"
  for (const raw of text.replace(/\\n/g, '\n').split(/\r?\n/)) {
    lineNo++
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    if (!line.startsWith('AGE-SECRET-KEY-')) {
      throw new UserError(ErrorCode.SECRET_DECRYPT, `not ${what === 'an age identity file' ? what : 'an age identity'} (line ${lineNo} of ${label} is not an AGE-SECRET-KEY-… key)`, {
        where: whereAt(lineNo),
        suggestions: ['file' in source ? 'Give the file written by `age-keygen` (it holds a line starting with AGE-SECRET-KEY-1).' : `Put the AGE-SECRET-KEY-1… line written by \`age-keygen\` in ${IDENTITY_VARIABLE} (a path goes in PGI_AGE_IDENTITY).`],
      })
    }
    let recipient: string
    try {
      recipient = await identityToRecipient(line)
    } catch {
      // the library's message may quote the key: say only where it is
      throw new UserError(ErrorCode.SECRET_DECRYPT, `invalid age identity on line ${lineNo} of ${label}`, {where: whereAt(lineNo)})
    }
    out.push({file: label, identity: new Secret(line), recipient})
  }
  if (out.length === 0) {
    throw new UserError(ErrorCode.SECRET_DECRYPT, `no age identity in ${label}`, {
      where: whereAt(),
      suggestions: ['Create one with `age-keygen -o FILE`, or give the file written by age-keygen.'],
    })
  }
  return out
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file)
    return true
  } catch {
    return false
  }
}
