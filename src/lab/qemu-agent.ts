import {QgaError, type QgaClient} from '../qemu/qga.js'
import {BackendError, type AgentExecStatus, type AgentFsInfo, type AgentInfo, type AgentNetworkInterface, type AgentOsInfo, type GuestAgent} from './backend.js'

/**
 * The qemu backend's guest agent: the real qemu-guest-agent of a running VM (src/qemu/qga.ts),
 * its failures told in the texts PVE answers with. `qgaOf` gives the agent client of a running
 * VM (and throws PVE's "VM … is not running" otherwise).
 */
export function qemuGuestAgent(qgaOf: (node: string, vmid: number) => QgaClient): GuestAgent {
  /** Maps guest-agent failures to the texts PVE answers with. */
  const call = async <T>(node: string, vmid: number, command: string, f: (q: QgaClient) => Promise<T>): Promise<T> => {
    const q = qgaOf(node, vmid)
    try {
      return await f(q)
    } catch (error) {
      if (error instanceof QgaError) {
        if (error.reason === 'unavailable') throw new BackendError('QEMU guest agent is not running')
        if (error.reason === 'timeout') throw new BackendError(`VM ${vmid} qmp command '${command}' failed - got timeout`)
        throw new BackendError(`Agent error: ${error.message.replace(/^guest agent command '[^']+' failed: /, '')}`)
      }
      throw error
    }
  }
  return {
    ping: (node, vmid, timeoutMs) => call(node, vmid, 'guest-ping', (q) => q.ping(timeoutMs)),
    networkGetInterfaces: (node, vmid, timeoutMs) =>
      call(node, vmid, 'guest-network-get-interfaces', (q) => q.networkGetInterfaces(timeoutMs)) as Promise<AgentNetworkInterface[]>,
    getFsinfo: (node, vmid, timeoutMs) => call(node, vmid, 'guest-get-fsinfo', (q) => q.getFsinfo(timeoutMs)) as Promise<AgentFsInfo[]>,
    exec: (node, vmid, command, inputData, timeoutMs) => {
      if (command.length === 0) return Promise.reject(new BackendError("parameter verification failed: 'command' is empty"))
      return call(node, vmid, 'guest-exec', (q) => q.exec(command[0], command.slice(1), {input: inputData, timeoutMs}))
    },
    execStatus: (node, vmid, pid, timeoutMs) =>
      call(node, vmid, 'guest-exec-status', async (q): Promise<AgentExecStatus> => {
        const r = await q.execStatusRaw(pid, timeoutMs)
        const out: AgentExecStatus = {exited: r.exited}
        if (r.exitcode !== undefined) out.exitcode = r.exitcode
        if (r.signal !== undefined) out.signal = r.signal
        if (r['out-data'] !== undefined) out['out-data'] = Buffer.from(r['out-data'], 'base64').toString('utf8')
        if (r['err-data'] !== undefined) out['err-data'] = Buffer.from(r['err-data'], 'base64').toString('utf8')
        if (r['out-truncated']) out['out-truncated'] = true
        if (r['err-truncated']) out['err-truncated'] = true
        return out
      }),
    fileWrite: (node, vmid, file, content, timeoutMs) => call(node, vmid, 'guest-file-write', (q) => q.fileWrite(file, content, timeoutMs)),
    fileRead: (node, vmid, file, timeoutMs, range = {}) => call(node, vmid, 'guest-file-read', (q) => readGuestFile(q, file, range.offset ?? 0, Math.min(range.count ?? MAX_READ, MAX_READ), timeoutMs)),
    info: (node, vmid, timeoutMs) => call(node, vmid, 'guest-info', (q) => q.execute<AgentInfo>('guest-info', undefined, timeoutMs)),
    getOsinfo: (node, vmid, timeoutMs) => call(node, vmid, 'guest-get-osinfo', (q) => q.execute<AgentOsInfo>('guest-get-osinfo', undefined, timeoutMs)),
    getHostName: (node, vmid, timeoutMs) => call(node, vmid, 'guest-get-host-name', (q) => q.execute<{'host-name': string}>('guest-get-host-name', undefined, timeoutMs)),
  }
}

/** PVE's file-read limit. */
const MAX_READ = 16 * 1024 * 1024

/**
 * qemu-server's file-read: open, seek to `offset`, read up to `count` bytes in 1 MiB chunks,
 * close; `truncated` when the end of the file was not reached.
 */
async function readGuestFile(q: QgaClient, file: string, offset: number, count: number, timeoutMs: number): Promise<{content: Buffer; truncated: boolean}> {
  const handle = await q.execute<number>('guest-file-open', {path: file, mode: 'r'}, timeoutMs)
  const parts: Buffer[] = []
  let read = 0
  let eof = false
  try {
    if (offset > 0) await q.execute('guest-file-seek', {handle, offset, whence: 'set'}, timeoutMs)
    while (read < count && !eof) {
      const r = await q.execute<{count: number; 'buf-b64': string; eof: boolean}>('guest-file-read', {handle, count: Math.min(count - read, 1024 * 1024)}, timeoutMs)
      const b = Buffer.from(r['buf-b64'] ?? '', 'base64')
      parts.push(b)
      read += b.length
      eof = r.eof || b.length === 0
    }
  } finally {
    await q.execute('guest-file-close', {handle}, timeoutMs).catch(() => undefined)
  }
  return {content: Buffer.concat(parts), truncated: !eof}
}
