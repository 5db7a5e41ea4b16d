import {agentEnabled, HttpError, type Ctx, type Handler} from '../context.js'
import type {LabApi} from '../api.js'
import {BackendError} from '../backend.js'
import type {VmRecord} from '../vmconfig.js'
import {ParamError, parseBool} from '../validate.js'

/** PVE's limit for agent file-read (qemu-server's $MAX_READ_SIZE). */
const MAX_READ_SIZE = 16 * 1024 * 1024

/** Lab handlers: guest-agent endpoints. Registered by LabApi under the handler ids of params.ts. */
export function agentRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
  /** qemu-server's assert_agent_available. */
  const agentVm = (c: Ctx): VmRecord => {
    const vm = api.vmOf(c)
    if (!agentEnabled(vm.config)) throw new HttpError(500, 'No QEMU guest agent configured')
    if (!api.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} is not running`)
    return vm
  }
  const agentCall = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn()
    } catch (e) {
      if (e instanceof BackendError) throw new HttpError(e.status, e.message)
      throw e
    }
  }
  const read = (fn: (node: string, vmid: number) => Promise<unknown>): Handler => async (c) => {
    const vm = agentVm(c)
    return {result: await agentCall(() => fn(c.node.name, vm.vmid))}
  }

  h.agentIndex = async (c) => {
    api.vmOf(c)
    return ['exec', 'exec-status', 'file-read', 'file-write', 'get-fsinfo', 'get-host-name', 'get-osinfo', 'info', 'network-get-interfaces', 'ping'].map((name) => ({name}))
  }
  h.agentPing = async (c) => {
    const vm = agentVm(c)
    await agentCall(() => api.backend.agent.ping(c.node.name, vm.vmid, 10_000))
    return {result: {}}
  }
  h.agentNetwork = read((n, v) => api.backend.agent.networkGetInterfaces(n, v, 10_000))
  h.agentFsinfo = read((n, v) => api.backend.agent.getFsinfo(n, v, 10_000))
  h.agentInfo = read((n, v) => api.backend.agent.info(n, v, 10_000))
  h.agentOsinfo = read((n, v) => api.backend.agent.getOsinfo(n, v, 10_000))
  h.agentHostName = read((n, v) => api.backend.agent.getHostName(n, v, 10_000))

  h.agentExec = async (c) => {
    const vm = agentVm(c)
    const cmd = c.params.command
    const command = Array.isArray(cmd) ? cmd : cmd === undefined ? [] : [String(cmd)]
    if ((command.length === 0 || command[0] === '') && c.params['input-data'] === undefined) throw new HttpError(500, 'command or input-data (or both) required')
    if (command.length === 0 || command[0] === '') throw new ParamError({command: 'no command specified'})
    return agentCall(() => api.backend.agent.exec(c.node.name, vm.vmid, command, c.params['input-data'] as string | undefined, 10_000))
  }
  h.agentExecStatus = async (c) => {
    const vm = agentVm(c)
    const r = await agentCall(() => api.backend.agent.execStatus(c.node.name, vm.vmid, Number(c.params.pid), 10_000))
    // PVE returns booleans of the agent's answer as 1/0
    return {...r, exited: r.exited ? 1 : 0, ...(r['out-truncated'] ? {'out-truncated': 1} : {}), ...(r['err-truncated'] ? {'err-truncated': 1} : {})}
  }
  h.agentFileWrite = async (c) => {
    const vm = agentVm(c)
    const encode = parseBool(c.params.encode) ?? true
    // encode=1 (default): the API receives plain text and base64-encodes it for the agent.
    const content = encode ? Buffer.from(String(c.params.content)) : Buffer.from(String(c.params.content), 'base64')
    await agentCall(() => api.backend.agent.fileWrite(c.node.name, vm.vmid, String(c.params.file), content, 30_000))
    return null
  }
  h.agentFileRead = async (c) => {
    const vm = agentVm(c)
    const offset = c.params.offset === undefined ? 0 : Number(c.params.offset)
    const count = c.params.count === undefined ? MAX_READ_SIZE : Number(c.params.count)
    const decode = parseBool(c.params.decode) ?? true
    const r = await agentCall(() => api.backend.agent.fileRead(c.node.name, vm.vmid, String(c.params.file), 30_000, {offset, count}))
    if (r.truncated && c.params.count === undefined) api.log(`agent file-read: reached maximum read size: ${MAX_READ_SIZE} bytes. output might be truncated.`)
    return {content: decode ? r.content.toString('utf8') : r.content.toString('base64'), 'bytes-read': r.content.length, ...(r.truncated ? {truncated: 1} : {})}
  }
  return h
}
