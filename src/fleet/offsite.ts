/**
 * The VM's side of the off-site copies that deploy and `pgi backup` share (docs/backups.md): each
 * establishment's repository key in the secret store (generated once, CSPRNG) and the settings
 * given to the VM's pgi-offsite over the guest agent's stdin (the key on no command line). Here,
 * in the fleet core, because deploy (which configures a VM at deploy) and backup (which reads the
 * repositories, restores and drills) both use it and may not import each other.
 */
import {ErrorCode, UserError} from '../errors.js'
import {offsiteRepositories} from '../inventory/offsite-rules.js'
import type {OffsiteSettings} from '../inventory/types.js'
import type {Secret} from '../secret.js'
import {generatePassword, type SecretStore} from '../secrets/store.js'
import type {GuestTarget} from './guest.js'

/** Store key of an establishment's repository password (the Région holds it; the VM gets a copy). */
export function offsitePasswordKey(uai: string): string {
  return `establishments/${uai}/offsite-password`
}

/** Where the VM reads its off-site settings (root only, on the data disk; pgi-offsite's docstring). */
export const GUEST_OFFSITE_CONFIG = '/srv/pgi/.pgi/offsite.json'

/** The repository password of `uai`, generated (CSPRNG) and stored on first use; never replaced. */
export async function ensureOffsitePassword(store: SecretStore, uai: string): Promise<{password: Secret; generated: boolean}> {
  const key = offsitePasswordKey(uai)
  const have = await store.tryGet(key)
  if (have) return {password: have, generated: false}
  const password = generatePassword(32)
  await store.put(key, password)
  return {password, generated: true}
}

/** The repository password of `uai`; SECRET_MISSING when it was never generated. */
export async function readOffsitePassword(store: SecretStore, uai: string): Promise<Secret> {
  const key = offsitePasswordKey(uai)
  const v = await store.tryGet(key)
  if (!v) {
    throw new UserError(ErrorCode.SECRET_MISSING, `secret "${key}" is not in the secret store: no off-site repository key was made for ${uai}`, {
      where: {uai},
      details: {key, store: store.dir},
      suggestions: [`Deploy ${uai} with the inventory's offsite: section (pgi deploy ${uai}): it makes the key and gives it to the VM.`, 'Check --secrets-dir / PGI_SECRETS_DIR.'],
    })
  }
  return v
}

/**
 * The JSON the VM's pgi-offsite reads (GUEST_OFFSITE_CONFIG, written 0600 by root). Reveals the
 * password: hand the result straight to the guest agent's file write, nowhere else.
 */
export function guestOffsiteConfig(o: OffsiteSettings, uai: string, password: Secret): string {
  const {vm} = offsiteRepositories(o, uai)
  return JSON.stringify({
    repository: vm,
    password: password.reveal(),
    host: uai,
    ...(o.limitUploadKib !== undefined ? {limit_upload_kib: o.limitUploadKib} : {}),
    ...(o.window !== undefined ? {window: o.window} : {}),
  })
}

/** The VM's tool that pushes (and, with --configure, takes its settings on stdin). */
export const GUEST_OFFSITE = '/usr/local/sbin/pgi-offsite'

/**
 * Gives `uai`'s VM its off-site settings: `pgi-offsite --configure` with the JSON on stdin (over
 * the guest agent: the password on no command line), which checks them and writes
 * GUEST_OFFSITE_CONFIG 0600. Called by deploy once the VM is healthy, with the key
 * of ensureOffsitePassword. Returns the repository as the VM records it (no credentials).
 */
export async function configureGuestOffsite(t: GuestTarget, uai: string, o: OffsiteSettings, password: Secret): Promise<{repository: string}> {
  const r = await t.api.agentExec(t.node, t.vmid, [GUEST_OFFSITE, '--configure'], {inputData: guestOffsiteConfig(o, uai, password), timeoutMs: 120_000, idempotent: true})
  let out: {configured?: boolean; repository?: string; error?: {message?: string}} | undefined
  try {
    out = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as typeof out
  } catch {
    out = undefined
  }
  if (r.exitcode !== 0 || !out?.configured) {
    const why = out?.error?.message ?? (r.stderr || r.stdout).trim().slice(-300)
    throw new UserError(ErrorCode.OFFSITE_FAILED, `the off-site settings of ${uai} were not taken by VM ${t.vmid} (exit ${r.exitcode}): ${why.split(password.reveal()).join('***') || '(no output)'}`, {
      where: {uai, vmid: t.vmid, node: t.node},
      suggestions: [r.exitcode === 127 || /No such file/.test(r.stderr) ? 'The VM runs an image without pgi-offsite: update it (pgi rollout) first.' : 'Check the inventory\'s offsite: section (pgi inventory validate).'],
    })
  }
  return {repository: out.repository ?? ''}
}
