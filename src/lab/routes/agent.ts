import {randomUUID} from 'node:crypto'

import {PermissionError} from '../access.js'
import {agentEnabled, configDigest, DIGEST_MISMATCH, DISK_PARAM_KEYS_ALL, HttpError, randomMac, type Ctx, type Handler, type LabApi, type VmRecord} from '../api.js'
import {BackendError, type VmBackend} from '../backend.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from '../params.js'
import {formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from '../validate.js'

/** Lab handlers: guest-agent endpoints (ping, network-get-interfaces, get-fsinfo, exec, exec-status, file-write, file-read). Registered by LabApi under the handler ids of params.ts. */
export function agentRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
    // ---- guest agent ----
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
    h.agentPing = async (c) => {
      const vm = agentVm(c)
      await agentCall(() => api.backend.agent.ping(c.node.name, vm.vmid, 10_000))
      return {result: {}}
    }
    h.agentNetwork = async (c) => {
      const vm = agentVm(c)
      return {result: await agentCall(() => api.backend.agent.networkGetInterfaces(c.node.name, vm.vmid, 10_000))}
    }
    h.agentFsinfo = async (c) => {
      const vm = agentVm(c)
      return {result: await agentCall(() => api.backend.agent.getFsinfo(c.node.name, vm.vmid, 10_000))}
    }
    h.agentExec = async (c) => {
      const vm = agentVm(c)
      const cmd = c.params.command
      const command = Array.isArray(cmd) ? cmd : [String(cmd)]
      if (command.length === 0 || command[0] === '') throw new ParamError({command: 'no command specified'})
      return agentCall(() => api.backend.agent.exec(c.node.name, vm.vmid, command, c.params['input-data'] as string | undefined, 10_000))
    }
    h.agentExecStatus = async (c) => {
      const vm = agentVm(c)
      return agentCall(() => api.backend.agent.execStatus(c.node.name, vm.vmid, Number(c.params.pid), 10_000))
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
      const r = await agentCall(() => api.backend.agent.fileRead(c.node.name, vm.vmid, String(c.params.file), 30_000))
      return {content: r.content.toString('utf8'), ...(r.truncated ? {truncated: true} : {})}
    }
  return h
}
