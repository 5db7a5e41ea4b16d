import {randomUUID} from 'node:crypto'

import {PermissionError} from '../access.js'
import {configDigest, DIGEST_MISMATCH, DISK_PARAM_KEYS_ALL, HttpError, randomMac, type Ctx, type Handler, type LabApi, type VmRecord} from '../api.js'
import {BackendError, type VmBackend} from '../backend.js'
import {DISK_KEY_RE, VM_CONFIG_PARAMS} from '../params.js'
import {formatSize, normalizeTags, ParamError, parseBool, parsePropertyString, parseSize, splitList, type RawParams} from '../validate.js'

/** Lab handlers: VM list, create, destroy, clone, template, config GET/POST/PUT, status, power actions, resize, move_disk, snapshots, cloud-init. Registered by LabApi under the handler ids of params.ts. */
export function qemuRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
    h.vmList = async (c) => {
      const out: Record<string, unknown>[] = []
      for (const vm of c.node.vms.values()) {
        if (!api.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
        const st = api.backend.status(c.node.name, vm.vmid)
        out.push({vmid: vm.vmid, name: vm.config.name, status: st.running ? 'running' : 'stopped', uptime: st.uptime, ...(st.pid ? {pid: st.pid} : {}), ...(vm.config.tags ? {tags: vm.config.tags} : {}), ...(vm.config.lock ? {lock: vm.config.lock} : {}), template: Number(vm.config.template ?? 0) || undefined, maxmem: api.spec(c.node.name, vm).memoryMb * 2 ** 20, cpus: Number(vm.config.cores ?? 1)})
      }
      return out
    }

    h.vmIndex = async (c) => {
      api.vmOf(c)
      return ['config', 'status', 'snapshot', 'agent', 'cloudinit', 'resize', 'move_disk', 'clone', 'template'].map((subdir) => ({subdir}))
    }

    h.vmCreate = async (c) => {
      const vmid = Number(c.params.vmid)
      api.access.check(c.principal, `/vms/${vmid}`, ['VM.Allocate'])
      // PVE checks the VM.Config.* privilege of every key given at creation too.
      const keys = Object.keys(c.params).filter((k) => !['node', 'vmid', 'start', 'storage', 'pool'].includes(k))
      api.checkConfigPerms(c, keys.map((k) => [k, String(c.params[k])] as [string, string]))
      api.checkDiskPaths(c)
      if (c.node.vms.has(vmid)) throw new HttpError(500, `unable to create VM ${vmid} - VM ${vmid} already exists on node '${c.node.name}'`)
      const vm: VmRecord = {vmid, config: {lock: 'create'}, snapshots: {}}
      c.node.vms.set(vmid, vm)
      api.changed()
      return api.task(c, 'qmcreate', String(vmid), async (ctx) => {
        try {
          await api.withConfigLock(c, vmid, async () => {
            const params = {...c.params}
            await api.applyConfig(c, vm, params, ctx, c.params.storage as string | undefined)
            vm.config.smbios1 ??= `uuid=${randomUUID()}`
            vm.config.vmgenid ??= randomUUID()
            vm.config.meta ??= `creation-qemu=9.2.0,ctime=${Math.floor(Date.now() / 1000)}`
            delete vm.config.lock
          })
        } catch (e) {
          // PVE removes a half-created VM (and the disks it allocated).
          await api.backend.destroyVm(c.node.name, vmid, api.volids(vm), ctx).catch(() => undefined)
          c.node.vms.delete(vmid)
          throw e
        }
        if (parseBool(c.params.start)) await api.startVm(c, vm, ctx)
      }, () => c.node.vms.delete(vmid))
    }

    h.vmDestroy = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      if (vm.config.protection === '1') throw new HttpError(500, `can't remove VM ${vm.vmid} - protection mode enabled`)
      if (api.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} is running - destroy failed`)
      vm.config.lock = 'destroyed'
      return api.task(c, 'qmdestroy', String(vm.vmid), async (ctx) => {
        await api.withConfigLock(c, vm.vmid, async () => {
          const volids = api.volids(vm)
          if (parseBool(c.params['destroy-unreferenced-disks']) !== false) {
            for (const s of api.storages.values()) {
              if (!s.content.includes('images')) continue
              for (const v of await api.backend.listVolumes(c.node.name, s.id, 'images')) if (v.vmid === vm.vmid && !volids.includes(v.volid)) volids.push(v.volid)
            }
          }
          await api.backend.destroyVm(c.node.name, vm.vmid, volids, ctx)
          c.node.vms.delete(vm.vmid)
        })
      }, () => delete vm.config.lock)
    }

    h.vmClone = async (c) => {
      const src = api.vmOf(c)
      const newid = Number(c.params.newid)
      api.access.check(c.principal, `/vms/${src.vmid}`, ['VM.Clone'])
      api.access.check(c.principal, `/vms/${newid}`, ['VM.Allocate'])
      if (c.params.target && c.params.target !== c.node.name) throw new HttpError(500, `Node '${c.params.target}' is not part of this lab node's cluster (each lab node is a single-node cluster)`)
      if (c.node.vms.has(newid)) throw new HttpError(500, `unable to create VM ${newid}: config file already exists`)
      api.checkLock(src, c)
      const isTemplate = src.config.template === '1'
      const full = c.params.full === undefined ? !isTemplate : parseBool(c.params.full)
      if (!full && !isTemplate) throw new HttpError(500, 'Linked clone feature is not supported for a non-template VM (use full=1)')
      if (c.params.storage && !full) throw new ParamError({storage: 'Storage migration requires full clone'})
      const target: VmRecord = {vmid: newid, config: {lock: 'create'}, snapshots: {}}
      c.node.vms.set(newid, target)
      if (!isTemplate) src.config.lock = 'clone'
      api.changed()
      return api.task(c, 'qmclone', String(src.vmid), async (ctx) => {
        try {
          const snap = c.params.snapname as string | undefined
          const base = snap ? src.snapshots[snap]?.config : src.config
          if (!base) throw new Error(`snapshot '${snap}' does not exist`)
          const cfg: Record<string, string> = {}
          for (const [k, v] of Object.entries(base)) {
            if (['lock', 'template', 'parent', 'snapstate', 'vmgenid', 'smbios1'].includes(k) || /^unused\d+$/.test(k)) continue
            if (DISK_KEY_RE.test(k)) {
              const p = parsePropertyString(v, DISK_PARAM_KEYS_ALL)
              const file = p.file!
              if (p.media === 'cdrom' && !/-cloudinit\.qcow2$/.test(file)) {
                cfg[k] = v
                continue
              }
              if (/-cloudinit\.qcow2$/.test(file)) {
                const vol = await api.backend.allocateCloudInit(c.node.name, newid, (c.params.storage as string) ?? file.split(':')[0]!, ctx)
                cfg[k] = `${vol.volid},media=cdrom`
                continue
              }
              const storage = (c.params.storage as string | undefined) ?? file.split(':')[0]!
              if (full) api.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
              const fmt = ((c.params.format as string) ?? (file.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
              const vol = full ? await api.backend.copyDisk(c.node.name, file, newid, storage, fmt, ctx, snap) : await api.backend.linkDisk(c.node.name, file, newid, ctx)
              const rest = v.split(',').slice(1).filter((x) => !x.startsWith('size='))
              cfg[k] = [vol.volid, ...rest, `size=${formatSize(vol.size)}`].join(',')
              continue
            }
            if (/^net\d+$/.test(k)) {
              cfg[k] = v.replace(/([0-9A-F]{2}:){5}[0-9A-F]{2}/i, randomMac())
              continue
            }
            cfg[k] = v
          }
          if (c.params.name) cfg.name = String(c.params.name)
          else cfg.name = `Copy-of-VM-${src.config.name ?? src.vmid}`
          if (c.params.description !== undefined) cfg.description = String(c.params.description)
          cfg.smbios1 = `uuid=${randomUUID()}`
          cfg.vmgenid = randomUUID()
          target.config = cfg
        } catch (e) {
          await api.backend.destroyVm(c.node.name, newid, api.volids(target), ctx).catch(() => undefined)
          c.node.vms.delete(newid)
          throw e
        } finally {
          if (src.config.lock === 'clone') delete src.config.lock
        }
      }, () => {
        c.node.vms.delete(newid)
        if (src.config.lock === 'clone') delete src.config.lock
      })
    }

    h.vmTemplate = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      if (vm.config.template === '1') throw new HttpError(500, 'you can\'t convert a template to a template')
      if (api.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `you can't convert a VM to template if VM is running`)
      return api.task(c, 'qmtemplate', String(vm.vmid), async (ctx) => {
        await api.withConfigLock(c, vm.vmid, async () => {
          const map = await api.backend.convertToTemplate(api.spec(c.node.name, vm), ctx)
          for (const [k, v] of Object.entries(vm.config)) {
            if (!DISK_KEY_RE.test(k)) continue
            const f = v.split(',')[0]!
            if (map[f]) vm.config[k] = v.replace(f, map[f])
          }
          vm.config.template = '1'
        })
      })
    }

    h.vmConfigGet = async (c) => {
      const vm = api.vmOf(c)
      const snap = c.params.snapshot as string | undefined
      if (snap) {
        const s = vm.snapshots[snap]
        if (!s) throw new HttpError(500, `snapshot '${snap}' does not exist`)
        return api.configOut({vmid: vm.vmid, config: s.config, snapshots: {}})
      }
      return api.configOut(vm)
    }

    const update = async (c: Ctx, ctx?: Parameters<VmBackend['allocateDisk']>[3]): Promise<void> => {
      const vm = api.vmOf(c)
      const del = c.params.delete ? splitList(String(c.params.delete)) : []
      const setKeys = Object.keys(c.params).filter((k) => !['node', 'vmid', 'digest', 'delete', 'skiplock'].includes(k))
      for (const k of del) {
        if (setKeys.includes(k)) throw new ParamError({[k]: `unable to delete parameter '${k}' and set it at the same time`})
      }
      api.checkConfigPerms(c, [...setKeys.map((k) => [k, String(c.params[k])] as [string, string]), ...del.map((k) => [k, vm.config[k]] as [string, string | undefined])])
      api.checkDiskPaths(c)
      await api.withConfigLock(c, vm.vmid, async () => {
        api.checkLock(vm, c)
        const digest = c.params.digest as string | undefined
        if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
        const taskCtx = ctx ?? {upid: '', log: () => undefined, signal: new AbortController().signal}
        for (const k of del) {
          const v = vm.config[k]
          if (v === undefined) continue
          if (DISK_KEY_RE.test(k) && !/media=cdrom/.test(v)) {
            let n = 0
            while (vm.config[`unused${n}`] !== undefined) n++
            vm.config[`unused${n}`] = v.split(',')[0]!
          } else if (DISK_KEY_RE.test(k) && /-cloudinit\.qcow2/.test(v)) {
            await api.backend.deleteVolume(c.node.name, v.split(',')[0]!).catch(() => undefined)
          } else if (/^unused\d+$/.test(k)) {
            // PVE: "Unlink of unused[n] always cause physical removal" (of a volume no drive uses)
            const volid = v.split(',')[0]!
            const inUse = Object.entries(vm.config).some(([x, y]) => x !== k && (DISK_KEY_RE.test(x) || /^unused\d+$/.test(x)) && y.split(',')[0] === volid)
            if (!inUse) await api.backend.deleteVolume(c.node.name, volid).catch(() => undefined)
          }
          delete vm.config[k]
        }
        const params: RawParams = {}
        for (const k of setKeys) params[k] = c.params[k]!
        await api.applyConfig(c, vm, params, taskCtx)
        // PVE's write_vm_config: "remove 'unusedX' settings if we re-add a volume"
        const attached = new Set(Object.entries(vm.config).filter(([x]) => DISK_KEY_RE.test(x)).map(([, y]) => y.split(',')[0]))
        for (const x of Object.keys(vm.config)) if (/^unused\d+$/.test(x) && attached.has(vm.config[x]!.split(',')[0])) delete vm.config[x]
        if (setKeys.some((k) => /^(ci|sshkeys|ipconfig|nameserver|searchdomain|name)/.test(k)) && api.spec(c.node.name, vm).cloudInit) {
          await api.backend.regenerateCloudInit(api.spec(c.node.name, vm))
        }
      })
      api.changed()
    }

    h.vmConfigPost = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      return api.task(c, 'qmconfig', String(vm.vmid), async (ctx) => update(c, ctx))
    }

    h.vmConfigPut = async (c) => {
      await update(c)
      return null
    }

    h.vmStatusCurrent = async (c) => {
      const vm = api.vmOf(c)
      const st = api.backend.status(c.node.name, vm.vmid)
      // Hot path (status polling): read the few keys directly instead of building a full VmSpec.
      const cfg = vm.config
      const spec = {name: cfg.name ?? `VM${vm.vmid}`, cores: Number(cfg.cores ?? 1), sockets: Number(cfg.sockets ?? 1), memoryMb: Number(/^(?:current=)?(\d+)/.exec(cfg.memory ?? '512')?.[1] ?? 512), agent: /^(1|enabled=1)/.test(cfg.agent ?? '')}
      return {
        vmid: vm.vmid,
        name: spec.name,
        status: st.running ? 'running' : 'stopped',
        qmpstatus: st.qmpstatus,
        uptime: st.uptime,
        ...(st.pid ? {pid: st.pid} : {}),
        cpus: spec.cores * spec.sockets,
        cpu: st.cpu,
        maxmem: spec.memoryMb * 2 ** 20,
        mem: st.mem,
        ...(spec.agent ? {agent: 1} : {}),
        ...(vm.config.lock ? {lock: vm.config.lock} : {}),
        ...(vm.config.tags ? {tags: vm.config.tags} : {}),
        ...(vm.config.template === '1' ? {template: 1} : {}),
        ha: {managed: 0},
      }
    }

    h.vmStart = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      if (vm.config.template === '1') throw new HttpError(500, `you can't start a vm if it's a template`)
      if (api.backend.status(c.node.name, vm.vmid).running) throw new HttpError(500, `VM ${vm.vmid} already running`)
      return api.task(c, 'qmstart', String(vm.vmid), async (ctx) => api.startVm(c, vm, ctx))
    }

    h.vmShutdown = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      return api.task(c, 'qmshutdown', String(vm.vmid), async (ctx) => {
        if (!api.backend.status(c.node.name, vm.vmid).running) throw new Error(`VM ${vm.vmid} not running`)
        const timeoutS = c.params.timeout === undefined ? 180 : Number(c.params.timeout)
        await api.backend.shutdown(api.spec(c.node.name, vm), {timeoutS, forceStop: parseBool(c.params.forceStop) ?? false}, ctx)
      })
    }

    h.vmStop = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      return api.task(c, 'qmstop', String(vm.vmid), async (ctx) => {
        await api.backend.stop(c.node.name, vm.vmid, ctx)
      })
    }

    h.vmResize = async (c) => {
      const vm = api.vmOf(c)
      const key = String(c.params.disk)
      const cur = vm.config[key]
      if (!cur) throw new HttpError(500, `disk '${key}' does not exist`)
      api.checkLock(vm, c)
      const digest = c.params.digest as string | undefined
      if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
      const p = parsePropertyString(cur, DISK_PARAM_KEYS_ALL)
      if (p.media === 'cdrom') throw new HttpError(500, `you can't resize a cdrom`)
      const info = await api.backend.volumeInfo(c.node.name, p.file!)
      const curSize = info?.size ?? (p.size ? parseSize(p.size, 'B') : 0)
      const sizeText = String(c.params.size)
      const newSize = sizeText.startsWith('+') ? curSize + parseSize(sizeText.slice(1), 'B') : parseSize(sizeText, 'B')
      if (newSize < curSize) throw new HttpError(500, `shrinking disks is not supported`)
      return api.task(c, 'resize', String(vm.vmid), async (ctx) => {
        await api.withConfigLock(c, vm.vmid, async () => {
          if (newSize === curSize) {
            ctx.log(`disk '${key}' already has the requested size`)
            return
          }
          await api.backend.resizeDisk(api.spec(c.node.name, vm), key, newSize, ctx)
          vm.config[key] = cur.replace(/(,|^)size=[^,]*/, '') + `,size=${formatSize(newSize)}`
          vm.config[key] = vm.config[key].replace(/^,/, '')
        })
      })
    }

    h.vmMoveDisk = async (c) => {
      const vm = api.vmOf(c)
      const key = String(c.params.disk)
      const cur = vm.config[key]
      if (!cur) throw new HttpError(500, `disk '${key}' does not exist`)
      api.checkLock(vm, c)
      if (!c.params.storage) throw new ParamError({storage: 'parameter is missing and it is not optional'})
      const storage = String(c.params.storage)
      api.storageDef(storage, 'images')
      api.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
      const digest = c.params.digest as string | undefined
      if (digest && digest !== configDigest(vm.config)) throw new HttpError(500, DIGEST_MISMATCH)
      const p = parsePropertyString(cur, DISK_PARAM_KEYS_ALL)
      if (Object.keys(vm.snapshots).length > 0 && parseBool(c.params.delete)) throw new HttpError(500, `you can't move a disk with snapshots and delete the source`)
      vm.config.lock = 'disk'
      return api.task(c, 'qmmove', String(vm.vmid), async (ctx) => {
        try {
          const fmt = ((c.params.format as string) ?? (p.file!.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
          const vol = await api.backend.copyDisk(c.node.name, p.file!, vm.vmid, storage, fmt, ctx)
          vm.config[key] = cur.replace(p.file!, vol.volid)
          if (parseBool(c.params.delete)) await api.backend.deleteVolume(c.node.name, p.file!, ctx)
          else {
            let n = 0
            while (vm.config[`unused${n}`] !== undefined) n++
            vm.config[`unused${n}`] = p.file!
          }
        } finally {
          delete vm.config.lock
        }
      }, () => delete vm.config.lock)
    }

    h.snapList = async (c) => {
      const vm = api.vmOf(c)
      const out: Record<string, unknown>[] = Object.entries(vm.snapshots).map(([name, s]) => ({name, snaptime: s.snaptime, description: s.description, ...(s.parent ? {parent: s.parent} : {}), vmstate: 0}))
      out.push({name: 'current', digest: configDigest(vm.config), running: api.backend.status(c.node.name, vm.vmid).running ? 1 : 0, description: 'You are here!', ...(vm.config.parent ? {parent: vm.config.parent} : {})})
      return out
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
      const name = String(c.params.snapname)
      if (!vm.snapshots[name]) throw new HttpError(500, `snapshot '${name}' does not exist`)
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
      const name = String(c.params.snapname)
      const snap = vm.snapshots[name]
      if (!snap) throw new HttpError(500, `snapshot '${name}' does not exist`)
      api.checkLock(vm, c)
      vm.config.lock = 'rollback'
      return api.task(c, 'qmrollback', String(vm.vmid), async (ctx) => {
        try {
          if (api.backend.status(c.node.name, vm.vmid).running) await api.backend.stop(c.node.name, vm.vmid, ctx)
          await api.backend.snapshotRollback(api.spec(c.node.name, vm), name, ctx)
          vm.config = {...snap.config, parent: name}
        } finally {
          delete vm.config.lock
        }
        if (parseBool(c.params.start)) await api.startVm(c, vm, ctx)
      }, () => delete vm.config.lock)
    }

    h.cloudinitUpdate = async (c) => {
      const vm = api.vmOf(c)
      api.checkLock(vm, c)
      const spec = api.spec(c.node.name, vm)
      if (!spec.cloudInit) throw new HttpError(500, `no cloudinit drive found for VM ${vm.vmid}`)
      await api.withConfigLock(c, vm.vmid, () => api.backend.regenerateCloudInit(spec))
      return null
    }
  return h
}
