/**
 * Secrets and identity on the guest's side, over the guest agent: applying secrets with the image's
 * pgi-configure (secrets on stdin only), reading the VM's SSH host keys and its Tryton series.
 * Used by deploy (a new VM) and by credentials (a rotation): the fleet core below both.
 */
import {ErrorCode, UserError} from '../errors.js'
import type {Io} from '../io.js'
import type {Establishment} from '../inventory/types.js'
import type {AgentExecResult, PveApi} from '../proxmox/types.js'
import type {Secret} from '../secret.js'
import {requireRunningVm} from './guest.js'
import {guestConfigureInput, type EstablishmentSecrets} from './secrets.js'

/** The guest contract's configuration entry point: JSON on stdin, `{"changed":[…]}` on stdout. */
export const PGI_CONFIGURE = '/usr/local/sbin/pgi-configure'

/**
 * Runs pgi-configure in the guest with `secrets` on stdin. The guest contract says it never
 * prints a secret; its output is still scrubbed of them before it appears in an error.
 */
export async function applyInGuest(
  api: PveApi,
  est: Establishment,
  secrets: Partial<EstablishmentSecrets>,
  opts: {timeoutMs?: number; io?: Io} = {},
): Promise<string[]> {
  const where = {uai: est.uai, hypervisor: api.hypervisor, node: est.node, vmid: est.vmid}
  const values = Object.values(secrets).filter((v): v is Secret => v !== undefined)
  const scrub = (t: string) => values.reduce((acc, s) => acc.split(s.reveal()).join('[secret]'), t)
  await requireRunningVm(api, est, ', so its secrets cannot be changed')
  let r: AgentExecResult
  try {
    // convergent (it sets what it is given): safe to start again after a server fault
    r = await api.agentExec(est.node, est.vmid, [PGI_CONFIGURE], {inputData: guestConfigureInput(secrets, est.ami.login), timeoutMs: opts.timeoutMs, idempotent: true})
  } catch (err) {
    const e = err as Error & {code?: string}
    throw new UserError(ErrorCode.GUEST_CONFIGURE, `could not run pgi-configure in the VM of ${est.uai}: ${scrub(e.message)}`, {
      where,
      suggestions: ['Check the guest agent (`pgi status`), then run the same command again: the pending secrets are kept.'],
    })
  }
  if (r.exitcode !== 0) {
    throw new UserError(ErrorCode.GUEST_CONFIGURE, `pgi-configure failed in the VM of ${est.uai} (exit ${r.exitcode}): ${scrub(tail(r.stderr || r.stdout))}`, {
      where,
      suggestions: ['Fix the cause shown, then run the same command again: the pending secrets are kept and will be applied.'],
    })
  }
  try {
    const out = JSON.parse(r.stdout) as {changed?: unknown}
    return Array.isArray(out.changed) ? out.changed.map(String) : []
  } catch {
    opts.io?.warn(`${est.uai}: pgi-configure succeeded but did not print JSON`)
    return []
  }
}

/** Reads the guest's SSH host key fingerprints through the agent ("ED25519 SHA256:…"). */
/**
 * The Tryton series the VM runs ("6.0", "7.0"): the major.minor of its tryton-server package.
 * Undefined when the guest has none (not a PGI image) or does not answer.
 */
export async function fetchTrytonSeries(api: PveApi, node: string, vmid: number): Promise<string | undefined> {
  const r = await api.agentExec(node, vmid, ['dpkg-query', '-W', '-f', '${Version}', 'tryton-server'], {timeoutMs: 30_000})
  if (r.exitcode !== 0) return undefined
  return /^(?:\d+:)?(\d+\.\d+)\./.exec(r.stdout.trim())?.[1]
}

export async function fetchHostKeyFingerprints(api: PveApi, node: string, vmid: number): Promise<string[]> {
  const r = await api.agentExec(node, vmid, ['/bin/sh', '-c', 'for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -l -E sha256 -f "$f"; done'], {timeoutMs: 30_000, idempotent: true})
  if (r.exitcode !== 0) throw new Error(`ssh-keygen exited with ${r.exitcode}`)
  const out: string[] = []
  for (const line of r.stdout.split('\n')) {
    const m = /^\d+\s+(SHA256:[A-Za-z0-9+/=]+)\s.*\(([A-Z0-9-]+)\)\s*$/.exec(line.trim())
    if (m) out.push(`${m[2]} ${m[1]}`)
  }
  return out
}

function tail(t: string, n = 5): string {
  return t.trim().split('\n').slice(-n).join(' | ')
}
