import {HttpError, type Ctx, type Handler} from '../context.js'
import type {LabApi} from '../api.js'
import {splitList} from '../validate.js'

/** Lab handlers: storage index, status, content list, volume attributes and delete (upload and download-url are in server.ts: they need the request stream). Registered by LabApi under the handler ids of params.ts. */
export function storageRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
  const canSee = (c: Ctx, id: string) => api.access.has(c.principal, `/storage/${id}`, 'Datastore.Audit') || api.access.has(c.principal, `/storage/${id}`, 'Datastore.AllocateSpace')

  h.storageIndex = async (c) => {
    const want = c.params.content ? splitList(String(c.params.content)) : undefined
    const out: Record<string, unknown>[] = []
    for (const s of api.storages.values()) {
      if (c.params.storage && c.params.storage !== s.id) continue
      if (want && !want.some((w) => s.content.includes(w as never))) continue
      if (!canSee(c, s.id)) continue
      const {used} = await api.backend.storageUsage(c.node.name, s.id)
      const images = s.content.includes('images')
      out.push({storage: s.id, type: s.type, content: s.content.join(','), active: 1, enabled: 1, shared: 0, total: s.totalBytes, used, avail: s.totalBytes - used, used_fraction: used / s.totalBytes, ...(images ? {formats: {default: 'qcow2', supported: ['qcow2', 'raw', 'vmdk']}, select_existing: 0} : {})})
    }
    return out
  }
  h.storageDirIndex = async (c) => {
    api.storageDef(String(c.params.storage))
    return ['content', 'download-url', 'status', 'upload'].map((subdir) => ({subdir}))
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
  /** `volume` is a volid, or a volume name on `storage`. */
  const volidOf = (c: Ctx) => {
    const volume = String(c.params.volume)
    return volume.includes(':') ? volume : `${c.params.storage}:${volume}`
  }
  h.storageVolumeGet = async (c) => {
    const volid = volidOf(c)
    const storage = volid.split(':')[0]!
    const s = api.storageDef(storage)
    const info = await api.backend.volumeInfo(c.node.name, volid)
    if (!info) throw new HttpError(500, `volume '${volid}' does not exist`)
    // check_volume_access: the owning VM's disk privilege, or the storage's audit/allocation rights
    if (info.vmid !== undefined && !api.access.has(c.principal, `/storage/${storage}`, 'Datastore.Allocate')) api.access.check(c.principal, `/vms/${info.vmid}`, ['VM.Config.Disk'])
    else if (info.vmid === undefined) api.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace', 'Datastore.Audit'], true)
    const name = volid.slice(storage.length + 1)
    const dir = info.content === 'images' ? `images/${name.replace(/^base-\d+-disk-\d+\.\w+\//, '')}` : info.content === 'iso' ? `template/iso/${name.replace(/^iso\//, '')}` : name
    return {path: `${s.path(c.node.name)}/${dir}`, size: info.size, used: info.used ?? info.size, format: info.format, protected: 0}
  }
  h.storageDelete = async (c) => {
    const volid = volidOf(c)
    const storage = volid.split(':')[0]!
    api.storageDef(storage)
    const info = await api.backend.volumeInfo(c.node.name, volid)
    if (!info) throw new HttpError(500, `volume '${volid}' does not exist`)
    if (info.vmid !== undefined) {
      api.access.check(c.principal, `/vms/${info.vmid}`, ['VM.Config.Disk'])
      for (const vm of c.node.vms.values()) {
        const refs = [...Object.values(vm.config), ...Object.values(vm.pending)]
        if (refs.some((v) => v.split(',')[0] === volid)) throw new HttpError(500, `unable to delete '${volid}' - volume is still in use (VM ${vm.vmid})`)
      }
    } else api.access.check(c.principal, `/storage/${storage}`, ['Datastore.Allocate'])
    return api.task(c, 'imgdel', volid, async (ctx) => api.backend.deleteVolume(c.node.name, volid, ctx))
  }
  return h
}
