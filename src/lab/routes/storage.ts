import {randomUUID} from 'node:crypto'

import {PermissionError} from '../access.js'
import {configDigest, DIGEST_MISMATCH, DISK_PARAM_KEYS_ALL, HttpError, randomMac, type Ctx, type Handler, type LabApi, type VmRecord} from '../api.js'
import {BackendError, type VmBackend} from '../backend.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from '../params.js'
import {formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from '../validate.js'

/** Lab handlers: storage index, status, content list and delete (upload and download-url are in server.ts: they need the request stream). Registered by LabApi under the handler ids of params.ts. */
export function storageRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
    // ---- storage ----
    h.storageIndex = async (c) => {
      const want = c.params.content ? splitList(String(c.params.content)) : undefined
      const out: Record<string, unknown>[] = []
      for (const s of api.storages.values()) {
        if (c.params.storage && c.params.storage !== s.id) continue
        if (want && !want.some((w) => s.content.includes(w as never))) continue
        if (!api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit') && !api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.AllocateSpace')) continue
        const {used} = await api.backend.storageUsage(c.node.name, s.id)
        out.push({storage: s.id, type: s.type, content: s.content.join(','), active: 1, enabled: 1, shared: 0, total: s.totalBytes, used, avail: s.totalBytes - used, used_fraction: used / s.totalBytes})
      }
      return out
    }
    h.storageStatus = async (c) => {
      const s = api.storageDef(String(c.params.storage))
      const {used} = await api.backend.storageUsage(c.node.name, s.id)
      return {type: s.type, content: s.content.join(','), active: 1, enabled: 1, shared: 0, total: s.totalBytes, used, avail: s.totalBytes - used}
    }
    h.storageContent = async (c) => {
      const s = api.storageDef(String(c.params.storage))
      const vols = await api.backend.listVolumes(c.node.name, s.id, c.params.content as never)
      return vols
        .filter((v) => c.params.vmid === undefined || v.vmid === Number(c.params.vmid))
        .filter((v) => v.vmid === undefined || api.access.has(c.principal, `/vms/${v.vmid}`, 'VM.Audit') || api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Allocate'))
        .map((v) => ({volid: v.volid, content: v.content, format: v.format, size: v.size, ...(v.used !== undefined ? {used: v.used} : {}), ...(v.vmid !== undefined ? {vmid: v.vmid} : {}), ctime: v.ctime}))
    }
    h.storageDelete = async (c) => {
      const volume = String(c.params.volume)
      const volid = volume.includes(':') ? volume : `${c.params.storage}:${volume}`
      const storage = volid.split(':')[0]!
      api.storageDef(storage)
      const info = await api.backend.volumeInfo(c.node.name, volid)
      if (!info) throw new HttpError(500, `volume '${volid}' does not exist`)
      if (info.vmid !== undefined) {
        api.access.check(c.principal, `/vms/${info.vmid}`, ['VM.Config.Disk'])
        for (const vm of c.node.vms.values()) {
          if (Object.values(vm.config).some((v) => v.split(',')[0] === volid)) throw new HttpError(500, `unable to delete '${volid}' - volume is still in use (VM ${vm.vmid})`)
        }
      } else api.access.check(c.principal, `/storage/${storage}`, ['Datastore.Allocate'])
      return api.task(c, 'imgdel', volid, async (ctx) => api.backend.deleteVolume(c.node.name, volid, ctx))
    }
  return h
}
