/**
 * The credentials use cases behind `pgi credentials …`: each takes what the command's fleet opened
 * (src/fleet/open.ts: the selected establishments, the secret store, the hypervisors), works
 * establishment by establishment, and returns plain results that never hold a secret (except `openHandoffForOwner`, whose job is to show them to their owner).
 */
import {stat} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {asPgiError, ErrorCode, type PgiError, UserError} from '../errors.js'
import type {Io} from '../io.js'
import type {Establishment} from '../inventory/types.js'
import {settleAll} from '../fleet/pool.js'
import type {Hypervisors} from '../hypervisors.js'
import type {SecretStore} from '../secrets/store.js'
import {HANDOFF_SUFFIX, handoffToJson, issueHandoff, openHandoff, readHandoffDatabases, type HandoffConnection, type HandoffDatabase, type HandoffIssued, type HandoffJson} from '../fleet/handoff.js'
import {pendingSecrets, rotateEstablishmentSecrets, type RotateResult} from './rotate.js'
import {ESTABLISHMENT_SECRETS, establishmentSecretKey, type EstablishmentSecretName} from '../fleet/secrets.js'

/** How the AMI reaches an establishment's VM when it is not its inventory address (e.g. `labConnection`). */
export type ConnectionOf = (est: Establishment) => HandoffConnection | undefined | Promise<HandoffConnection | undefined>

/** Per-establishment outcome of a fleet-wide credentials command. */
export type Outcome<R> = ({ok: true} & R) | {ok: false; uai: string; error: Record<string, unknown>}

/** The typed error behind a failed outcome (not serialised: `error` is its JSON form). */
export function outcomeError(o: {ok: false}): PgiError | undefined {
  return (o as {[ERROR]?: PgiError})[ERROR]
}

const ERROR = Symbol('pgi.error')

function failed(uai: string, err: unknown): {ok: false; uai: string; error: Record<string, unknown>} {
  const e = asPgiError(err)
  const o = {ok: false as const, uai, error: e.toJSON()}
  Object.defineProperty(o, ERROR, {value: e, enumerable: false})
  return o
}

export interface HandoffRunResult {
  outDir: string
  written: number
  failed: number
  establishments: Outcome<HandoffIssued>[]
}

/**
 * Writes the handoffs of `establishments` into `outDir`. One establishment failing (a missing
 * secret, a bad AMI key) does not stop the others: its error is in the result.
 */
export async function writeHandoffs(opts: {
  establishments: readonly Establishment[]
  store: SecretStore
  outDir: string
  io?: Io
  /** Per-establishment connection overrides (a lab's loopback forwards). */
  connection?: ConnectionOf
  /** How many handoffs are written at once (default 4). */
  parallel?: number
  /** The databases each VM has, read from it (undefined: the letter does not list them). */
  databases?: (est: Establishment) => Promise<HandoffDatabase[] | undefined>
}): Promise<HandoffRunResult> {
  // A few at a time: the work is age encryption (WebCrypto, off the main thread) and fsyncs.
  const settled = await settleAll(
    opts.establishments,
    () => 'handoff',
    async (est) => {
      const databases = await opts.databases?.(est)
      return issueHandoff(est, {store: opts.store, outDir: opts.outDir, connection: await opts.connection?.(est), io: opts.io, ...(databases ? {databases} : {})})
    },
    {max: opts.parallel ?? 4},
  )
  const out: Outcome<HandoffIssued>[] = settled.map((r) => {
    if (r.ok) return {ok: true, ...r.value}
    const o = failed(r.item.uai, r.error)
    if (opts.establishments.length > 1) opts.io?.error(`${r.item.uai}: ${String(o.error.message)}`)
    return o
  })
  return {outDir: opts.outDir, written: out.filter((o) => o.ok).length, failed: out.filter((o) => !o.ok).length, establishments: out}
}

/**
 * Reads each establishment's databases from its VM for its handoff, through the fleet's
 * hypervisors (closed by the fleet). A VM that cannot be asked gives a letter without the list.
 */
export function vmDatabaseReader(hvs: Hypervisors, io: Io): (est: Establishment) => Promise<HandoffDatabase[] | undefined> {
  return async (est) => {
      try {
        return await readHandoffDatabases(await hvs.get(est.hypervisor), est, io)
      } catch (err) {
        io.warn(`${est.uai}: hypervisor ${est.hypervisor} could not be reached (the handoff will not list the databases): ${(err as Error).message}`)
        return undefined
      }
  }
}

export interface RotateRunResult {
  rotated: number
  failed: number
  establishments: Outcome<RotateResult>[]
}

/** Rotates the secrets of each establishment in turn (through its hypervisor's API, from the fleet: closed by the fleet). */
export async function rotateSecrets(opts: {
  hypervisors: Hypervisors
  establishments: readonly Establishment[]
  store: SecretStore
  outDir: string
  only?: EstablishmentSecretName[]
  io: Io
  env?: NodeJS.ProcessEnv
  connection?: ConnectionOf
}): Promise<RotateRunResult> {
  const out: Outcome<RotateResult>[] = []
  for (const est of opts.establishments) {
    try {
      const api = await opts.hypervisors.get(est.hypervisor)
      const r = await rotateEstablishmentSecrets({api, store: opts.store, establishment: est, outDir: opts.outDir, only: opts.only, io: opts.io, env: opts.env, connection: await opts.connection?.(est)})
      out.push({ok: true, ...r})
    } catch (err) {
      const o = failed(est.uai, err)
      if (opts.establishments.length > 1) opts.io.error(`${est.uai}: ${String(o.error.message)}`)
      out.push(o)
    }
  }
  return {rotated: out.filter((o) => o.ok).length, failed: out.filter((o) => !o.ok).length, establishments: out}
}

/**
 * Decrypts a handoff for its owner. This is the one place pgi shows secrets: to the AMI, who
 * holds the key and asked for them.
 */
export async function openHandoffForOwner(file: string, identityFiles: string[]): Promise<{handoff: HandoffJson; text: string}> {
  if (identityFiles.length === 0) {
    throw new UserError(ErrorCode.USAGE, 'no age identity given to open the handoff', {suggestions: ['Pass --identity with your age key file (the one whose public key the Région has).']})
  }
  const {document, text} = await openHandoff(file, identityFiles)
  return {handoff: handoffToJson(document), text}
}

/**
 * When nothing succeeded: the error to raise. With one establishment it is that establishment's
 * own error (its code, place and suggestions); with several, a PARTIAL_FAILURE listing them.
 */
export function allFailedError(what: string, outcomes: {ok: boolean; uai: string}[]): PgiError {
  const failures = outcomes.filter((o): o is {ok: false; uai: string; error: Record<string, unknown>} => !o.ok)
  if (failures.length === 1) return outcomeError(failures[0]) ?? new UserError(ErrorCode.PARTIAL_FAILURE, `${what} failed for ${failures[0].uai}`)
  return new UserError(ErrorCode.PARTIAL_FAILURE, `${what} failed for every establishment (${failures.length})`, {
    details: {establishments: failures.map((f) => ({uai: f.uai, error: f.error}))},
    suggestions: failures.slice(0, 5).map((f) => `${f.uai}: ${String(f.error.message)}`),
  })
}

/** Where an establishment stands, credentials-wise. Read from file names only: no key needed. */
export interface CredentialsOverviewRow {
  uai: string
  name: string
  ami: string
  /** Secrets present in the store (of sql-admin, tryton-admin, ami-password). */
  secrets: EstablishmentSecretName[]
  missing: EstablishmentSecretName[]
  /** Secrets of an unfinished rotation (`pgi credentials rotate UAI` finishes it). */
  pending: EstablishmentSecretName[]
  handoff?: {file: string; written: string}
  /** What to do next, if anything. */
  next?: string
}

export async function credentialsOverview(opts: {establishments: readonly Establishment[]; store: SecretStore; outDir: string}): Promise<CredentialsOverviewRow[]> {
  const rows: CredentialsOverviewRow[] = []
  for (const est of opts.establishments) {
    const secrets: EstablishmentSecretName[] = []
    const missing: EstablishmentSecretName[] = []
    for (const n of ESTABLISHMENT_SECRETS) ((await opts.store.has(establishmentSecretKey(est.uai, n))) ? secrets : missing).push(n)
    const pending = await pendingSecrets(opts.store, est.uai)
    const file = join(resolve(opts.outDir), `${est.uai}${HANDOFF_SUFFIX}`)
    const st = await stat(file).catch(() => undefined)
    const handoff = st ? {file, written: st.mtime.toISOString()} : undefined
    const next =
      pending.length > 0
        ? `pgi credentials rotate ${est.uai}`
        : missing.length > 0
          ? `pgi deploy ${est.uai}`
          : !handoff
            ? `pgi credentials handoff ${est.uai}`
            : undefined
    rows.push({uai: est.uai, name: est.name, ami: est.ami.name, secrets, missing, pending, ...(handoff ? {handoff} : {}), ...(next ? {next} : {})})
  }
  return rows
}
