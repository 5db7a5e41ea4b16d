/**
 * An establishment's credentials as deploy and rollout keep them: secrets generated into the secret
 * store (CSPRNG, age at rest), applied in the guest through the agent's stdin (`applyInGuest`), the
 * VM's SSH host keys and Tryton series recorded for the handoff, and the AMI handoff file written
 * with `issueHandoff` — by deploy, and by a rollout whose new version changed what the handoff says
 * (a major upgrade: the desktop client of the new Tryton series).
 *
 * A handoff is written only when it is missing or when what it says changed, and stays where it
 * was written: each write is recorded in `<journal dir>/handoffs/<UAI>.json` (the file, a digest
 * of what the handoff says apart from the secrets, when). A later deploy without --handoff-dir
 * finds it there; one whose VM is up to date leaves it alone. A handoff is stale when one of the
 * establishment's secrets or host keys in the store is newer than the file (rotated, regenerated),
 * or when the rest of what it says differs (address, ports, AMI, key it is encrypted to).
 */
import {createHash} from 'node:crypto'
import {mkdir, readFile, stat} from 'node:fs/promises'
import {dirname, join, resolve} from 'node:path'

import {HANDOFF_SUFFIX, issueHandoff, readHandoffDatabases, readTrytonSeries, recordHostKeyFingerprints, recordTrytonSeries, refreshTlsFingerprint, type HandoffConnection, type HandoffDatabase} from './handoff.js'
import {applyInGuest, fetchHostKeyFingerprints, fetchTrytonSeries} from './guest-config.js'
import {ESTABLISHMENT_SECRETS, establishmentSecretKey, ensureEstablishmentSecrets, hostKeysKey, tlsFingerprintKey, trytonSeriesKey} from './secrets.js'
import type {Establishment} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi} from '../proxmox/types.js'
import {writeFileAtomic} from '../secrets/atomic.js'
import type {SecretStore} from '../secrets/store.js'

/** What deploy and rollout need from an establishment's credentials (made by `storeCredentials`). */
export interface EstablishmentCredentials {
  /**
   * Generates the establishment's missing secrets (secret store) and applies them in the guest
   * through the agent's stdin; records the VM's SSH host keys for the handoff. Returns what changed.
   */
  configure(api: PveApi, est: Establishment): Promise<string[]>
  /** Where the handoff file of `est` is (or would be). */
  handoffPath(est: Establishment): string
  /**
   * Writes the AMI's handoff file (when missing or out of date); returns its path. `databases`: the
   * Tryton databases the VM has now (read from it), which the handoff lists.
   */
  writeHandoff(est: Establishment, facts?: {databases?: HandoffDatabase[]}): Promise<string>
  handoffExists(est: Establishment): Promise<boolean>
  /**
   * After an update: records the Tryton series the VM runs now and, when it changed (a major
   * upgrade: 6.0 -> 7.0), writes the AMI a new handoff naming the new desktop client; returns its
   * path, or undefined when the handoff did not need to change. Secrets are not touched.
   */
  refreshAfterUpdate(api: PveApi, est: Establishment): Promise<{series?: string; handoff?: string}>
}

/**
 * How a run learns the address a handoff names for an establishment's VM (undefined: the
 * inventory's). The lab's implementation is src/lab/handoff-connection.ts#labConnection: deploy
 * reaches a lab only through this.
 */
export type ConnectionSource = (est: Establishment) => Promise<HandoffConnection | undefined> | HandoffConnection | undefined

export interface StoreCredentialsOptions {
  store: SecretStore
  /** Folder of the handoff files: the one the user named, else the default one. */
  handoffDir: string
  /** True when the user named handoffDir (it then wins over where a handoff was written before). */
  explicitDir?: boolean
  /** Where each handoff's record is kept (default: none kept, every handoff goes to handoffDir). */
  recordDir?: string
  io: Io
  /** How the AMI reaches the VM when it is not the inventory address (a lab's forwarded ports). */
  connection?: ConnectionSource
}

/** What deploy remembers of the last handoff it wrote for an establishment (no secret). */
interface HandoffRecord {
  file: string
  /** sha256 of what the handoff says apart from the secrets and host keys (see `inputsDigest`). */
  inputs: string
  /** sha256 of the databases it lists (absent: written without a list). */
  databases?: string
  writtenAt: string
}

function databasesDigest(dbs: readonly HandoffDatabase[]): string {
  return createHash('sha256').update(JSON.stringify(dbs.map((d) => [d.name, d.company]))).digest('hex')
}

/** A digest of everything the handoff says that is not in the secret store. */
function inputsDigest(est: Establishment, connection: HandoffConnection | undefined): string {
  const said = {
    uai: est.uai,
    name: est.name,
    academie: est.academie,
    ami: {name: est.ami.name, login: est.ami.login, recipient: est.ami.ageRecipient?.trim()},
    address: est.network.address,
    connection: connection ?? null,
  }
  return createHash('sha256').update(JSON.stringify(said)).digest('hex')
}

async function mtimeMs(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).mtimeMs
  } catch {
    return undefined
  }
}

export function storeCredentials(opts: StoreCredentialsOptions): EstablishmentCredentials {
  const dir = resolve(opts.handoffDir)
  const inDir = (est: Establishment) => join(dir, `${est.uai}${HANDOFF_SUFFIX}`)
  const recordFile = (uai: string) => join(opts.recordDir!, `${uai}.json`)
  const records = new Map<string, HandoffRecord | undefined>()

  async function record(uai: string): Promise<HandoffRecord | undefined> {
    if (!opts.recordDir) return undefined
    if (!records.has(uai)) {
      let r: HandoffRecord | undefined
      try {
        const j = JSON.parse(await readFile(recordFile(uai), 'utf8')) as Partial<HandoffRecord>
        if (typeof j.file === 'string' && typeof j.inputs === 'string') r = {file: j.file, inputs: j.inputs, ...(typeof j.databases === 'string' ? {databases: j.databases} : {}), writtenAt: String(j.writtenAt ?? '')}
      } catch {
        // none yet, or unreadable: as if none
      }
      records.set(uai, r)
    }
    return records.get(uai)
  }

  /** The handoff's file: in the folder named, else where it was written before, else the default folder. */
  async function target(est: Establishment): Promise<string> {
    if (opts.explicitDir) return inDir(est)
    return (await record(est.uai))?.file ?? inDir(est)
  }

  /** Whether the store holds a secret, host key or Tryton series of `est` newer than `writtenMs`. */
  async function storeNewer(est: Establishment, writtenMs: number): Promise<boolean> {
    const keys = [...ESTABLISHMENT_SECRETS.map((n) => establishmentSecretKey(est.uai, n)), hostKeysKey(est.uai), trytonSeriesKey(est.uai), tlsFingerprintKey(est.uai)]
    for (const k of keys) {
      const m = await mtimeMs(opts.store.fileFor(k))
      if (m !== undefined && m > writtenMs) return true
    }
    return false
  }

  /** Why the handoff of `est` must be (re)written, or undefined when the one there is current. */
  async function staleness(est: Establishment, file: string, connection: HandoffConnection | undefined, databases?: readonly HandoffDatabase[]): Promise<string | undefined> {
    const written = await mtimeMs(file)
    if (written === undefined) return 'missing'
    if (await storeNewer(est, written)) return 'secrets, host keys or Tryton series changed'
    const r = await record(est.uai)
    // a handoff pgi did not record (an older pgi, `pgi credentials handoff`): its inputs are unknown, kept as is
    if (r && r.file === file && r.inputs !== inputsDigest(est, connection)) return 'address, ports or AMI changed'
    // the databases, when the VM's were read: a handoff that lists others (or none) is rewritten
    if (databases && r?.file === file && r.databases !== databasesDigest(databases)) return 'the databases on the server changed'
    if (databases && !r) return 'it does not list the databases'
    return undefined
  }

  const resolvedPath = new Map<string, string>()
  const self: EstablishmentCredentials = {
    async configure(api: PveApi, est: Establishment): Promise<string[]> {
      const {secrets, generated} = await ensureEstablishmentSecrets(opts.store, est.uai)
      if (generated.length > 0) opts.io.debug(`${est.uai}: generated ${generated.join(', ')} into the secret store`)
      // up to 12 minutes: on a first boot pgi-configure waits for cloud-init's first stage (up to
      // 10 minutes) before it sets the AMI's password, then for sshd (see the image's pgi-configure)
      const changed = await applyInGuest(api, est, secrets, {timeoutMs: 900_000, io: opts.io})
      try {
        const fps = await fetchHostKeyFingerprints(api, est.node, est.vmid)
        const had = (await opts.store.tryGet(hostKeysKey(est.uai)))?.reveal()
        // rewritten only when they differ: a newer file means a new handoff
        if (fps.length > 0 && had !== fps.join('\n')) await recordHostKeyFingerprints(opts.store, est.uai, fps)
      } catch (err) {
        opts.io.warn(`${est.uai}: could not read the VM's SSH host keys (the handoff will not list them): ${(err as Error).message}`)
      }
      // the Tryton series (6.0 on the 1.x image line, 7.0 on 2.x): the handoff names its desktop
      // client. Rewritten only when it differs: a newer record means a new handoff
      const series = await fetchTrytonSeries(api, est.node, est.vmid).catch(() => undefined)
      if (series && series !== (await readTrytonSeries(opts.store, est.uai))) await recordTrytonSeries(opts.store, est.uai, series)
      // the HTTPS certificate's fingerprint (pgi-tls): the handoff names it and the teachers' console
      await refreshTlsFingerprint(api, opts.store, est, opts.io)
      return changed
    },
    handoffPath: (est) => resolvedPath.get(est.uai) ?? inDir(est),
    /** True when a handoff saying what is current is there (the caller then leaves it alone). */
    async handoffExists(est: Establishment): Promise<boolean> {
      const file = await target(est)
      resolvedPath.set(est.uai, file)
      let connection: HandoffConnection | undefined
      try {
        connection = (await record(est.uai)) ? await opts.connection?.(est) : undefined
      } catch (err) {
        // how the VM is reached cannot be read now (a lab VM not running): the handoff there is kept
        opts.io.debug(`${est.uai}: ${(err as Error).message}: the handoff ${file} is kept as is`)
        return (await mtimeMs(file)) !== undefined
      }
      const why = await staleness(est, file, connection)
      if (why && why !== 'missing') opts.io.info(`${est.uai}: the handoff ${file} is out of date (${why}): writing a new one`)
      return why === undefined
    },
    /** Writes the handoff when it is missing or out of date; returns its path either way. */
    async writeHandoff(est: Establishment, facts: {databases?: HandoffDatabase[]} = {}): Promise<string> {
      const file = await target(est)
      resolvedPath.set(est.uai, file)
      const connection = await opts.connection?.(est)
      const why = await staleness(est, file, connection, facts.databases)
      if (why === undefined) {
        opts.io.debug(`${est.uai}: the handoff ${file} is current: left as is`)
        return file
      }
      if (why !== 'missing') opts.io.info(`${est.uai}: the handoff ${file} is out of date (${why}): writing a new one`)
      const r = await issueHandoff(est, {store: opts.store, outDir: dirname(file), connection, io: opts.io, ...(facts.databases ? {databases: facts.databases} : {})})
      if (opts.recordDir) {
        const rec: HandoffRecord = {file: r.file, inputs: inputsDigest(est, connection), ...(facts.databases ? {databases: databasesDigest(facts.databases)} : {}), writtenAt: r.issuedAt}
        await mkdir(opts.recordDir, {recursive: true, mode: 0o700})
        await writeFileAtomic(recordFile(est.uai), JSON.stringify(rec, null, 2) + '\n', {mode: 0o600})
        records.set(est.uai, rec)
      }
      return r.file
    },
    async refreshAfterUpdate(api: PveApi, est: Establishment): Promise<{series?: string; handoff?: string}> {
      const series = await fetchTrytonSeries(api, est.node, est.vmid)
      if (!series || series === (await readTrytonSeries(opts.store, est.uai))) return {series}
      // a newer record makes the handoff stale: writeHandoff then writes it where it lives
      await recordTrytonSeries(opts.store, est.uai, series)
      const databases = await readHandoffDatabases(api, est, opts.io)
      return {series, handoff: await self.writeHandoff(est, databases ? {databases} : {})}
    },
  }
  return self
}
