/**
 * Deploy's use of the credentials area: secrets generated into the secret store (CSPRNG, age at
 * rest), applied in the guest through the agent's stdin (`applyInGuest`), the VM's SSH host keys
 * recorded for the handoff, and the AMI handoff file written with `issueHandoff`.
 */
import {access} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {HANDOFF_SUFFIX, issueHandoff, recordHostKeyFingerprints, type HandoffConnection} from '../credentials/handoff.js'
import {applyInGuest, fetchHostKeyFingerprints} from '../credentials/rotate.js'
import {ensureEstablishmentSecrets} from '../credentials/secrets.js'
import type {Establishment} from '../inventory/types.js'
import type {Io} from '../io.js'
import type {PveApi} from '../proxmox/types.js'
import type {SecretStore} from '../secrets/store.js'
import type {DeployCredentials} from './run.js'

export interface StoreCredentialsOptions {
  store: SecretStore
  /** Folder of the handoff files. */
  handoffDir: string
  io: Io
  /** How the AMI reaches the VM when it is not the inventory address (a lab's forwarded ports). */
  connection?: (est: Establishment) => Promise<HandoffConnection | undefined> | HandoffConnection | undefined
}

export function storeCredentials(opts: StoreCredentialsOptions): DeployCredentials {
  const dir = resolve(opts.handoffDir)
  const path = (est: Establishment) => join(dir, `${est.uai}${HANDOFF_SUFFIX}`)
  return {
    async configure(api: PveApi, est: Establishment): Promise<string[]> {
      const {secrets, generated} = await ensureEstablishmentSecrets(opts.store, est.uai)
      if (generated.length > 0) opts.io.debug(`${est.uai}: generated ${generated.join(', ')} into the secret store`)
      // up to 12 minutes: on a first boot pgi-configure waits for cloud-init's first stage (up to
      // 10 minutes) before it sets the AMI's password, then for sshd (see the image's pgi-configure)
      const changed = await applyInGuest(api, est, secrets, {timeoutMs: 900_000, io: opts.io})
      try {
        const fps = await fetchHostKeyFingerprints(api, est.node, est.vmid)
        if (fps.length > 0) await recordHostKeyFingerprints(opts.store, est.uai, fps)
      } catch (err) {
        opts.io.warn(`${est.uai}: could not read the VM's SSH host keys (the handoff will not list them): ${(err as Error).message}`)
      }
      return changed
    },
    handoffPath: path,
    async handoffExists(est: Establishment): Promise<boolean> {
      try {
        await access(path(est))
        return true
      } catch {
        return false
      }
    },
    async writeHandoff(est: Establishment): Promise<string> {
      const connection = await opts.connection?.(est)
      const r = await issueHandoff(est, {store: opts.store, outDir: dir, connection, io: opts.io})
      return r.file
    },
  }
}
