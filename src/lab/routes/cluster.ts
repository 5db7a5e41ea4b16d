import {randomUUID} from 'node:crypto'

import {PermissionError} from '../access.js'
import {configDigest, DIGEST_MISMATCH, DISK_PARAM_KEYS_ALL, HttpError, randomMac, type Ctx, type Handler, type LabApi, type VmRecord} from '../api.js'
import {BackendError, type VmBackend} from '../backend.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from '../params.js'
import {formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from '../validate.js'

/** Lab handlers: version, nodes, node status, cluster resources, nextid, access ticket. Registered by LabApi under the handler ids of params.ts. */
export function clusterRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}

    h.version = async () => ({version: api.pveVersion === '8.4' ? '8.4.1' : '9.1.1', release: api.pveVersion, repoid: api.pveVersion === '8.4' ? 'lab84' : 'lab91', lab: 1})

    h.nodes = async (c) => [{node: c.node.name, status: 'online', uptime: Math.floor(Date.now() / 1000) - c.node.started, type: 'node', id: `node/${c.node.name}`, level: '', maxcpu: 8, maxmem: 32 * 2 ** 30, ssl_fingerprint: undefined}]

    h.nodeStatus = async (c) => ({uptime: Math.floor(Date.now() / 1000) - c.node.started, pveversion: `pve-manager/${api.pveVersion}/lab`, kversion: 'Linux lab', cpu: 0.01, memory: {total: 32 * 2 ** 30, used: 2 ** 30, free: 31 * 2 ** 30}, node: c.node.name})

    h.clusterResources = async (c) => {
      const type = c.params.type as string | undefined
      const out: Record<string, unknown>[] = []
      if (!type || type === 'node') out.push({id: `node/${c.node.name}`, type: 'node', node: c.node.name, status: 'online', uptime: Math.floor(Date.now() / 1000) - c.node.started})
      if (!type || type === 'vm') {
        for (const vm of c.node.vms.values()) {
          if (!api.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
          const st = api.backend.status(c.node.name, vm.vmid)
          out.push({id: `qemu/${vm.vmid}`, type: 'qemu', node: c.node.name, vmid: vm.vmid, name: vm.config.name, status: st.running ? 'running' : 'stopped', template: Number(vm.config.template ?? 0), ...(vm.config.tags ? {tags: vm.config.tags} : {}), ...(vm.config.lock ? {lock: vm.config.lock} : {}), uptime: st.uptime, maxmem: api.spec(c.node.name, vm).memoryMb * 2 ** 20, mem: st.mem, cpu: st.cpu})
        }
      }
      if (!type || type === 'storage') {
        for (const s of api.storages.values()) {
          if (!api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit')) continue
          const {used} = await api.backend.storageUsage(c.node.name, s.id)
          out.push({id: `storage/${c.node.name}/${s.id}`, type: 'storage', node: c.node.name, storage: s.id, status: 'available', plugintype: 'dir', content: s.content.join(','), maxdisk: s.totalBytes, disk: used, shared: 0})
        }
      }
      return out
    }

    h.nextid = async (c) => {
      if (c.params.vmid !== undefined) {
        const id = Number(c.params.vmid)
        if (c.node.vms.has(id)) throw new ParamError({vmid: `VM ${id} already exists`})
        return String(id)
      }
      let id = 100
      while (c.node.vms.has(id)) id++
      return String(id)
    }

    h.ticket = async (c) => {
      const r = api.access.login(String(c.params.username), String(c.params.password), c.params.realm as string | undefined)
      return {...r, cap: {}}
    }
  return h
}
