/**
 * An establishment's secrets in the store (their keys, reading them, generating the missing ones)
 * and the guest contract's fixed logins. In the fleet core because deploy (generates and applies
 * them), credentials (rotates them, writes the handoffs) and rollout (logs in as the Tryton admin
 * to check an updated server) all need them, and siblings do not import each other.
 */
import {ErrorCode, UserError} from '../errors.js'
import type {Secret} from '../secret.js'
import {generatePassword, type SecretStore} from '../secrets/store.js'
import {ESTABLISHMENT_SECRETS, type EstablishmentSecretName} from './secret-names.js'

export {ESTABLISHMENT_SECRETS, type EstablishmentSecretName}

/** Fixed logins of the guest contract. The AMI's login comes from the inventory (`ami.login`). */
export const SQL_ADMIN_LOGIN = 'pgi_admin'
export const TRYTON_ADMIN_LOGIN = 'admin'

export interface EstablishmentSecrets {
  sqlAdmin: Secret
  trytonAdmin: Secret
  amiPassword: Secret
}

const FIELD: Record<EstablishmentSecretName, keyof EstablishmentSecrets> = {
  'sql-admin': 'sqlAdmin',
  'tryton-admin': 'trytonAdmin',
  'ami-password': 'amiPassword',
}

export function establishmentSecretKey(uai: string, name: EstablishmentSecretName, opts: {pending?: boolean} = {}): string {
  return `establishments/${uai}/${opts.pending ? 'pending/' : ''}${name}`
}

/** Store key of the VM's SSH host key fingerprints (not secret, but kept with the rest). */
export function hostKeysKey(uai: string): string {
  return `establishments/${uai}/ssh-host-keys`
}

/**
 * Store key of the Tryton series the VM runs ("6.0", "7.0"), read from the guest at deploy and
 * rotation: the handoff names the desktop client of that series (not secret either).
 */
export function trytonSeriesKey(uai: string): string {
  return `establishments/${uai}/tryton-series`
}

/**
 * Store key of the SHA-256 fingerprint of the certificate the VM serves over HTTPS (its pgi-tls
 * record, /run/pgi/tls.json), read at deploy and rotation: the handoff names it beside the SSH host
 * keys, for the AMI to check before accepting the certificate (not secret either).
 */
export function tlsFingerprintKey(uai: string): string {
  return `establishments/${uai}/tls-sha256`
}

export function isEstablishmentSecretName(s: string): s is EstablishmentSecretName {
  return (ESTABLISHMENT_SECRETS as readonly string[]).includes(s)
}

/** Reads the three secrets; SECRET_MISSING names the first missing key and suggests `pgi deploy`. */
export async function readEstablishmentSecrets(store: SecretStore, uai: string): Promise<EstablishmentSecrets> {
  const out: Partial<EstablishmentSecrets> = {}
  for (const name of ESTABLISHMENT_SECRETS) {
    const key = establishmentSecretKey(uai, name)
    const v = await store.tryGet(key)
    if (!v) {
      throw new UserError(ErrorCode.SECRET_MISSING, `secret "${key}" is not in the secret store: establishment ${uai} has not been deployed yet (or the store is not the one deploy used)`, {
        where: {uai},
        details: {key, store: store.dir},
        suggestions: [`Run \`pgi deploy ${uai}\`: it generates the establishment's secrets and sets them in the VM.`, 'Check --secrets-dir / PGI_SECRETS_DIR.'],
      })
    }
    out[FIELD[name]] = v
  }
  return out as EstablishmentSecrets
}

/**
 * Makes sure the three secrets of `uai` exist in the store, generating the missing ones
 * (CSPRNG, ≥128 bits) — deploy calls this before it configures the guest. Existing secrets are
 * never replaced (use rotation for that), so re-running deploy is harmless.
 *
 * Throws ROTATION_PENDING while a rotation of `uai` is unfinished: the guest may already use the
 * pending secrets, and applying the current ones would undo half a rotation. `pgi credentials
 * rotate UAI` finishes it.
 */
export async function ensureEstablishmentSecrets(store: SecretStore, uai: string): Promise<{secrets: EstablishmentSecrets; generated: EstablishmentSecretName[]}> {
  await refuseDuringRotation(store, uai)
  const out: Partial<EstablishmentSecrets> = {}
  const generated: EstablishmentSecretName[] = []
  for (const name of ESTABLISHMENT_SECRETS) {
    const key = establishmentSecretKey(uai, name)
    let v = await store.tryGet(key)
    if (!v) {
      v = generatePassword()
      await store.put(key, v)
      generated.push(name)
    }
    out[FIELD[name]] = v
  }
  return {secrets: out as EstablishmentSecrets, generated}
}

/**
 * The JSON `pgi-configure` reads on stdin (guest contract) for the given secrets. Reveals the
 * secrets: pass the result straight to `agentExec(…, {inputData})`, nowhere else.
 */
export function guestConfigureInput(secrets: Partial<EstablishmentSecrets>, amiLogin: string): string {
  const payload: Record<string, {login: string; password: string}> = {}
  if (secrets.sqlAdmin) payload.sql_admin = {login: SQL_ADMIN_LOGIN, password: secrets.sqlAdmin.reveal()}
  if (secrets.trytonAdmin) payload.tryton_admin = {login: TRYTON_ADMIN_LOGIN, password: secrets.trytonAdmin.reveal()}
  if (secrets.amiPassword) payload.ami = {login: amiLogin, password: secrets.amiPassword.reveal()}
  return JSON.stringify(payload)
}

export function secretField(name: EstablishmentSecretName): keyof EstablishmentSecrets {
  return FIELD[name]
}

/** Throws ROTATION_PENDING when `establishments/<UAI>/pending/*` exist (an interrupted rotation). */
export async function refuseDuringRotation(store: SecretStore, uai: string): Promise<void> {
  const pending = await store.list(`establishments/${uai}/pending/`)
  if (pending.length > 0) {
    throw new UserError(ErrorCode.ROTATION_PENDING, `a rotation of the secrets of ${uai} was interrupted and must be finished first`, {
      where: {uai},
      details: {pending},
      suggestions: [`Run \`pgi credentials rotate ${uai}\`: it finishes the interrupted rotation (and writes the new handoff).`],
    })
  }
}
