import {createHash} from 'node:crypto'
import {cpus, totalmem} from 'node:os'

import {HttpError, type Handler} from '../context.js'
import type {LabApi} from '../api.js'
import {ParamError} from '../validate.js'

/**
 * Lab handlers: version, nodes, node status, cluster status and resources, nextid, tickets,
 * permissions, the storage configuration and resource pools. Registered by LabApi under the
 * handler ids of params.ts.
 */

/** The lab's package versions per PVE release (pve-manager and the kernel of that release). */
const RELEASES = {
  '9.1': {version: '9.1.1', kernel: '6.17.2-1-pve', qemu: '10.1.2'},
  '8.4': {version: '8.4.1', kernel: '6.8.12-9-pve', qemu: '9.2.0'},
}

export function clusterRoutes(api: LabApi): Record<string, Handler> {
  const h: Record<string, Handler> = {}
  const rel = () => RELEASES[api.schema.release]
  // PVE's repoid is the pve-manager git commit (short hex); the lab's is derived from its version.
  const repoidText = createHash('sha1').update(`pgi-lab-${rel().version}`).digest('hex').slice(0, 16)
  const repoid = () => repoidText
  const uptime = (started: number) => Math.floor(Date.now() / 1000) - started
  const MEM = 32 * 2 ** 30

  h.version = async () => ({version: rel().version, release: api.schema.release, repoid: repoid(), console: 'html5', lab: 1})

  h.nodes = async (c) => [{node: c.node.name, status: 'online', uptime: uptime(c.node.started), type: 'node', id: `node/${c.node.name}`, level: '', cpu: 0.01, maxcpu: 8, mem: 2 ** 30, maxmem: MEM}]

  h.nodeIndex = async () => ['status', 'qemu', 'storage', 'tasks', 'version'].map((subdir) => ({subdir}))

  h.nodeStatus = async (c) => {
    const r = rel()
    const load = ['0.05', '0.10', '0.12']
    return {
      uptime: uptime(c.node.started),
      pveversion: `pve-manager/${r.version}/${repoid()}`,
      kversion: `Linux ${r.kernel} #1 SMP PREEMPT_DYNAMIC PMX ${r.kernel} (lab)`,
      'current-kernel': {sysname: 'Linux', release: r.kernel, version: `#1 SMP PREEMPT_DYNAMIC PMX ${r.kernel} (lab)`, machine: 'x86_64'},
      'boot-info': {mode: 'efi', secureboot: 0},
      cpu: 0.01,
      wait: 0,
      loadavg: load,
      cpuinfo: {model: cpus()[0]?.model ?? 'QEMU Virtual CPU', cpus: 8, cores: 8, sockets: 1, mhz: String(cpus()[0]?.speed ?? 2000), hvm: '1', flags: '', user_hz: 100},
      memory: {total: MEM, used: 2 ** 30, free: MEM - 2 ** 30, available: MEM - 2 ** 30},
      swap: {total: 0, used: 0, free: 0},
      rootfs: {total: 100 * 2 ** 30, used: 8 * 2 ** 30, free: 92 * 2 ** 30, avail: 92 * 2 ** 30},
      ksm: {shared: 0},
      idle: 0,
      node: c.node.name,
      'host-memory': Math.min(totalmem(), MEM),
    }
  }

  // Each lab node is a single-node cluster: its status is that node, with no cluster entry (as a standalone PVE node answers).
  h.clusterStatus = async (c) => [{type: 'node', id: `node/${c.node.name}`, name: c.node.name, nodeid: 0, ip: '127.0.0.1', local: 1, online: 1, level: ''}]

  h.clusterResources = async (c) => {
    const type = c.params.type as string | undefined
    const out: Record<string, unknown>[] = []
    if (!type || type === 'node') {
      if (api.access.has(c.principal, `/nodes/${c.node.name}`, 'Sys.Audit')) out.push({id: `node/${c.node.name}`, type: 'node', node: c.node.name, status: 'online', uptime: uptime(c.node.started), cpu: 0.01, maxcpu: 8, mem: 2 ** 30, maxmem: MEM, disk: 8 * 2 ** 30, maxdisk: 100 * 2 ** 30, level: '', 'cgroup-mode': 2})
    }
    if (!type || type === 'vm') {
      for (const vm of c.node.vms.values()) {
        if (!api.access.has(c.principal, `/vms/${vm.vmid}`, 'VM.Audit')) continue
        const st = api.backend.status(c.node.name, vm.vmid)
        const pool = [...c.node.pools.entries()].find(([, p]) => p.members.has(`qemu/${vm.vmid}`))?.[0]
        out.push({id: `qemu/${vm.vmid}`, type: 'qemu', node: c.node.name, vmid: vm.vmid, name: vm.config.name ?? `VM${vm.vmid}`, status: st.running ? 'running' : 'stopped', template: Number(vm.config.template ?? 0), ...(vm.config.tags ? {tags: vm.config.tags} : {}), ...(vm.config.lock ? {lock: vm.config.lock} : {}), ...(pool ? {pool} : {}), uptime: st.uptime, maxmem: api.spec(c.node.name, vm).memoryMb * 2 ** 20, mem: st.mem, cpu: st.cpu, maxcpu: api.spec(c.node.name, vm).cores * api.spec(c.node.name, vm).sockets, disk: 0, maxdisk: 0, diskread: 0, diskwrite: 0, netin: 0, netout: 0})
      }
    }
    if (!type || type === 'storage') {
      for (const s of api.storages.values()) {
        if (!api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit')) continue
        const {used} = await api.backend.storageUsage(c.node.name, s.id)
        out.push({id: `storage/${c.node.name}/${s.id}`, type: 'storage', node: c.node.name, storage: s.id, status: 'available', plugintype: 'dir', content: s.content.join(','), maxdisk: s.totalBytes, disk: used, shared: 0})
      }
    }
    if (!type) {
      for (const [poolid] of c.node.pools) if (api.access.has(c.principal, `/pool/${poolid}`, 'Pool.Audit')) out.push({id: `pool/${poolid}`, type: 'pool', pool: poolid})
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

  h.permissions = async (c) => {
    const me = c.principal.tokenid ?? c.principal.user
    const who = (c.params.userid as string | undefined) ?? me
    if (who !== me) {
      // one's own tokens, or anyone with Sys.Audit on /access
      const ownToken = !c.principal.tokenid && who.startsWith(`${c.principal.user}!`)
      if (!ownToken) api.access.check(c.principal, '/access', ['Sys.Audit'])
      if (!api.access.exists(who)) throw new HttpError(500, `no such ${who.includes('!') ? 'token' : 'user'} '${who}'`)
    }
    const target = who.includes('!') ? {user: who.split('!')[0]!, tokenid: who} : {user: who}
    const paths = [...[...api.nodes.values()].flatMap((n) => [`/nodes/${n.name}`, ...[...n.vms.keys()].map((v) => `/vms/${v}`), ...[...n.pools.keys()].map((p) => `/pool/${p}`)]), ...[...api.storages.keys()].map((s) => `/storage/${s}`)]
    const tree = api.access.permissionTree(target, paths)
    if (c.params.path !== undefined) {
      const path = String(c.params.path)
      return {[path]: Object.fromEntries([...api.access.privileges(target, path)].sort().map((x) => [x, 1]))}
    }
    return tree
  }

  // ---- storage configuration (/storage) ----
  const storageConfig = (id: string, c: Parameters<Handler>[0]) => {
    const s = api.storageDef(id)
    return {storage: s.id, type: s.type, content: s.content.join(','), path: s.path(c.node.name), shared: 0, digest: createHash('sha1').update(`${s.id}:${s.content.join(',')}`).digest('hex')}
  }
  h.storageConfigList = async (c) => {
    const type = c.params.type as string | undefined
    return [...api.storages.values()]
      .filter((s) => !type || s.type === type)
      .filter((s) => api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.Audit') || api.access.has(c.principal, `/storage/${s.id}`, 'Datastore.AllocateSpace'))
      .map((s) => storageConfig(s.id, c))
  }
  h.storageConfigGet = async (c) => storageConfig(String(c.params.storage), c)

  // ---- resource pools ----
  const members = (c: Parameters<Handler>[0], poolid: string, type?: string) =>
    [...c.node.pools.get(poolid)!.members]
      .map((m) => {
        const [kind, id] = m.split('/') as [string, string]
        if (kind === 'qemu') {
          const vm = c.node.vms.get(Number(id))
          if (!vm) return undefined
          const st = api.backend.status(c.node.name, vm.vmid)
          return {id: m, type: 'qemu', node: c.node.name, vmid: vm.vmid, name: vm.config.name ?? `VM${vm.vmid}`, status: st.running ? 'running' : 'stopped', template: Number(vm.config.template ?? 0), maxmem: api.spec(c.node.name, vm).memoryMb * 2 ** 20, uptime: st.uptime}
        }
        return {id: `storage/${c.node.name}/${id}`, type: 'storage', node: c.node.name, storage: id}
      })
      .filter((m): m is NonNullable<typeof m> => m !== undefined && (!type || m.type === type))
  h.poolList = async (c) => {
    const want = c.params.poolid as string | undefined
    const out: Record<string, unknown>[] = []
    for (const [poolid, p] of [...c.node.pools].sort(([a], [b]) => a.localeCompare(b))) {
      if (want !== undefined && poolid !== want) continue
      if (!api.access.has(c.principal, `/pool/${poolid}`, 'Pool.Audit')) continue
      out.push({poolid, ...(p.comment ? {comment: p.comment} : {}), ...(want !== undefined ? {members: members(c, poolid, c.params.type as string | undefined)} : {})})
    }
    if (want !== undefined && out.length === 0) throw new HttpError(500, `pool '${want}' does not exist`)
    return out
  }
  h.poolGet = async (c) => {
    const poolid = String(c.params.poolid)
    const p = c.node.pools.get(poolid)
    if (!p) throw new HttpError(500, `pool '${poolid}' does not exist`)
    return {...(p.comment ? {comment: p.comment} : {}), members: members(c, poolid, c.params.type as string | undefined)}
  }
  h.poolCreate = async (c) => {
    const poolid = String(c.params.poolid)
    if (c.node.pools.has(poolid)) throw new HttpError(500, `create pool failed: pool '${poolid}' already exists`)
    c.node.pools.set(poolid, {comment: c.params.comment as string | undefined, members: new Set()})
    api.changed()
    return null
  }
  h.poolDelete = async (c) => {
    const poolid = String(c.params.poolid)
    const p = c.node.pools.get(poolid)
    if (!p) throw new HttpError(500, `delete pool failed: pool '${poolid}' does not exist`)
    if (p.members.size > 0) throw new HttpError(500, `delete pool failed: pool '${poolid}' is not empty`)
    c.node.pools.delete(poolid)
    api.changed()
    return null
  }

  return h
}
