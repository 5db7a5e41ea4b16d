import {hostname} from 'node:os'
import {mkdir, open, readFile, unlink} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {stateDir} from '../paths.js'

/**
 * A lock file per establishment on this machine (`<stateDir>/locks/establishment-<UAI>.lock`), so
 * two pgi runs here never change the same establishment's secrets at once (two rotations
 * interleaving could leave the guest and the store with different passwords). A lock left by a
 * process that died on this host is taken over. Written by hand: it is ten lines over O_EXCL, and
 * the lock libraries on npm add retries and stale-time heuristics we do not want here.
 */
export interface LockInfo {
  pid: number
  host: string
  since: string
  what: string
}

export function establishmentLockFile(uai: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(stateDir(env), 'locks', `establishment-${uai}.lock`)
}

export async function acquireLock(file: string, what: string): Promise<() => Promise<void>> {
  await mkdir(dirname(file), {recursive: true, mode: 0o700})
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(file, 'wx', 0o600)
      const info: LockInfo = {pid: process.pid, host: hostname(), since: new Date().toISOString(), what}
      await fh.writeFile(JSON.stringify(info))
      await fh.close()
      return async () => {
        await unlink(file).catch(() => undefined)
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const holder = await readLock(file)
    if (holder && holder.host === hostname() && !alive(holder.pid)) {
      await unlink(file).catch(() => undefined) // stale: its process is gone
      continue
    }
    throw new UserError(ErrorCode.LOCKED, `${what} is being changed by another pgi run${holder ? ` (pid ${holder.pid} on ${holder.host}, since ${holder.since}: ${holder.what})` : ''}`, {
      exitCode: ExitCode.REFUSED,
      details: {lockFile: file, ...(holder ? {holder} : {})},
      suggestions: ['Wait for the other run to finish, then try again.', `If no other pgi run is active, remove ${file}.`],
    })
  }
  throw new UserError(ErrorCode.LOCKED, `could not take the lock ${file}`, {exitCode: ExitCode.REFUSED})
}

export async function withEstablishmentLock<T>(uai: string, what: string, env: NodeJS.ProcessEnv | undefined, fn: () => Promise<T>): Promise<T> {
  const release = await acquireLock(establishmentLockFile(uai, env), what)
  try {
    return await fn()
  } finally {
    await release()
  }
}

async function readLock(file: string): Promise<LockInfo | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as LockInfo
  } catch {
    return undefined
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}
