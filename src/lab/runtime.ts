import {mkdir, readFile, rename, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {AccessControl, type AccessConfig} from './access.js'
import {LabApi} from './api.js'
import type {StorageDef, VmBackend} from './backend.js'
import {ensureNodeCert} from './certs.js'
import {Faults, NO_FAULTS, type FaultConfig} from './faults.js'
import {LabServer, readRequestLog, type RequestLogEntry} from './server.js'
import {SimulatedBackend, type SimulatedOptions} from './simulated-backend.js'

/**
 * Builds a running lab in this process: storages, backend, access control, API and HTTPS servers.
 * The daemon (daemon.ts) calls it from `pgi lab start`; tests and the scale bench call it directly.
 */

export const LAB_STORAGES = (dir: string, totalBytes = 2 * 1024 ** 4): StorageDef[] => [
  {id: 'local', type: 'dir', content: ['iso', 'import', 'snippets', 'backup'], path: (n) => join(dir, 'nodes', n, 'storage', 'local'), totalBytes},
  {id: 'local-vm', type: 'dir', content: ['images', 'rootdir'], path: (n) => join(dir, 'nodes', n, 'storage', 'local-vm'), totalBytes},
]

export interface RuntimeOptions {
  dir: string
  nodes: string[]
  backend: 'simulated' | 'qemu' | VmBackend
  pveVersion: '8.4' | '9.1'
  access: AccessConfig
  faults?: FaultConfig
  /** Simulated backend: duration multiplier (default 1). */
  timeScale?: number
  simulated?: SimulatedOptions
  authFailDelayMs?: number
  lockTimeoutMs?: number
  /** Fixed ports per node. */
  ports?: Record<string, number>
  requestLog?: boolean
  log?: (line: string) => void
}

export interface LabRuntime {
  api: LabApi
  server: LabServer
  backend: VmBackend
  ports: Record<string, number>
  fingerprints: Record<string, string>
  certs: Record<string, {key: string; cert: string}>
  requestLog: string
  /** The request log with every request answered so far (flushes the server's 50 ms buffer first). */
  readRequestLog(): Promise<RequestLogEntry[]>
  close(): Promise<void>
}

async function makeBackend(o: RuntimeOptions, faults: Faults): Promise<VmBackend> {
  if (typeof o.backend === 'object') return o.backend
  if (o.backend === 'simulated') {
    return new SimulatedBackend({timeScale: o.timeScale ?? 1, guestUnhealthy: (n, v) => faults.guestUnhealthy(n, v), ...o.simulated})
  }
  // The qemu backend (src/lab/qemu-backend.ts) is loaded lazily so that the simulated lab never
  // needs QEMU. The module path is built at run time so this file compiles before it exists.
  const modPath = './qemu-backend.js'
  const mod = (await import(modPath)) as Record<string, unknown>
  const Ctor = (mod.QemuBackend ?? mod.default) as (new (opts: Record<string, unknown>) => VmBackend) | undefined
  if (typeof Ctor !== 'function') throw new Error('src/lab/qemu-backend.ts does not export QemuBackend')
  // the guests' path to the host and the link it crosses (docs/lab.md): <dir>/link-sim.yaml, followed while the lab runs
  return new Ctor({guestUnhealthy: (n: string, v: number) => faults.guestUnhealthy(n, v), linkSim: {configFile: join(o.dir, 'link-sim.yaml'), statsFile: join(o.dir, 'run', 'link-sim.json')}})
}

export async function startRuntime(o: RuntimeOptions): Promise<LabRuntime> {
  const log = o.log ?? (() => undefined)
  const faults = new Faults(o.faults ?? NO_FAULTS)
  const storages = LAB_STORAGES(o.dir)
  for (const n of o.nodes) for (const s of storages) await mkdir(s.path(n), {recursive: true})
  const backendDir = join(o.dir, 'backend')
  await mkdir(backendDir, {recursive: true})
  const backend = await makeBackend(o, faults)
  await backend.init({dir: backendDir, nodes: o.nodes.map((name, index) => ({name, index})), storages, pveVersion: o.pveVersion, log})
  const access = new AccessControl(o.access)
  const runDir = join(o.dir, 'run')
  await mkdir(runDir, {recursive: true})
  let pending: NodeJS.Timeout | undefined
  const api: LabApi = new LabApi({
    nodes: o.nodes,
    storages,
    backend,
    access,
    faults,
    pveVersion: o.pveVersion,
    lockTimeoutMs: o.lockTimeoutMs,
    tmpDir: join(o.dir, 'tmp'),
    log,
    onChange: () => {
      // Debounced snapshot of the VMs for `pgi lab status` (the daemon is the only writer).
      if (pending) return
      pending = setTimeout(() => {
        pending = undefined
        void writeVmSnapshot(api, join(runDir, 'vms.json')).catch((e: Error) => log(`vms.json: ${e.message}`))
      }, 500)
    },
  })
  const certs: Record<string, {key: string; cert: string}> = {}
  const fingerprints: Record<string, string> = {}
  for (const n of o.nodes) {
    const c = await ensureNodeCert(join(o.dir, 'nodes', n), n)
    certs[n] = {key: c.key, cert: c.cert}
    fingerprints[n] = c.fingerprint
  }
  const requestLog = join(o.dir, 'requests.jsonl')
  const server = new LabServer({api, certs, ports: o.ports, authFailDelayMs: o.authFailDelayMs ?? 3000, requestLog: o.requestLog === false ? undefined : requestLog, tmpDir: join(o.dir, 'tmp')})
  const ports = await server.listen()
  await writeVmSnapshot(api, join(runDir, 'vms.json'))
  // VMs also change state on their own (a guest powers off, QEMU dies): refresh the snapshot now and then.
  const refresh = setInterval(() => void writeVmSnapshot(api, join(runDir, 'vms.json')).catch(() => undefined), 5000)
  refresh.unref()
  return {
    api,
    server,
    backend,
    ports,
    fingerprints,
    certs,
    requestLog,
    async readRequestLog() {
      server.flushLog()
      return readRequestLog(requestLog)
    },
    async close() {
      clearInterval(refresh)
      if (pending) clearTimeout(pending)
      await server.close()
      api.tasks.abortAll()
      await backend.close()
      await writeVmSnapshot(api, join(runDir, 'vms.json')).catch(() => undefined)
    },
  }
}

export interface VmSnapshotEntry {
  node: string
  vmid: number
  name?: string
  status: string
  lock?: string
  access?: {endpoints: Record<string, string>; addresses?: string[]; note?: string}
}

async function writeVmSnapshot(api: LabApi, file: string): Promise<void> {
  const out: VmSnapshotEntry[] = []
  for (const [node, st] of api.nodes) {
    for (const vm of st.vms.values()) {
      const s = api.backend.status(node, vm.vmid)
      const a = api.backend.access(node, vm.vmid)
      out.push({node, vmid: vm.vmid, name: vm.config.name, status: s.running ? 'running' : 'stopped', ...(vm.config.lock ? {lock: vm.config.lock} : {}), ...(a ? {access: a} : {})})
    }
  }
  const tmp = `${file}.tmp`
  await writeFile(tmp, JSON.stringify(out))
  await rename(tmp, file)
}

export async function readVmSnapshot(dir: string): Promise<VmSnapshotEntry[]> {
  return JSON.parse(await readFile(join(dir, 'run', 'vms.json'), 'utf8').catch(() => '[]')) as VmSnapshotEntry[]
}
