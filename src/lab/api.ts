import {randomUUID} from 'node:crypto'

import {LabApiCore} from './api-core.js'
import type {TaskContext} from './backend.js'
import {CONFIG_DIGEST_MISMATCH, hashPassword, HttpError, type Ctx} from './context.js'
import {normalizeTags, ParamError, parseBool, parsePropertyString, splitList, type RawParams} from './validate.js'
import {
  CALL_PARAMS,
  defaultBootOrder,
  hotplugFeatures,
  isCdrom,
  isCloudinitDrive,
  isCloudinitKey,
  isDriveKey,
  isFastPlug,
  nextUnused,
  normaliseOption,
  vmDigest,
  withPending,
  type Drive,
  type VmRecord,
} from './vmconfig.js'

export {configDigest, type VmRecord} from './vmconfig.js'
export {agentEnabled, CONFIG_DIGEST_MISMATCH, DIGEST_MISMATCH, hashPassword, HttpError, MASK, randomMac, type Ctx, type Handler, type LabApiOptions, type NodeState, type PoolRecord} from './context.js'

/**
 * The PVE semantics of the lab: VM configs (source of truth, with PVE's [PENDING] section and
 * hot-plug rules), locks, digests, tasks, permissions and every endpoint's behaviour. The HTTP
 * layer (server.ts) parses requests, authenticates, validates parameters against the PVE schema
 * and runs the schema's permission check, then calls the route's handler (src/lab/routes/,
 * gathered by routes/index.ts); backends do the machine work. This class holds the config
 * changes and the lifecycle; the model, drives and permission checks are in api-core.ts.
 */
export class LabApi extends LabApiCore {
  // ---- applying configuration ---------------------------------------------------------------------

  /**
   * Regenerates the cloud-init media when the VM has a cloud-init drive (PVE does it at start,
   * on `PUT …/cloudinit`, and when applying pending cloud-init changes) and records what it holds.
   */
  async regenerateCloudInit(node: string, vm: VmRecord): Promise<void> {
    const spec = this.spec(node, vm)
    if (!spec.cloudInit) return
    await this.backend.regenerateCloudInit(spec)
    vm.cloudinitApplied = Object.fromEntries(Object.entries(vm.config).filter(([k]) => isCloudinitKey(k) || k === 'name'))
  }

  /** A drive leaves the config: the cloud-init volume is freed, a disk becomes `unusedN` (vmconfig_register_unused_drive). */
  async #registerUnused(c: Ctx, vm: VmRecord, d: Drive): Promise<void> {
    if (isCloudinitDrive(d)) {
      await this.backend.deleteVolume(c.node.name, d.file).catch(() => undefined)
      return
    }
    if (isCdrom(d) || !d.file.includes(':')) return
    if (!new RegExp(`^[^:]+:(?:base-\\d+-disk-\\d+\\.\\w+/)?${vm.vmid}/`).test(d.file)) return // not this VM's volume
    const used = Object.entries(vm.config).some(([k, v]) => /^unused\d+$/.test(k) && v === d.file)
    if (!used) vm.config[nextUnused(vm.config)] = d.file
  }

  /** Removes `unusedN` entries whose volume is attached again (write_vm_config does it). */
  #dropReattachedUnused(vm: VmRecord): void {
    const attached = new Set(Object.entries(vm.config).filter(([k]) => isDriveKey(k)).map(([k, v]) => this.parseDrive(k, v).file))
    for (const k of Object.keys(vm.config)) if (/^unused\d+$/.test(k) && attached.has(vm.config[k]!)) delete vm.config[k]
  }

  /** vmconfig_apply_pending: the VM is stopped, every pending change goes into the config. */
  async applyPending(c: Ctx, vm: VmRecord): Promise<void> {
    if (Object.keys(vm.pending).length === 0 && vm.pendingDelete.size === 0) return
    let cloudinit = false
    for (const [k, force] of [...vm.pendingDelete].sort(([a], [b]) => a.localeCompare(b))) {
      const cur = vm.config[k]
      if (cur !== undefined && isDriveKey(k)) {
        const d = this.parseDrive(k, cur)
        if (force && !isCdrom(d)) await this.#deallocate(c, vm, d)
        else await this.#registerUnused(c, vm, d)
      }
      if (cur !== undefined && isCloudinitKey(k)) cloudinit = true
      delete vm.config[k]
      vm.pendingDelete.delete(k)
    }
    for (const [k, v] of Object.entries(vm.pending)) {
      const cur = vm.config[k]
      if (cur !== undefined && isDriveKey(k) && this.parseDrive(k, cur).file !== this.parseDrive(k, v).file) await this.#registerUnused(c, vm, this.parseDrive(k, cur))
      if (isCloudinitKey(k) || (isDriveKey(k) && isCloudinitDrive(this.parseDrive(k, v)))) cloudinit = true
      vm.config[k] = v
      delete vm.pending[k]
    }
    this.#dropReattachedUnused(vm)
    if (cloudinit) await this.regenerateCloudInit(c.node.name, vm)
  }

  /** Frees a drive's volume (force delete, or an unusedN removed): PVE's try_deallocate_drive. */
  async #deallocate(c: Ctx, vm: VmRecord, d: Drive): Promise<void> {
    if (!new RegExp(`^[^:]+:(?:base-\\d+-disk-\\d+\\.\\w+/)?${vm.vmid}/`).test(d.file)) return
    const inSnapshot = Object.values(vm.snapshots).some((s) => Object.entries(s.config).some(([k, v]) => (isDriveKey(k) || /^unused\d+$/.test(k)) && v.split(',')[0] === d.file))
    if (inSnapshot) throw new HttpError(500, `unable to delete '${d.file}' - volume is still in use (snapshot?)`)
    this.access.check(c.principal, `/storage/${d.file.split(':')[0]}`, ['Datastore.AllocateSpace'])
    await this.backend.deleteVolume(c.node.name, d.file).catch(() => undefined)
  }

  /**
   * vmconfig_hotplug_pending: the VM runs; what can change live is applied (the fast-plug and
   * cloud-init options always; disks with the `disk` hotplug feature, NICs with `network`, …),
   * the rest stays pending until the next start. Errors are PVE's "hotplug problem - …".
   */
  async hotplugPending(c: Ctx, vm: VmRecord, ctx: TaskContext): Promise<Record<string, string>> {
    const errors: Record<string, string> = {}
    for (const [k, v] of Object.entries(vm.pending)) {
      if (isFastPlug(k)) {
        vm.config[k] = v
        delete vm.pending[k]
      }
    }
    const features = hotplugFeatures(vm.config)
    for (const [k, force] of [...vm.pendingDelete].sort(([a], [b]) => a.localeCompare(b))) {
      const cur = vm.config[k]
      let apply = false
      try {
        if (k === 'hotplug') apply = !/(cpu|memory)/.test(vm.config.hotplug ?? '')
        else if (k === 'tablet' || /^usb\d+$/.test(k)) apply = features.has('usb')
        else if (k === 'vcpus') apply = features.has('cpu')
        else if (k === 'balloon') apply = vm.config.balloon !== '0'
        else if (isFastPlug(k)) apply = true
        else if (/^net\d+$/.test(k)) apply = features.has('network')
        else if (isDriveKey(k)) {
          if (!features.has('disk') || /^(efidisk|ide|sata|tpmstate)\d+$/.test(k)) apply = false
          else {
            if (cur !== undefined) {
              const d = this.parseDrive(k, cur)
              await this.backend.unplugDisk(this.spec(c.node.name, vm), k, ctx)
              if (force && !isCdrom(d)) await this.#deallocate(c, vm, d)
              else await this.#registerUnused(c, vm, d)
            }
            apply = true
          }
        } else if (k === 'memory') apply = features.has('memory')
        else if (k === 'cpuunits' || k === 'cpulimit') apply = true
      } catch (e) {
        errors[k] = `hotplug problem - ${(e as Error).message}`
        continue
      }
      if (apply) {
        delete vm.config[k]
        vm.pendingDelete.delete(k)
      }
    }
    for (const [k, v] of Object.entries(vm.pending)) {
      const cur = vm.config[k]
      let apply = false
      try {
        if (k === 'hotplug') apply = !/(cpu|memory)/.test(v) && !/(cpu|memory)/.test(vm.config.hotplug ?? '')
        else if (k === 'tablet' || /^usb\d+$/.test(k)) apply = features.has('usb')
        else if (k === 'vcpus') apply = features.has('cpu')
        else if (k === 'balloon') apply = (vm.config.balloon ?? '1') !== '0' && v !== '0'
        else if (/^net\d+$/.test(k)) apply = features.has('network') || (cur !== undefined && this.#netLiveChange(k, cur, v))
        else if (isDriveKey(k)) apply = await this.#hotplugDrive(c, vm, k, cur, v, features.has('disk'), ctx)
        else if (k === 'memory') apply = features.has('memory')
        else if (k === 'cpuunits' || k === 'cpulimit') apply = true
        else if (k === 'agent') apply = cur !== undefined && this.#agentLiveChange(cur, v)
      } catch (e) {
        errors[k] = `hotplug problem - ${(e as Error).message}`
        continue
      }
      if (apply) {
        vm.config[k] = v
        delete vm.pending[k]
      }
    }
    this.#dropReattachedUnused(vm)
    return errors
  }

  /** vmconfig_update_net without the `network` feature: bridge, tag, firewall, link_down, rate change live; the model or MAC do not. */
  #netLiveChange(k: string, cur: string, next: string): boolean {
    const a = this.parseNet(k, cur)
    const b = this.parseNet(k, next)
    return a.model === b.model && a.macaddr === b.macaddr && a.queues === b.queues
  }

  /** vmconfig_update_agent: only the options that do not need a new device (fstrim, freeze) change live. */
  #agentLiveChange(cur: string, next: string): boolean {
    const f = this.schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')!.parameters!.properties!.agent!.format as never
    const a = parsePropertyString(cur, f)
    const b = parsePropertyString(next, f)
    return (a.enabled ?? '0') === (b.enabled ?? '0') && (a.type ?? 'virtio') === (b.type ?? 'virtio')
  }

  /** vmconfig_update_disk on a running VM; true when the change was applied. */
  async #hotplugDrive(c: Ctx, vm: VmRecord, k: string, cur: string | undefined, next: string, hotplug: boolean, ctx: TaskContext): Promise<boolean> {
    if (k === 'efidisk0' || k === 'tpmstate0') return false
    const d = this.parseDrive(k, next)
    if (cur !== undefined) {
      const old = this.parseDrive(k, cur)
      if ((d.opts.media ?? 'disk') !== (old.opts.media ?? 'disk') && !isCloudinitDrive(d) && !isCloudinitDrive(old)) throw new Error('unable to change media type')
      if (isCdrom(old)) {
        // change_medium: a CD-ROM's medium changes live
        if (d.file === 'none' && isCloudinitDrive(old)) await this.#registerUnused(c, vm, old)
        return true
      }
      if (d.file === old.file) {
        // the same volume with other options: these need a new device
        const cold = ['aio', 'discard', 'iothread', 'queues', 'product', 'cache', 'ssd', 'vendor', 'ro']
        return !cold.some((o) => (d.opts[o] ?? '') !== (old.opts[o] ?? ''))
      }
      if (!hotplug) return false
      await this.backend.unplugDisk(this.spec(c.node.name, vm), k, ctx)
      await this.#registerUnused(c, vm, old)
      delete vm.config[k]
    }
    if (!hotplug || /^(ide|sata)\d+$/.test(k)) return false
    const spec = this.spec(c.node.name, vm)
    await this.backend.hotplugDisk(spec, this.vmDisk(d), ctx)
    return true
  }

  /**
   * The config change of POST/PUT …/config (qemu-server's update_vm_api): deletions and new values
   * go to [PENDING] (drives are allocated now), then they are applied at once when the VM is
   * stopped, or hot-plugged as far as the VM allows when it runs.
   */
  async updateConfig(c: Ctx, ctx: TaskContext): Promise<void> {
    const vm = this.vmOf(c)
    const params: RawParams = {}
    for (const [k, v] of Object.entries(c.params)) if (!CALL_PARAMS.has(k)) params[k] = v
    const force = parseBool(c.params.force) ?? false
    const revert = c.params.revert ? splitList(String(c.params.revert)) : []
    const del = (c.params.delete ? splitList(String(c.params.delete)) : []).map((k) => (k === 'cdrom' ? 'ide2' : k))
    if (params.cdrom !== undefined) {
      params.ide2 = `${params.cdrom},media=cdrom`
      delete params.cdrom
    }
    if (del.length === 0 && revert.length === 0 && Object.keys(params).length === 0) throw new HttpError(500, 'no options specified')
    const optionExists = (k: string) => this.#optionExists(k)
    for (const k of revert) {
      if (!optionExists(k)) throw new ParamError({revert: `unknown option '${k}'`})
      if (params[k] !== undefined) throw new ParamError({delete: `you can't use '-${k}' and -revert ${k}' at the same time`})
    }
    for (const k of del) {
      if (params[k] !== undefined) throw new ParamError({delete: `you can't use '-${k}' and -delete ${k}' at the same time`})
      if (revert.includes(k)) throw new ParamError({revert: `you can't use '-delete ${k}' and -revert ${k}' at the same time`})
      if (!optionExists(k)) throw new ParamError({delete: `unknown option '${k}'`})
    }
    for (const [k, v] of Object.entries(params)) {
      if (/^net\d+$/.test(k)) params[k] = this.normaliseNet(k, String(v))
      else if (k === 'vmgenid' && v === '1') params[k] = randomUUID()
    }
    this.checkConfigPerms(c, vm, [...del.map((k) => [k, vm.config[k] ?? vm.pending[k]] as [string, string | undefined]), ...Object.entries(params).map(([k, v]) => [k, String(v)] as [string, string])])
    this.checkDriveAccess(c, params)
    await this.withConfigLock(c, vm.vmid, async () => {
      const digest = c.params.digest as string | undefined
      if (digest && digest !== vmDigest(vm)) throw new HttpError(500, CONFIG_DIGEST_MISMATCH)
      this.checkLock(vm, c)
      this.#checkBalloon(vm, params)
      for (const k of revert) {
        if (vm.config[k] !== undefined) params[k] = vm.config[k]!
        else if (vm.pending[k] !== undefined) del.push(k)
      }
      // deletions → [PENDING] (unused disks are freed at once; tags go at once)
      let bootOrder = /order=([^,]+)/.exec(withPending(vm).boot ?? '')?.[1]?.split(';') ?? []
      const bootDeleted = del.includes('boot')
      for (const k of del) {
        const val = vm.config[k] ?? vm.pending[k]
        if (val === undefined) {
          ctx.log(`cannot delete '${k}' - not set in current configuration!`)
          continue
        }
        const wasPending = vm.pending[k] !== undefined
        delete vm.pending[k]
        if (!bootDeleted && bootOrder.includes(k)) {
          bootOrder = bootOrder.filter((x) => x !== k)
          vm.pending.boot = bootOrder.length > 0 ? `order=${bootOrder.join(';')}` : ''
        }
        if (/^unused\d+$/.test(k)) {
          if (vm.config.protection === '1') throw new HttpError(500, `can't remove unused disk '${val}' - protection mode enabled`)
          const volid = val.split(',')[0]!.replace(/^file=/, '')
          await this.#deallocate(c, vm, {key: k, file: volid, opts: {}})
          delete vm.config[k]
        } else if (isDriveKey(k)) {
          if (vm.config.protection === '1') throw new HttpError(500, `can't remove drive '${k}' - protection mode enabled`)
          if (wasPending) await this.#registerUnused(c, vm, this.parseDrive(k, val))
          if (vm.config[k] !== undefined) vm.pendingDelete.set(k, force)
        } else if (k === 'tags') {
          delete vm.config.tags
        } else if (vm.config[k] !== undefined) vm.pendingDelete.set(k, force)
      }
      // new values → [PENDING]
      const created: string[] = []
      try {
        for (const [k, raw] of Object.entries(params)) {
          let v = Array.isArray(raw) ? raw.join(',') : raw
          if (vm.pending[k] !== undefined && vm.pending[k] === v) continue
          if (isDriveKey(k)) {
            if (vm.pending[k] !== undefined) await this.#registerUnused(c, vm, this.parseDrive(k, vm.pending[k]!))
            v = await this.createDrive(c, vm, k, v, ctx, undefined, created)
            const drive = this.parseDrive(k, v)
            if (bootOrder.length > 0 && isCdrom(drive) && !bootOrder.includes(k) && !bootDeleted) {
              bootOrder.push(k)
              vm.pending.boot = `order=${bootOrder.join(';')}`
            }
          } else if (k === 'tags') v = normalizeTags(v)
          else if (k === 'cipassword') {
            vm.config.cipassword = await hashPassword(v)
            vm.pendingDelete.delete(k)
            continue
          } else if (k === 'boot') {
            const order = /(?:^|,)order=([^,]+)/.exec(v)?.[1]
            if (order) {
              for (const dev of order.split(';')) {
                const exists = vm.config[dev] !== undefined || vm.pending[dev] !== undefined || params[dev] !== undefined
                if (!exists || del.includes(dev)) throw new HttpError(500, `invalid bootorder: device '${dev}' does not exist'`)
              }
              v = `order=${order}`
              if (vm.config.bootdisk) vm.pendingDelete.set('bootdisk', false)
            }
          } else v = normaliseOption(this.schema, k, v)
          vm.pending[k] = v
          vm.pendingDelete.delete(k)
        }
      } catch (e) {
        for (const volid of created) await this.backend.deleteVolume(c.node.name, volid).catch(() => undefined)
        throw e
      }
      // cleanup_pending: a pending value equal to the current one is no change
      for (const [k, v] of Object.entries(vm.pending)) if (vm.config[k] === v) delete vm.pending[k]
      for (const k of [...vm.pendingDelete.keys()]) if (vm.config[k] === undefined) vm.pendingDelete.delete(k)
      this.changed()
      if (Object.keys(vm.pending).length === 0 && vm.pendingDelete.size === 0) return
      if (this.running(c, vm)) {
        const errors = await this.hotplugPending(c, vm, ctx)
        if (Object.keys(errors).length > 0) throw new ParamError(errors)
        if (Object.keys(params).some((k) => isCloudinitKey(k)) && hotplugFeatures(vm.config).has('cloudinit')) await this.regenerateCloudInit(c.node.name, vm)
      } else {
        await this.applyPending(c, vm)
        if (Object.keys(params).some((k) => isCloudinitKey(k) || k === 'name')) await this.regenerateCloudInit(c.node.name, vm)
      }
    })
    this.changed()
  }

  #optionExists(k: string): boolean {
    const props = this.schema.method('POST', '/nodes/{node}/qemu/{vmid}/config')!.parameters!.properties!
    if (CALL_PARAMS.has(k) || k === 'cdrom') return k === 'cdrom'
    return props[k] !== undefined || /^([a-z]+)\d+$/.test(k) && props[`${k.replace(/\d+$/, '')}[n]`] !== undefined
  }

  /** "balloon value too large (must be smaller than assigned memory)". */
  #checkBalloon(vm: VmRecord, params: RawParams): void {
    if (params.memory === undefined && params.balloon === undefined) return
    const memory = String(params.memory ?? vm.pending.memory ?? vm.config.memory ?? '512')
    const max = Number(/^(?:current=)?(\d+)/.exec(memory)?.[1] ?? 512)
    const balloon = Number(params.balloon ?? vm.pending.balloon ?? vm.config.balloon ?? 0)
    if (balloon && balloon > max) throw new HttpError(500, 'balloon value too large (must be smaller than assigned memory)')
  }

  /** Fills a new VM's config from the create parameters (create_vm's createfn). */
  async createConfig(c: Ctx, vm: VmRecord, ctx: TaskContext, created: string[]): Promise<void> {
    const storage = c.params.storage as string | undefined
    const cfg: Record<string, string> = {}
    for (const [k, raw] of Object.entries(c.params)) {
      if (CALL_PARAMS.has(k)) continue
      let v = Array.isArray(raw) ? raw.join(',') : raw
      if (isDriveKey(k)) v = await this.createDrive(c, vm, k, v, ctx, storage, created)
      else if (/^net\d+$/.test(k)) v = this.normaliseNet(k, v)
      else if (k === 'tags') v = normalizeTags(v)
      else if (k === 'cipassword') v = await hashPassword(v)
      else v = normaliseOption(this.schema, k, v)
      cfg[k] = v
    }
    if (!cfg.boot) {
      const boot = defaultBootOrder(cfg, this.schema)
      if (boot) cfg.boot = boot
    }
    cfg.smbios1 ??= `uuid=${randomUUID()}`
    if (cfg.vmgenid === undefined || cfg.vmgenid === '1') cfg.vmgenid = randomUUID()
    cfg.meta = `creation-qemu=${this.pveVersion.startsWith('8') ? '9.0.2' : '10.1.2'},ctime=${Math.floor(Date.now() / 1000)}`
    vm.config = cfg
  }

  /** GET …/config: the config (pending applied unless `current`), typed per schema, cipassword masked, with its digest. */

  // ---- lifecycle ------------------------------------------------------------------------------------

  async startVm(c: Ctx, vm: VmRecord, ctx: TaskContext): Promise<void> {
    await this.applyPending(c, vm)
    const spec = this.spec(c.node.name, vm)
    if (spec.cloudInit) await this.regenerateCloudInit(c.node.name, vm)
    await this.backend.start(this.spec(c.node.name, vm), ctx)
  }

  /** Storage upload/download: the server has the file in `tmpPath` (checksum verified). */
  importUploaded(c: Ctx, source: string | ((ctx: TaskContext) => Promise<string>), type: 'imgcopy' | 'download'): string {
    const storage = String(c.params.storage)
    const content = String(c.params.content)
    this.storageDef(storage, content)
    const filename = String(c.params.filename).replace(/[^a-zA-Z0-9_.\-]/g, '_')
    if (content === 'import' && !/\.(qcow2|raw|vmdk|img|ova)$/.test(filename)) throw new ParamError({filename: `invalid filename or wrong extension`})
    if (content === 'iso' && !/\.(iso|img)$/.test(filename)) throw new ParamError({filename: `wrong file extension`})
    return this.task(c, type, '', async (ctx) => {
      ctx.log(`target node: ${c.node.name}`)
      ctx.log(`target file: ${this.storages.get(storage)!.path(c.node.name)}/${content}/${filename}`)
      // An upload arrives as a verified temp file; a download is fetched (and verified) inside the task.
      const tmpPath = typeof source === 'string' ? source : await source(ctx)
      await this.backend.importFile(c.node.name, storage, content as never, filename, tmpPath, ctx)
      ctx.log(`file size is: ${c.upload?.size ?? 0}`)
    })
  }

}
