import {HttpError, MASK, type Ctx, type Handler} from '../context.js'
import type {LabApi} from '../api.js'
import {ParamError, parseBool} from '../validate.js'
import {isCloudinitKey, nextUnused, vmDigest, withPending, type VmRecord} from '../vmconfig.js'

/**
 * Lab handlers: a VM's snapshots (list, create, config, rollback, delete) and its cloud-init
 * drive (pending keys, regeneration). Gathered by routes/index.ts under the handler ids of params.ts.
 */
export function snapshotRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}

  // ---- snapshots ---------------------------------------------------------------------------------

  h.snapList = async (c) => {
    const vm = api.vmOf(c)
    const out: Record<string, unknown>[] = Object.entries(vm.snapshots).map(([name, s]) => ({name, snaptime: s.snaptime, description: s.description, ...(s.parent ? {parent: s.parent} : {}), vmstate: 0}))
    out.push({name: 'current', digest: vmDigest(vm), running: api.running(c, vm) ? 1 : 0, description: 'You are here!', ...(vm.config.parent ? {parent: vm.config.parent} : {})})
    return out
  }

  const snapOf = (c: Ctx, vm: VmRecord) => {
    const name = String(c.params.snapname)
    const s = vm.snapshots[name]
    if (!s) throw new HttpError(500, `snapshot '${name}' does not exist`)
    return {name, s}
  }
  h.snapIndex = async (c) => {
    snapOf(c, api.vmOf(c))
    return [{rel: 'child', href: 'config'}, {rel: 'child', href: 'rollback'}].map((x) => ({...x}))
  }
  h.snapConfigGet = async (c) => {
    const vm = api.vmOf(c)
    const {s} = snapOf(c, vm)
    return api.configOut(vm, false, {...s.config, snaptime: String(s.snaptime), ...(s.description ? {description: s.description} : {})})
  }

  h.snapCreate = async (c) => {
    const vm = api.vmOf(c)
    const name = String(c.params.snapname)
    if (name === 'current') throw new ParamError({snapname: 'invalid snapshot name'})
    if (parseBool(c.params.vmstate)) throw new HttpError(500, 'the lab does not save RAM state (vmstate=1 is not supported)')
    api.checkLock(vm, c)
    if (vm.snapshots[name]) throw new HttpError(500, `snapshot name '${name}' already used`)
    vm.config.lock = 'snapshot'
    return api.task(c, 'qmsnapshot', String(vm.vmid), async (ctx) => {
      try {
        await api.backend.snapshotCreate(api.spec(c.node.name, vm), name, ctx)
        const {lock: _l, ...cfg} = vm.config
        vm.snapshots[name] = {config: cfg, snaptime: Math.floor(Date.now() / 1000), description: String(c.params.description ?? ''), parent: vm.config.parent}
        vm.config.parent = name
      } finally {
        delete vm.config.lock
      }
    }, () => delete vm.config.lock)
  }

  h.snapDelete = async (c) => {
    const vm = api.vmOf(c)
    const {name} = snapOf(c, vm)
    api.checkLock(vm, c)
    vm.config.lock = 'snapshot-delete'
    return api.task(c, 'qmdelsnapshot', String(vm.vmid), async (ctx) => {
      try {
        await api.backend.snapshotDelete(api.spec(c.node.name, vm), name, ctx)
        const parent = vm.snapshots[name]!.parent
        for (const s of Object.values(vm.snapshots)) if (s.parent === name) s.parent = parent
        if (vm.config.parent === name) {
          if (parent) vm.config.parent = parent
          else delete vm.config.parent
        }
        delete vm.snapshots[name]
      } finally {
        delete vm.config.lock
      }
    }, () => delete vm.config.lock)
  }

  h.snapRollback = async (c) => {
    const vm = api.vmOf(c)
    const {name, s: snap} = snapOf(c, vm)
    api.checkLock(vm, c)
    vm.config.lock = 'rollback'
    return api.task(c, 'qmrollback', String(vm.vmid), async (ctx) => {
      try {
        if (api.running(c, vm)) await api.backend.stop(c.node.name, vm.vmid, ctx)
        // the disks of the snapshot go back; disks added since stay, as unusedN (PVE's __snapshot_rollback_get_unused)
        const snapVm = {...vm, config: snap.config}
        await api.backend.snapshotRollback(api.spec(c.node.name, snapVm), name, ctx)
        const kept = new Set(api.volids(snapVm))
        const added = api.volids({...vm, pending: {}}).filter((v) => !kept.has(v) && !/-cloudinit\./.test(v))
        vm.config = {...snap.config, parent: name}
        for (const volid of added) vm.config[nextUnused(vm.config)] = volid
        vm.pending = {}
        vm.pendingDelete.clear()
      } finally {
        delete vm.config.lock
      }
      if (parseBool(c.params.start)) await api.startVm(c, vm, ctx)
    }, () => delete vm.config.lock)
  }

  // ---- cloud-init --------------------------------------------------------------------------------

  /** GET …/cloudinit: each cloud-init key, with what the drive holds (`value`) and what it will hold (`pending`). */
  h.cloudinitPending = async (c) => {
    const vm = api.vmOf(c)
    const cfg = withPending(vm)
    const applied = vm.cloudinitApplied ?? {}
    const keys = new Set([...Object.keys(cfg).filter((k) => isCloudinitKey(k)), ...Object.keys(applied).filter((k) => isCloudinitKey(k))])
    const mask = (k: string, v: string) => (k === 'cipassword' ? MASK : v)
    return [...keys].sort().map((key) => {
      const now = cfg[key]
      const was = vm.cloudinitApplied ? applied[key] : now
      const item: Record<string, unknown> = {key}
      if (was !== undefined) item.value = mask(key, was)
      if (now !== undefined && now !== was) item.pending = mask(key, now)
      if (now === undefined && was !== undefined) item.delete = 1
      return item
    })
  }

  h.cloudinitUpdate = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    if (!api.spec(c.node.name, vm).cloudInit) throw new HttpError(500, `no cloudinit drive found for VM ${vm.vmid}`)
    await api.withConfigLock(c, vm.vmid, async () => {
      // the pending cloud-init keys go into the config with the new drive (vmconfig_update_cloudinit_drive)
      for (const [k, v] of Object.entries(vm.pending)) {
        if (!isCloudinitKey(k)) continue
        vm.config[k] = v
        delete vm.pending[k]
      }
      await api.regenerateCloudInit(c.node.name, vm)
    })
    api.changed()
    return null
  }

  return h
}
