/**
 * The only module that speaks SSH (through `ssh2`): logs into a PGI VM as its AMI would, with the
 * codes of the handoff — password or key authentication, and the server's host key checked
 * against the fingerprints the handoff lists (never "accept any host key" silently).
 *
 * No pgi command uses it today: pgi reaches hypervisors through the Proxmox API and VMs through
 * the API and their guest agent, which needs no network path from this machine to the VM. The
 * end-to-end tests use it to prove that the AMI's handoff lets them in (test/e2e/deploy).
 */
import {createHash} from 'node:crypto'

import {Client, type ConnectConfig} from 'ssh2'

import {ErrorCode, UnreachableError, UserError} from './errors.js'
import type {Secret} from './secret.js'

export interface SshTarget {
  host: string
  port: number
  username: string
  password?: Secret
  /** Private key (PEM/OpenSSH) for key authentication. */
  privateKey?: Secret
  /**
   * Accepted host key fingerprints, `SHA256:<base64>` (optionally prefixed by the key type, as
   * `ssh-keygen -l` and the handoff print them). When empty, the connection is refused unless
   * `insecureAcceptAnyHostKey` is set (tests of throwaway VMs only).
   */
  hostKeyFingerprints: string[]
  insecureAcceptAnyHostKey?: boolean
  timeoutMs?: number
}

export interface SshExecResult {
  code: number
  stdout: string
  stderr: string
  /** The host key fingerprint the server presented. */
  hostKey: string
}

/** `SHA256:<base64 without padding>` of a raw public key blob, as OpenSSH prints it. */
export function sshFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`
}

/** Runs `command` (a fixed string without secrets: it is visible in the remote process list) over SSH. */
export function sshExec(t: SshTarget, command: string, opts: {stdin?: string} = {}): Promise<SshExecResult> {
  const accepted = new Set(t.hostKeyFingerprints.map((f) => f.trim().split(/\s+/).find((x) => x.startsWith('SHA256:')) ?? f.trim()))
  let presented = ''
  return new Promise((resolve, reject) => {
    const c = new Client()
    const fail = (err: Error) => {
      c.end()
      reject(err)
    }
    c.on('ready', () => {
      c.exec(command, (err, stream) => {
        if (err) return fail(new UserError(ErrorCode.TOOL_FAILED, `ssh ${t.username}@${t.host}:${t.port}: ${err.message}`))
        let stdout = ''
        let stderr = ''
        stream.on('data', (d: Buffer) => (stdout += d.toString()))
        stream.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
        stream.on('close', (code: number | null) => {
          c.end()
          resolve({code: code ?? -1, stdout, stderr, hostKey: presented})
        })
        if (opts.stdin !== undefined) stream.end(opts.stdin)
      })
    })
    c.on('error', (err: Error & {level?: string}) => {
      if (err.level === 'client-authentication') {
        return fail(new UserError(ErrorCode.PVE_AUTH, `ssh ${t.username}@${t.host}:${t.port}: authentication refused`, {suggestions: ['Check the login and password of the handoff (pgi credentials open).']}))
      }
      if (/host key|Host denied/i.test(err.message)) {
        return fail(new UnreachableError(ErrorCode.TLS_MISMATCH, `ssh ${t.host}:${t.port}: the host key ${presented} is not one of the expected ${[...accepted].join(', ') || '(none)'}`, {
          suggestions: ['Do not log in: the server is not the VM the handoff describes. Compare with `pgi credentials open`.'],
        }))
      }
      fail(new UnreachableError(ErrorCode.UNREACHABLE, `ssh ${t.host}:${t.port}: ${err.message}`))
    })
    const cfg: ConnectConfig = {
      host: t.host,
      port: t.port,
      username: t.username,
      readyTimeout: t.timeoutMs ?? 20_000,
      hostVerifier: (key: Buffer) => {
        presented = sshFingerprint(key)
        return t.insecureAcceptAnyHostKey === true || accepted.has(presented)
      },
      ...(t.password ? {password: t.password.reveal()} : {}),
      ...(t.privateKey ? {privateKey: t.privateKey.reveal()} : {}),
      tryKeyboard: false,
    }
    c.connect(cfg)
  })
}
