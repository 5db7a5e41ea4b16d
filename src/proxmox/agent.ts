import {BugError, ErrorCode, TimeoutError, UserError} from '../errors.js'
import {PveApiError} from './errors.js'
import type {AgentExecOptions, AgentExecResult, AgentNetworkInterface} from './types.js'
import {decodeReason, type Params} from './encoding.js'
import {PveVms} from './vms.js'

/** How long an agent may stay silent while a guest command it started runs (see agentExec). */
export const AGENT_SILENCE_MS = 5 * 60_000

/** PVE's answers when the guest agent did not answer in time (not a refusal of the command). */
function isAgentSilence(err: PveApiError): boolean {
  return err.status === 500 && /guest agent is not running|got timeout/i.test(err.pveMessage)
}

/** Guest-agent calls through Proxmox VE: answers unwrapped (`{data:{result:…}}`), exec polled to completion. */
export class PveAgentCalls extends PveVms {
  // ---------------------------------------------------------------------------------------------
  // guest agent

  protected async agent<T>(method: 'GET' | 'POST', node: string, vmid: number, cmd: string, params?: Params, idempotent = true): Promise<T> {
    const r = await this.request<unknown>(method, this.vmPath(node, vmid, `/agent/${cmd}`), params, {where: this.where(node, vmid), idempotent})
    const d = r.data
    return (d && typeof d === 'object' && 'result' in d ? (d as {result: unknown}).result : d) as T
  }

  async agentPing(node: string, vmid: number): Promise<boolean> {
    try {
      await this.agent('POST', node, vmid, 'ping')
      return true
    } catch (err) {
      if (err instanceof PveApiError && err.status === 500 && /agent|not running|timeout|got timeout|No QMP/i.test(err.pveMessage)) return false
      throw err
    }
  }

  async agentNetworkInterfaces(node: string, vmid: number): Promise<AgentNetworkInterface[]> {
    return (await this.agent<AgentNetworkInterface[]>('GET', node, vmid, 'network-get-interfaces')) ?? []
  }

  async agentFsInfo(node: string, vmid: number): Promise<unknown[]> {
    return (await this.agent<unknown[]>('GET', node, vmid, 'get-fsinfo')) ?? []
  }

  async agentExec(node: string, vmid: number, command: string[], opts: AgentExecOptions = {}): Promise<AgentExecResult> {
    if (command.length === 0) throw new UserError(ErrorCode.USAGE, 'agentExec: empty command')
    if (opts.inputData !== undefined && /[^\x00-\x7e]/.test(opts.inputData)) {
      // PVE base64-encodes input-data as bytes: non-ASCII text would be mangled or refused.
      throw new BugError('agentExec: inputData must be ASCII (PVE re-encodes it); send JSON made with asciiJson()')
    }
    // Unless the caller says the command may run twice (a read-only check, a convergent
    // configuration), a command whose start was not confirmed is not sent again: it may run.
    const started = await this.agent<{pid: number}>('POST', node, vmid, 'exec', {command, 'input-data': opts.inputData}, opts.idempotent === true)
    const pid = started?.pid
    if (typeof pid !== 'number') throw new PveApiError({status: 200, pveMessage: `agent exec returned no pid (${JSON.stringify(started)})`, method: 'POST', path: this.vmPath(node, vmid, '/agent/exec'), where: this.where(node, vmid)})
    const timeout = opts.timeoutMs ?? 5 * 60_000
    const start = this.now()
    let d = Math.min(this.pollInitial, 250)
    // exec-status is asked at growing intervals, up to the client's poll.maxMs (5 s: a fleet's
    // many commands, each a request to its node); a caller someone waits on at a terminal asks
    // for a shorter ceiling (pollMaxMs), so a minute-long command is not reported up to 5 s late
    const pollMax = Math.max(d, Math.min(this.pollMax, opts.pollMaxMs ?? this.pollMax))
    // When the agent misses an answer (PVE pings it with a short timeout first and answers "QEMU
    // guest agent is not running" or "got timeout"), the command goes on in the guest: a guest
    // busy with its own work (a class's nightly dumps under software emulation) can leave its
    // agent unscheduled for seconds. exec-status only reads, so it is asked again, for as long as
    // the command's timeout allows but never more than AGENT_SILENCE_MS in a row: an agent silent
    // that long is gone (a guest that rebooted or hung), and saying so beats waiting on; the
    // command may still run or have ended in the guest, which the message says.
    let silentSince: number | undefined
    for (;;) {
      let st: {exited: number | boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string; 'out-truncated'?: number | boolean; 'err-truncated'?: number | boolean}
      try {
        st = await this.agent('GET', node, vmid, 'exec-status', {pid})
        silentSince = undefined
      } catch (err) {
        if (!(err instanceof PveApiError && isAgentSilence(err))) throw err
        silentSince ??= this.now()
        const silent = this.now() - silentSince
        if (silent >= AGENT_SILENCE_MS || this.now() - start > timeout) {
          throw new PveApiError({
            status: err.status,
            pveMessage: `${err.pveMessage} (the guest agent has not answered for ${Math.round(silent / 1000)} s while guest command ${command[0]}, pid ${pid}, ran)`,
            method: 'GET',
            path: this.vmPath(node, vmid, '/agent/exec-status'),
            where: this.where(node, vmid),
            cause: err,
          })
        }
        this.io.debug(`guest agent silent on exec-status of pid ${pid} (${err.pveMessage}); asking again`, this.where(node, vmid))
        await this.pause(Math.max(d, 2000))
        continue
      }
      if (st && (st.exited === 1 || st.exited === true)) {
        return {
          exitcode: st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : -1),
          stdout: decodeReason(st['out-data'] ?? ''),
          stderr: decodeReason(st['err-data'] ?? ''),
          truncated: Boolean(st['out-truncated']) || Boolean(st['err-truncated']),
        }
      }
      if (this.now() - start > timeout) {
        throw new TimeoutError(`guest command ${command[0]} (pid ${pid}) still running after ${Math.round(timeout / 1000)} s`, {
          where: this.where(node, vmid),
          suggestions: ['The command goes on in the guest; check it there before running it again.'],
        })
      }
      await this.pause(d)
      d = Math.min(pollMax, Math.round(d * 1.5))
    }
  }

  async agentFileWrite(node: string, vmid: number, file: string, content: string): Promise<void> {
    // Encoded here (encode=0): PVE's own base64 step works on bytes and would mangle or refuse
    // non-ASCII text. Writing the same content twice is harmless (idempotent).
    const b64 = Buffer.from(content, 'utf8').toString('base64')
    if (b64.length > 61_440) {
      throw new UserError(ErrorCode.USAGE, `agentFileWrite: ${file} is too large for the guest agent (${Buffer.byteLength(content)} bytes; PVE takes at most 45 KiB)`, {where: this.where(node, vmid)})
    }
    await this.agent('POST', node, vmid, 'file-write', {file, content: b64, encode: false}, true)
  }

  async agentFileRead(node: string, vmid: number, file: string): Promise<string> {
    const r = await this.agent<{content: string; truncated?: number | boolean}>('GET', node, vmid, 'file-read', {file})
    if (r?.truncated) this.io.warn(`guest file ${file} was truncated by the agent (16 MiB limit)`, this.where(node, vmid))
    return decodeReason(r?.content ?? '')
  }
}
