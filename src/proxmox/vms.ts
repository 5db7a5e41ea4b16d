import {TimeoutError} from '../errors.js'
import {PveApiError, PveTaskError} from './errors.js'
import type {PveCloneOptions, PveNodeInfo, PveParams, PveResource, PveVersion, PveVmConfig, PveVmStatus, WaitOptions} from './types.js'
import {seg} from './encoding.js'
import {isNoSuchVm} from './transport.js'
import {PveTasks} from './tasks.js'

/** Proxmox VE cluster reads and VMs: configs, status, lifecycle, disks, snapshots, cloud-init. */
export class PveVms extends PveTasks {
  // ---------------------------------------------------------------------------------------------
  // cluster, nodes

  version(): Promise<PveVersion> {
    return this.get<PveVersion>('/version', undefined, this.where())
  }

  async nodes(): Promise<PveNodeInfo[]> {
    return (await this.get<PveNodeInfo[]>('/nodes', undefined, this.where())) ?? []
  }

  async clusterResources(type?: 'vm' | 'storage' | 'node'): Promise<PveResource[]> {
    return (await this.get<PveResource[]>('/cluster/resources', {type}, this.where())) ?? []
  }

  async nextVmid(): Promise<number> {
    const v = await this.get<string | number>('/cluster/nextid', undefined, this.where())
    const n = Number(v)
    if (!Number.isInteger(n)) throw new PveApiError({status: 200, pveMessage: `unexpected next id ${JSON.stringify(v)}`, method: 'GET', path: '/cluster/nextid', where: this.where()})
    return n
  }

  // ---------------------------------------------------------------------------------------------
  // VMs

  protected vmPath(node: string, vmid: number, rest = ''): string {
    return `/nodes/${seg(node)}/qemu/${seg(vmid)}${rest}`
  }

  async vmConfig(node: string, vmid: number): Promise<PveVmConfig | undefined> {
    try {
      return await this.get<PveVmConfig>(this.vmPath(node, vmid, '/config'), undefined, this.where(node, vmid))
    } catch (err) {
      if (isNoSuchVm(err)) return undefined
      throw err
    }
  }

  async vmStatus(node: string, vmid: number): Promise<PveVmStatus | undefined> {
    try {
      return await this.get<PveVmStatus>(this.vmPath(node, vmid, '/status/current'), undefined, this.where(node, vmid))
    } catch (err) {
      if (isNoSuchVm(err)) return undefined
      throw err
    }
  }

  /** Waits until the VM carries no lock (after a create/clone whose task we could not follow). */
  protected async waitUnlocked(node: string, vmid: number, type: string): Promise<boolean> {
    const start = this.now()
    let d = this.pollInitial
    for (;;) {
      const st = await this.vmStatus(node, vmid)
      if (!st) return false
      if (!st.lock) return true
      if (this.now() - start > this.taskTimeout(type)) {
        throw new TimeoutError(`VM ${vmid} still locked (${st.lock}) after ${Math.round((this.now() - start) / 1000)} s`, {where: this.where(node, vmid)})
      }
      await this.pause(d)
      d = Math.min(this.pollMax, Math.round(d * 1.5))
    }
  }

  async createVm(node: string, vmid: number, params: PveParams, wait?: WaitOptions): Promise<void> {
    const where = this.where(node, vmid)
    await this.runTask('POST', node, `/nodes/${seg(node)}/qemu`, {...params, vmid}, {
      where,
      type: 'qmcreate',
      taskId: vmid,
      wait,
      state: async () => ((await this.vmConfig(node, vmid)) ? this.waitUnlocked(node, vmid, 'qmcreate') : false),
    })
  }

  async cloneVm(node: string, vmid: number, newid: number, opts: PveCloneOptions = {}, wait?: WaitOptions): Promise<void> {
    const where = this.where(node, newid)
    await this.runTask('POST', node, this.vmPath(node, vmid, '/clone'), {newid, name: opts.name, full: opts.full, storage: opts.storage, target: opts.target, description: opts.description}, {
      where,
      type: 'qmclone',
      taskId: vmid,
      wait,
      state: async () => ((await this.vmConfig(opts.target ?? node, newid)) ? this.waitUnlocked(opts.target ?? node, newid, 'qmclone') : false),
    })
  }

  async convertToTemplate(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/template'), undefined, {
      where: this.where(node, vmid),
      type: 'qmtemplate',
      taskId: vmid,
      wait,
      state: async () => Number((await this.vmConfig(node, vmid))?.template ?? 0) === 1,
    })
  }

  async updateVmConfig(node: string, vmid: number, params: PveParams & {digest?: string; delete?: string}, wait?: WaitOptions): Promise<void> {
    // PUT …/config is synchronous and idempotent (same values again; with `digest`, a second
    // send after a lost answer fails with "checksum mismatch" instead of applying twice).
    void wait
    await this.request('PUT', this.vmPath(node, vmid, '/config'), params, {where: this.where(node, vmid), idempotent: true})
  }

  async startVm(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    try {
      await this.runTask('POST', node, this.vmPath(node, vmid, '/status/start'), undefined, {
        where: this.where(node, vmid),
        type: 'qmstart',
        taskId: vmid,
        wait,
        state: async () => (await this.vmStatus(node, vmid))?.status === 'running',
      })
    } catch (err) {
      if (err instanceof PveApiError && /already running/.test(err.pveMessage)) return
      throw err
    }
  }

  async shutdownVm(node: string, vmid: number, opts: WaitOptions & {forceStopAfterS?: number} = {}): Promise<void> {
    const timeoutS = opts.forceStopAfterS
    try {
      await this.runTask('POST', node, this.vmPath(node, vmid, '/status/shutdown'), timeoutS === undefined ? undefined : {timeout: timeoutS, forceStop: true}, {
        where: this.where(node, vmid),
        type: 'qmshutdown',
        taskId: vmid,
        wait: {...opts, timeoutMs: opts.timeoutMs ?? this.taskTimeout('qmshutdown') + (timeoutS ?? 0) * 1000},
        state: async () => (await this.vmStatus(node, vmid))?.status === 'stopped',
      })
    } catch (err) {
      if (err instanceof PveApiError && /not running/.test(err.pveMessage)) return
      if (err instanceof PveTaskError && /not running/.test(err.exitstatus)) return
      throw err
    }
  }

  async stopVm(node: string, vmid: number, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/status/stop'), undefined, {
      where: this.where(node, vmid),
      type: 'qmstop',
      taskId: vmid,
      wait,
      state: async () => (await this.vmStatus(node, vmid))?.status === 'stopped',
    })
  }

  async deleteVm(node: string, vmid: number, opts: {purge: boolean; destroyUnreferencedDisks: boolean}, wait?: WaitOptions): Promise<void> {
    try {
      await this.runTask('DELETE', node, this.vmPath(node, vmid), {purge: opts.purge, 'destroy-unreferenced-disks': opts.destroyUnreferencedDisks}, {
        where: this.where(node, vmid),
        type: 'qmdestroy',
        taskId: vmid,
        wait,
        state: async () => (await this.vmConfig(node, vmid)) === undefined,
      })
    } catch (err) {
      if (isNoSuchVm(err)) return // already gone: what was asked is so
      throw err
    }
  }

  async resizeDisk(node: string, vmid: number, disk: string, size: string, wait?: WaitOptions): Promise<void> {
    // PVE ≥ 7.4 returns a task (qmresize); an absolute size is idempotent, "+NG" is not.
    await this.runTask('PUT', node, this.vmPath(node, vmid, '/resize'), {disk, size}, {
      where: this.where(node, vmid),
      type: 'qmresize',
      taskId: vmid,
      wait,
      idempotent: !size.startsWith('+'),
    })
  }

  async snapshot(node: string, vmid: number, name: string, description?: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, '/snapshot'), {snapname: name, description}, {
      where: this.where(node, vmid),
      type: 'qmsnapshot',
      taskId: vmid,
      wait,
      state: async () => (await this.listSnapshots(node, vmid)).some((s) => s.name === name),
    })
  }

  async rollbackSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('POST', node, this.vmPath(node, vmid, `/snapshot/${seg(name)}/rollback`), undefined, {
      where: this.where(node, vmid),
      type: 'qmrollback',
      taskId: vmid,
      wait,
    })
  }

  async deleteSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void> {
    await this.runTask('DELETE', node, this.vmPath(node, vmid, `/snapshot/${seg(name)}`), undefined, {
      where: this.where(node, vmid),
      type: 'qmdelsnapshot',
      taskId: vmid,
      wait,
      state: async () => !(await this.listSnapshots(node, vmid)).some((s) => s.name === name),
    })
  }

  async listSnapshots(node: string, vmid: number): Promise<{name: string; snaptime?: number; description?: string}[]> {
    const rows = await this.get<{name: string; snaptime?: number; description?: string}[]>(this.vmPath(node, vmid, '/snapshot'), undefined, this.where(node, vmid))
    return (rows ?? []).filter((r) => r.name !== 'current')
  }

  async regenerateCloudinit(node: string, vmid: number): Promise<void> {
    await this.request('PUT', this.vmPath(node, vmid, '/cloudinit'), undefined, {where: this.where(node, vmid), idempotent: true})
  }
}
