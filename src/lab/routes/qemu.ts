import {randomUUID} from 'node:crypto'

import {DIGEST_MISMATCH, HttpError, randomMac, type Ctx, type Handler} from '../context.js'
import type {LabApi} from '../api.js'
import {parseSize} from '../../size.js'
import {formatSize, ParamError, parseBool} from '../validate.js'
import {isCdrom, isCloudinitDrive, isDriveKey, nextUnused, pendingItems, printDrive, vmDigest, type VmRecord} from '../vmconfig.js'

/**
 * Lab handlers: VM list, create, destroy, clone, template, config GET/POST/PUT and pending,
 * status and power actions, resize, move_disk, unlink (snapshots and cloud-init: snapshots.ts).
 * Gathered by routes/index.ts under the handler ids of params.ts.
 */
export function qemuRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
  const memMb = (cfg: Record<string, string>) => Number(/^(?:current=)?(\d+)/.exec(cfg.memory ?? '')?.[1] ?? 512)

  h.vmList = async (c) => {
    const out: Record<string, unknown>[] = []
    for (const vm of c.node.vms.values()) {
      if (!api.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
      const st = api.backend.status(c.node.name, vm.vmid)
      const cfg = vm.config
      out.push({
        vmid: vm.vmid,
        name: cfg.name ?? `VM${vm.vmid}`,
        status: st.running ? 'running' : 'stopped',
        uptime: st.uptime,
        ...(st.pid ? {pid: st.pid} : {}),
        ...(cfg.tags ? {tags: cfg.tags} : {}),
        ...(cfg.lock ? {lock: cfg.lock} : {}),
        ...(cfg.template === '1' ? {template: 1} : {}),
        maxmem: memMb(cfg) * 2 ** 20,
        mem: st.mem,
        cpu: st.cpu,
        cpus: Number(cfg.cores ?? 1) * Number(cfg.sockets ?? 1),
        maxdisk: 0,
        disk: 0,
        netin: 0,
        netout: 0,
        diskread: 0,
        diskwrite: 0,
        ...(full(c) ? {qmpstatus: st.qmpstatus} : {}),
      })
    }
    return out
  }
  const full = (c: Ctx) => parseBool(c.params.full) === true

  h.vmIndex = async (c) => {
    api.vmOf(c)
    return ['agent', 'clone', 'cloudinit', 'config', 'move_disk', 'pending', 'resize', 'snapshot', 'status', 'template', 'unlink'].map((subdir) => ({subdir}))
  }

  // ---- create / destroy / clone / template -------------------------------------------------------

  h.vmCreate = async (c) => {
    const vmid = Number(c.params.vmid)
    const pool = c.params.pool as string | undefined
    if (pool !== undefined && !c.node.pools.has(pool)) throw new HttpError(500, `pool '${pool}' does not exist`)
    if (c.params.storage !== undefined) api.access.check(c.principal, `/storage/${c.params.storage}`, ['Datastore.AllocateSpace'])
    if (parseBool(c.params['ha-managed'])) api.access.check(c.principal, '/', ['Sys.Console'])
    if (parseBool(c.params.start)) {
      if (!api.access.has(c.principal, `/vms/${vmid}`, 'VM.PowerMgmt') && !(pool && api.access.has(c.principal, `/pool/${pool}`, 'VM.PowerMgmt'))) throw api.permissionError(`/vms/${vmid}`, 'VM.PowerMgmt')
    }
    if (!api.access.has(c.principal, `/vms/${vmid}`, 'VM.Allocate') && !(pool && api.access.has(c.principal, `/pool/${pool}`, 'VM.Allocate'))) throw api.permissionError()
    if (c.params.archive !== undefined) {
      // restore from a backup archive: the lab's storages hold no vzdump backups to restore
      for (const k of Object.keys(c.params)) if (isDriveKey(k)) throw new ParamError({[k]: "option conflicts with option 'archive'"})
      const archive = String(c.params.archive)
      const info = archive.includes(':') ? await api.backend.volumeInfo(c.node.name, archive) : undefined
      if (!info) throw new HttpError(500, `unable to restore VM ${vmid} - volume '${archive}' does not exist`)
      throw new HttpError(500, `unable to restore VM ${vmid} - the lab cannot restore vzdump archives ('${archive}')`)
    }
    const params = {...c.params}
    if (params.cdrom !== undefined) {
      params.ide2 = `${params.cdrom},media=cdrom`
      delete params.cdrom
    }
    c.params = params
    api.checkDriveAccess(c, params, params.storage as string | undefined)
    api.checkConfigPerms(c, undefined, Object.entries(params).filter(([k]) => !['node', 'vmid', 'start', 'storage', 'pool', 'archive', 'force', 'unique', 'live-restore', 'bwlimit', 'ha-managed', 'import-working-storage'].includes(k)).map(([k, v]) => [k, String(v)] as [string, string]))
    if (c.node.vms.has(vmid)) throw new HttpError(500, `unable to create VM ${vmid} - VM ${vmid} already exists on node '${c.node.name}'`)
    const vm = api.newVm(vmid)
    c.node.vms.set(vmid, vm)
    api.changed()
    return api.task(c, 'qmcreate', String(vmid), async (ctx) => {
      const created: string[] = []
      try {
        await api.withConfigLock(c, vmid, async () => api.createConfig(c, vm, ctx, created))
      } catch (e) {
        // PVE removes a half-created VM (and the disks it allocated).
        for (const volid of created) await api.backend.deleteVolume(c.node.name, volid).catch(() => undefined)
        await api.backend.destroyVm(c.node.name, vmid, [], ctx).catch(() => undefined)
        c.node.vms.delete(vmid)
        throw new Error(`unable to create VM ${vmid} - ${e instanceof ParamError ? Object.entries(e.errors).map(([k, v]) => `${k}: ${v}`).join('; ') : (e as Error).message}`)
      }
      if (pool !== undefined) c.node.pools.get(pool)?.members.add(`qemu/${vmid}`)
      if (parseBool(c.params.start)) {
        ctx.log('Execute autostart')
        await api.startVm(c, vm, ctx)
      }
    }, () => c.node.vms.delete(vmid))
  }

  h.vmDestroy = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    if (vm.config.protection === '1') throw new HttpError(500, `can't remove VM ${vm.vmid} - protection mode enabled`)
    if (api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} is running - destroy failed`)
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
        for (const p of c.node.pools.values()) p.members.delete(`qemu/${vm.vmid}`)
      })
    }, () => delete vm.config.lock)
  }

  h.vmClone = async (c) => {
    const src = api.vmOf(c)
    const newid = Number(c.params.newid)
    const pool = c.params.pool as string | undefined
    if (pool !== undefined && !c.node.pools.has(pool)) throw new HttpError(500, `pool '${pool}' does not exist`)
    if (c.params.target && c.params.target !== c.node.name) throw new HttpError(500, `Node '${c.params.target}' is not part of this lab node's cluster (each lab node is a single-node cluster)`)
    if (c.node.vms.has(newid)) throw new HttpError(500, `unable to create VM ${newid}: config file already exists`)
    api.checkLock(src, c)
    const isTemplate = src.config.template === '1'
    const full = c.params.full === undefined ? !isTemplate : parseBool(c.params.full)
    if (!full && !isTemplate) throw new HttpError(500, 'Linked clone feature is not supported for a non-template VM (use full=1)')
    if (c.params.storage && !full) throw new ParamError({storage: 'Storage migration requires full clone'})
    if (c.params.format && !full) throw new ParamError({format: 'Storage migration requires full clone'})
    if (c.params.storage) {
      api.storageDef(String(c.params.storage), 'images')
      api.access.check(c.principal, `/storage/${c.params.storage}`, ['Datastore.AllocateSpace'])
    }
    const target = api.newVm(newid)
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
          if (['lock', 'template', 'parent', 'snapstate', 'snaptime', 'vmstate', 'runningmachine', 'runningcpu', 'vmgenid', 'smbios1'].includes(k) || /^unused\d+$/.test(k)) continue
          if (isDriveKey(k)) {
            const d = api.parseDrive(k, v)
            if (isCdrom(d) && !isCloudinitDrive(d)) {
              cfg[k] = v
              continue
            }
            if (isCloudinitDrive(d)) {
              const vol = await api.backend.allocateCloudInit(c.node.name, newid, (c.params.storage as string) ?? d.file.split(':')[0]!, ctx)
              cfg[k] = printDrive({key: k, file: vol.volid, opts: {...d.opts, media: 'cdrom'}})
              continue
            }
            const storage = (c.params.storage as string | undefined) ?? d.file.split(':')[0]!
            if (full) api.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
            const fmt = ((c.params.format as string) ?? (d.file.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
            const vol = full ? await api.backend.copyDisk(c.node.name, d.file, newid, storage, fmt, ctx, snap) : await api.backend.linkDisk(c.node.name, d.file, newid, ctx)
            cfg[k] = printDrive({key: k, file: vol.volid, opts: {...d.opts, size: formatSize(vol.size)}})
            continue
          }
          if (/^net\d+$/.test(k)) {
            cfg[k] = v.replace(/([0-9A-F]{2}:){5}[0-9A-F]{2}/i, randomMac())
            continue
          }
          cfg[k] = v
        }
        cfg.name = c.params.name !== undefined ? String(c.params.name) : `Copy-of-VM-${src.config.name ?? src.vmid}`
        if (c.params.description !== undefined) cfg.description = String(c.params.description)
        cfg.smbios1 = `uuid=${randomUUID()}`
        cfg.vmgenid = randomUUID()
        target.config = cfg
        if (pool !== undefined) c.node.pools.get(pool)?.members.add(`qemu/${newid}`)
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
    if (vm.config.template === '1') throw new HttpError(500, "you can't convert a template to a template")
    if (api.running(c, vm)) throw new HttpError(500, "you can't convert a VM to template if VM is running")
    return api.task(c, 'qmtemplate', String(vm.vmid), async (ctx) => {
      await api.withConfigLock(c, vm.vmid, async () => {
        const map = await api.backend.convertToTemplate(api.spec(c.node.name, vm), ctx)
        for (const [k, v] of Object.entries(vm.config)) {
          if (!isDriveKey(k)) continue
          const f = v.split(',')[0]!
          if (map[f]) vm.config[k] = v.replace(f, map[f])
        }
        vm.config.template = '1'
      })
    })
  }

  // ---- configuration -----------------------------------------------------------------------------

  h.vmConfigGet = async (c) => {
    const vm = api.vmOf(c)
    const snap = c.params.snapshot as string | undefined
    const current = parseBool(c.params.current) === true
    if (snap && current) throw new ParamError({snapshot: "cannot use 'snapshot' parameter with 'current'", current: "cannot use 'snapshot' parameter with 'current'"})
    if (snap) {
      const s = vm.snapshots[snap]
      if (!s) throw new HttpError(500, `snapshot '${snap}' does not exist`)
      return api.configOut(vm, false, {...s.config, snaptime: String(s.snaptime), ...(s.description ? {description: s.description} : {})})
    }
    return api.configOut(vm, current)
  }

  h.vmConfigPost = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    return api.task(c, 'qmconfig', String(vm.vmid), async (ctx) => api.updateConfig(c, ctx))
  }

  h.vmConfigPut = async (c) => {
    const lines: string[] = []
    await api.updateConfig(c, {upid: '', log: (l) => void lines.push(l), signal: new AbortController().signal})
    return null
  }

  h.vmPending = async (c) => {
    const vm = api.vmOf(c)
    return pendingItems(vm, vmDigest(vm))
  }

  h.vmUnlink = async (c) => {
    const vm = api.vmOf(c)
    const ids = String(c.params.idlist).split(/[,;\s]+/).filter(Boolean)
    const force = parseBool(c.params.force) ?? false
    const params = {...c.params, delete: ids.join(','), ...(force ? {force: '1'} : {})}
    delete (params as Record<string, unknown>).idlist
    api.checkLock(vm, c)
    await api.updateConfig({...c, params}, {upid: '', log: () => undefined, signal: new AbortController().signal})
    return null
  }

  // ---- status and power --------------------------------------------------------------------------

  h.vmStatusIndex = async (c) => {
    api.vmOf(c)
    return ['current', 'reboot', 'reset', 'resume', 'shutdown', 'start', 'stop', 'suspend'].map((subdir) => ({subdir}))
  }

  h.vmStatusCurrent = async (c) => {
    const vm = api.vmOf(c)
    const st = api.backend.status(c.node.name, vm.vmid)
    // Hot path (status polling): read the few keys directly instead of building a full VmSpec.
    const cfg = vm.config
    return {
      vmid: vm.vmid,
      name: cfg.name ?? `VM${vm.vmid}`,
      status: st.running ? 'running' : 'stopped',
      qmpstatus: st.qmpstatus,
      uptime: st.uptime,
      ...(st.pid ? {pid: st.pid} : {}),
      cpus: Number(cfg.cores ?? 1) * Number(cfg.sockets ?? 1),
      cpu: st.cpu,
      maxmem: memMb(cfg) * 2 ** 20,
      mem: st.mem,
      maxdisk: 0,
      disk: 0,
      diskread: 0,
      diskwrite: 0,
      netin: 0,
      netout: 0,
      ...(/^(1|enabled=1)(,|$)/.test(cfg.agent ?? '') ? {agent: 1} : {}),
      ...(cfg.lock ? {lock: cfg.lock} : {}),
      ...(cfg.tags ? {tags: cfg.tags} : {}),
      ...(cfg.template === '1' ? {template: 1} : {}),
      ...(st.running ? {'running-qemu': api.pveVersion.startsWith('8') ? '9.2.0' : '10.1.2', 'running-machine': 'pc-i440fx-' + (api.pveVersion.startsWith('8') ? '9.2+pve1' : '10.1+pve1')} : {}),
      ha: {managed: 0},
    }
  }

  /** PVE's vm_start checks run inside the task: a start that cannot happen is a task that fails. */
  const startChecks = (c: Ctx, vm: VmRecord) => {
    api.checkLock(vm, c)
    if (vm.config.template === '1') throw new HttpError(500, "you can't start a vm if it's a template")
    if (api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} already running`)
  }

  h.vmStart = async (c) => {
    const vm = api.vmOf(c)
    if (parseBool(c.params.skiplock) && !api.access.isRoot(c.principal)) throw new ParamError({skiplock: 'Only root may use this option.'})
    for (const k of ['migratedfrom', 'migration_network', 'migration_type', 'stateuri', 'targetstorage', 'force-cpu', 'machine', 'nets-host-mtu', 'with-conntrack-state'] as const) {
      if (c.params[k] !== undefined && !api.access.isRoot(c.principal)) throw new ParamError({[k]: 'Only root may use this option.'})
    }
    if (c.params.migratedfrom !== undefined) throw new HttpError(500, 'the lab has one node per cluster: it cannot receive migrations')
    return api.task(c, 'qmstart', String(vm.vmid), async (ctx) => {
      await api.withConfigLock(c, vm.vmid, async () => {
        startChecks(c, vm)
        await api.startVm(c, vm, ctx)
      })
    })
  }

  h.vmShutdown = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    return api.task(c, 'qmshutdown', String(vm.vmid), async (ctx) => {
      if (!api.running(c, vm)) throw new Error(`VM ${vm.vmid} not running`)
      const timeoutS = c.params.timeout === undefined ? 180 : Number(c.params.timeout)
      await api.backend.shutdown(api.spec(c.node.name, vm), {timeoutS, forceStop: parseBool(c.params.forceStop) ?? false}, ctx)
      await afterStop(c, vm)
    })
  }

  h.vmStop = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    return api.task(c, 'qmstop', String(vm.vmid), async (ctx) => {
      await api.backend.stop(c.node.name, vm.vmid, ctx)
      await afterStop(c, vm)
    })
  }

  /** After a VM stops, its pending changes apply (qemu-server's vm_stop_cleanup, run by qmeventd). */
  const afterStop = async (c: Ctx, vm: VmRecord) => {
    if (api.running(c, vm)) return
    await api.withConfigLock(c, vm.vmid, () => api.applyPending(c, vm))
  }

  h.vmReboot = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    if (!api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} not running`)
    return api.task(c, 'qmreboot', String(vm.vmid), async (ctx) => {
      const timeoutS = c.params.timeout === undefined ? 180 : Number(c.params.timeout)
      await api.backend.shutdown(api.spec(c.node.name, vm), {timeoutS, forceStop: false}, ctx)
      await api.withConfigLock(c, vm.vmid, () => api.startVm(c, vm, ctx))
    })
  }

  h.vmReset = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    if (!api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} not running`)
    return api.task(c, 'qmreset', String(vm.vmid), async (ctx) => {
      // a hard reset: the VM process restarts with the same (current) config
      await api.backend.stop(c.node.name, vm.vmid, ctx)
      await api.backend.start(api.spec(c.node.name, vm), ctx)
    })
  }

  h.vmSuspend = async (c) => {
    const vm = api.vmOf(c)
    api.checkLock(vm, c)
    if (parseBool(c.params.todisk)) throw new HttpError(500, 'the lab does not save RAM state (todisk=1 is not supported)')
    if (!api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} not running`)
    return api.task(c, 'qmsuspend', String(vm.vmid), async () => api.backend.pause(c.node.name, vm.vmid))
  }

  h.vmResume = async (c) => {
    const vm = api.vmOf(c)
    if (!parseBool(c.params.nocheck)) api.checkLock(vm, c)
    if (!api.running(c, vm)) throw new HttpError(500, `VM ${vm.vmid} not running`)
    return api.task(c, 'qmresume', String(vm.vmid), async () => api.backend.resume(c.node.name, vm.vmid))
  }

  // ---- disks -------------------------------------------------------------------------------------

  /** What a disk change starts with: the VM, its disk named by `disk` (PVE: 500 when it has none), the lock checked. */
  const diskOf = (c: Ctx): {vm: VmRecord; key: string; cur: string} => {
    const vm = api.vmOf(c)
    const key = String(c.params.disk)
    const cur = vm.config[key]
    if (!cur) throw new HttpError(500, `disk '${key}' does not exist`)
    api.checkLock(vm, c)
    return {vm, key, cur}
  }

  h.vmResize = async (c) => {
    const {vm, key, cur} = diskOf(c)
    const digest = c.params.digest as string | undefined
    if (digest && digest !== vmDigest(vm)) throw new HttpError(500, DIGEST_MISMATCH)
    const d = api.parseDrive(key, cur)
    if (isCdrom(d)) throw new HttpError(500, "you can't resize a cdrom")
    const info = await api.backend.volumeInfo(c.node.name, d.file)
    const curSize = info?.size ?? (d.opts.size ? parseSize(d.opts.size, 'B') : 0)
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
        vm.config[key] = printDrive({...d, opts: {...d.opts, size: formatSize(newSize)}})
      })
    })
  }

  h.vmMoveDisk = async (c) => {
    const {vm, key, cur} = diskOf(c)
    if (c.params['target-vmid'] !== undefined && Number(c.params['target-vmid']) !== vm.vmid) return reassign(c, vm, key, cur)
    if (!c.params.storage) throw new ParamError({storage: 'parameter is missing and it is not optional'})
    const storage = String(c.params.storage)
    api.storageDef(storage, 'images')
    api.access.check(c.principal, `/storage/${storage}`, ['Datastore.AllocateSpace'])
    const digest = c.params.digest as string | undefined
    if (digest && digest !== vmDigest(vm)) throw new HttpError(500, DIGEST_MISMATCH)
    const d = api.parseDrive(key, cur)
    if (Object.keys(vm.snapshots).length > 0 && parseBool(c.params.delete)) throw new HttpError(500, "you can't move a disk with snapshots and delete the source")
    vm.config.lock = 'disk'
    return api.task(c, 'qmmove', String(vm.vmid), async (ctx) => {
      try {
        const fmt = ((c.params.format as string) ?? (d.file.endsWith('.raw') ? 'raw' : 'qcow2')) as 'qcow2' | 'raw'
        const vol = await api.backend.copyDisk(c.node.name, d.file, vm.vmid, storage, fmt, ctx)
        vm.config[key] = printDrive({...d, file: vol.volid})
        if (parseBool(c.params.delete)) await api.backend.deleteVolume(c.node.name, d.file, ctx)
        else vm.config[nextUnused(vm.config)] = d.file
      } finally {
        delete vm.config.lock
      }
    }, () => delete vm.config.lock)
  }

  /**
   * move_disk with target-vmid: the disk leaves this VM for another (PVE renames the volume to the
   * target's name; the lab copies it to a volume of the target and frees the old one).
   */
  const reassign = (c: Ctx, vm: VmRecord, key: string, cur: string): string => {
    const targetVmid = Number(c.params['target-vmid'])
    const target = c.node.vms.get(targetVmid)
    if (!target) throw new HttpError(500, `Configuration file 'nodes/${c.node.name}/qemu-server/${targetVmid}.conf' does not exist`)
    if (c.params.storage !== undefined) throw new ParamError({storage: "cannot be combined with 'target-vmid'"})
    api.access.check(c.principal, `/vms/${targetVmid}`, ['VM.Config.Disk'])
    if (target.config.lock) throw new HttpError(500, `VM is locked (${target.config.lock})`)
    const targetDigest = c.params['target-digest'] as string | undefined
    if (targetDigest && targetDigest !== vmDigest(target)) throw new HttpError(500, DIGEST_MISMATCH)
    const targetKey = String(c.params['target-disk'] ?? key)
    if (target.config[targetKey] !== undefined || target.pending[targetKey] !== undefined) throw new HttpError(500, `Target disk key '${targetKey}' is already in use for VM ${targetVmid}`)
    const unused = /^unused\d+$/.test(key)
    const d = unused ? {key, file: cur.split(',')[0]!, opts: {}} : api.parseDrive(key, cur)
    if (!unused && isCdrom(d)) throw new HttpError(500, 'reassigning a CD-ROM is not possible')
    if (!unused && api.running(c, vm)) throw new HttpError(500, `can't move disk ${key} of running VM ${vm.vmid} to another VM`)
    vm.config.lock = 'disk'
    target.config.lock = 'disk'
    return api.task(c, 'qmmove', String(vm.vmid), async (ctx) => {
      try {
        const fmt = (d.file.endsWith('.raw') ? 'raw' : 'qcow2') as 'qcow2' | 'raw'
        const vol = await api.backend.copyDisk(c.node.name, d.file, targetVmid, d.file.split(':')[0]!, fmt, ctx)
        await api.backend.deleteVolume(c.node.name, d.file, ctx)
        delete vm.config[key]
        target.config[targetKey] = /^unused\d+$/.test(targetKey) ? vol.volid : printDrive({...d, key: targetKey, file: vol.volid, opts: {...d.opts, size: formatSize(vol.size)}})
        ctx.log(`moved ${key} of VM ${vm.vmid} to ${targetKey} of VM ${targetVmid} as '${vol.volid}'`)
      } finally {
        delete vm.config.lock
        delete target.config.lock
      }
    }, () => {
      delete vm.config.lock
      delete target.config.lock
    })
  }

  return h
}
