import {requireRunningVm} from '../fleet/guest.js'
import type {Io} from '../io.js'
import type {Establishment} from '../inventory/types.js'
import type {PveApi} from '../proxmox/types.js'
import {generatePassword, type SecretStore} from '../secrets/store.js'
import {withEstablishmentLock} from '../fleet/locks.js'
import {applyInGuest, fetchHostKeyFingerprints, fetchTrytonSeries} from '../fleet/guest-config.js'
import {issueHandoff, readHandoffDatabases, readTrytonSeries, recordHostKeyFingerprints, recordTrytonSeries, refreshTlsFingerprint, type HandoffConnection, type HandoffIssued} from '../fleet/handoff.js'
import {
  ESTABLISHMENT_SECRETS,
  establishmentSecretKey,
  readEstablishmentSecrets,
  secretField,
  type EstablishmentSecretName,
  type EstablishmentSecrets,
} from '../fleet/secrets.js'


/**
 * Rotation of an establishment's secrets, safe against interruption at any point:
 *
 *   1. new secrets are generated and written to the store as `establishments/<UAI>/pending/<name>`
 *      (encrypted like everything else) — from here a rerun re-applies them instead of making new ones;
 *   2. they are applied in the guest (`pgi-configure`, secrets on stdin only, idempotent);
 *   3. pending → current in the store;
 *   4. the handoff is reissued with the new secrets;
 *   5. the pending copies are deleted.
 *
 * Killed after 1, the guest still has the old secrets and the store both: the rerun applies the
 * pending ones. Killed after 2, the guest has the new ones and the store has them as pending:
 * the rerun applies them again (a no-op) and promotes them. Killed after 3 or 4, the rerun
 * re-applies, promotes (same values) and reissues. No state loses the secret the guest uses.
 */
export interface RotateOptions {
  api: PveApi
  store: SecretStore
  establishment: Establishment
  /** Where the new handoff is written (`<outDir>/<UAI>.handoff.age`). */
  outDir: string
  /** Which secrets to change (default all three). Ignored when a rotation is pending: it is finished first. */
  only?: EstablishmentSecretName[]
  connection?: HandoffConnection
  io?: Io
  /** Guest agent exec timeout (default 120 s: pgi-configure restarts services). */
  timeoutMs?: number
  /** Called after each step (tests use it to interrupt; progress displays use it too). */
  onStep?: (step: RotateStep) => Promise<void> | void
  /** Environment for the local lock file's location (stateDir); default process.env. */
  env?: NodeJS.ProcessEnv
}

export type RotateStep = 'pending-written' | 'guest-applied' | 'promoted' | 'handoff-reissued' | 'pending-cleared'

/** What happened. Never holds a secret. */
export interface RotateResult {
  uai: string
  hypervisor: string
  node: string
  vmid: number
  /** True when an interrupted rotation was found and finished. */
  resumed: boolean
  rotated: EstablishmentSecretName[]
  /** What the guest reported it changed (pgi-configure's `changed`). */
  guestChanged: string[]
  handoff: HandoffIssued
}

export async function pendingSecrets(store: SecretStore, uai: string): Promise<EstablishmentSecretName[]> {
  const out: EstablishmentSecretName[] = []
  for (const name of ESTABLISHMENT_SECRETS) if (await store.has(establishmentSecretKey(uai, name, {pending: true}))) out.push(name)
  return out
}

export async function rotateEstablishmentSecrets(opts: RotateOptions): Promise<RotateResult> {
  return withEstablishmentLock(opts.establishment.uai, 'rotating its secrets', opts.env, () => rotateLocked(opts))
}

async function rotateLocked(opts: RotateOptions): Promise<RotateResult> {
  const {api, store, establishment: est, io} = opts
  const step = async (s: RotateStep) => {
    io?.debug(`rotate ${est.uai}: ${s}`)
    await opts.onStep?.(s)
  }

  // The current secrets must exist: rotating an establishment that was never deployed makes no sense.
  const current = await readEstablishmentSecrets(store, est.uai)

  // 1. pending secrets: reuse those of an interrupted run, or generate new ones — but only once
  // the VM is known to be up, so an unreachable hypervisor or a stopped VM leaves nothing pending.
  let names = await pendingSecrets(store, est.uai)
  const resumed = names.length > 0
  if (!resumed) await requireRunningVm(api, est, ', so its secrets cannot be changed')
  const fresh: Partial<EstablishmentSecrets> = {}
  if (resumed) {
    io?.info(`${est.uai}: finishing an interrupted rotation (${names.join(', ')})`)
    for (const n of names) fresh[secretField(n)] = await store.get(establishmentSecretKey(est.uai, n, {pending: true}))
  } else {
    names = opts.only && opts.only.length > 0 ? ESTABLISHMENT_SECRETS.filter((n) => opts.only!.includes(n)) : [...ESTABLISHMENT_SECRETS]
    for (const n of names) {
      const v = generatePassword()
      await store.put(establishmentSecretKey(est.uai, n, {pending: true}), v)
      fresh[secretField(n)] = v
    }
  }
  await step('pending-written')

  // 2. apply in the guest (secrets on stdin only).
  const guestChanged = await applyInGuest(api, est, fresh, {timeoutMs: opts.timeoutMs ?? 120_000, io})
  await step('guest-applied')

  // 3. promote pending → current.
  for (const n of names) await store.put(establishmentSecretKey(est.uai, n), fresh[secretField(n)]!)
  await step('promoted')

  // Best effort: record the host key fingerprints for the handoff (they are not secret).
  const fps = await fetchHostKeyFingerprints(api, est.node, est.vmid).catch((err: unknown) => {
    io?.debug(`${est.uai}: could not read the SSH host keys through the guest agent: ${(err as Error).message}`)
    return [] as string[]
  })
  if (fps.length > 0) await recordHostKeyFingerprints(store, est.uai, fps)
  // and the Tryton series, which names the handoff's desktop client
  const series = await fetchTrytonSeries(api, est.node, est.vmid).catch(() => undefined)
  if (series && series !== (await readTrytonSeries(store, est.uai))) await recordTrytonSeries(store, est.uai, series)
  // and the HTTPS certificate's fingerprint, which names the teachers' console
  await refreshTlsFingerprint(api, store, est, io)

  // 4. reissue the handoff with the new secrets.
  const secrets: EstablishmentSecrets = {...current, ...fresh}
  // with the databases the VM has now (best effort: without the list when it cannot be read)
  const databases = await readHandoffDatabases(api, est, io)
  const handoff = await issueHandoff(est, {store, outDir: opts.outDir, connection: opts.connection, secrets, io, ...(databases ? {databases} : {})})
  await step('handoff-reissued')

  // 5. clear the pending copies.
  for (const n of names) await store.delete(establishmentSecretKey(est.uai, n, {pending: true}))
  await step('pending-cleared')

  io?.info(`${est.uai}: secrets rotated (${names.join(', ')}), new handoff written`, {file: handoff.file})
  return {uai: est.uai, hypervisor: api.hypervisor, node: est.node, vmid: est.vmid, resumed, rotated: names, guestChanged, handoff}
}

