/**
 * The status tests' and bench's lab (test/helpers/lab.ts: LabApi + LabServer + SimulatedBackend, in
 * this process): N nodes on 127.0.0.1, each its own HTTPS listener and
 * pinned certificate, a pgi token with the PGI role on "/", AMI tokens that only see one VM, faults
 * (latency, dead nodes), and establishments whose VMs are created through the real client
 * (src/proxmox/client.ts) with the metadata deploy writes (tags + pgi-meta description).
 */
import {randomUUID} from 'node:crypto'

import {formatDescription, formatTags} from '../../../src/fleet/vm-meta.js'
import type {Establishment, Hypervisor, Inventory} from '../../../src/inventory/types.js'
import {uaiFromNumber} from '../../../src/inventory/uai.js'
import {MemoryIo} from '../../../src/io.js'
import {sha256Hex} from '../../../src/lab/access.js'
import type {LabApi} from '../../../src/lab/api.js'
import {faultConfigFrom, Faults} from '../../../src/lab/faults.js'
import type {RequestLogEntry} from '../../../src/lab/server.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {AMI_ROLE_PRIVILEGES, PGI_ROLE_PRIVILEGES} from '../../../src/proxmox/role.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {Secret} from '../../../src/secret.js'
import {startLab} from '../../helpers/lab.js'

export interface SimLabOptions {
  nodes: number
  sites: number
  /** Faults in the YAML form (snake_case), e.g. {latency_ms: 20, dead_nodes: ['lab3']}. */
  faults?: Record<string, unknown>
  /** Image version written on the VMs (and wanted by the inventory unless `wanted` is given). */
  image?: string
  wanted?: string
  /** Leave these UAIs without a VM. */
  skip?: (index: number) => boolean
  /** VMs created in parallel (per node) when populating. */
  createParallel?: number
}

export interface SimLab {
  dir: string
  inventory: Inventory
  establishments: Establishment[]
  /** Environment holding the pgi token secret (PGI_LAB_TOKEN) for the inventory's {env} refs. */
  env: NodeJS.ProcessEnv
  /**
   * An AMI token (user ami@pve, the PGI-AMI role of PVE 9 — VM.Audit, VM.GuestAgent.Audit,
   * VM.GuestAgent.FileRead — on /vms/<vmid of the first establishment> only: that vmid on every node).
   */
  ami: {id: string; secret: Secret; uai: string}
  /** A token of the same user with VM.Audit + VM.GuestAgent.Audit only (the PGI-AMI role before it could read files). */
  amiAuditOnly: {id: string; secret: Secret}
  api: LabApi
  /** JSONL request log of the lab (src/lab/server.ts readRequestLog). */
  requestLog: string
  /** The request log once every answered request is in it (the server buffers it for 50 ms). */
  readRequestLog(): Promise<RequestLogEntry[]>
  /** Make a guest's PGI unhealthy (its Tryton server fails) or healthy again. */
  setUnhealthy(node: string, vmid: number, on: boolean): void
  /** Make a guest's image one without the pgi-health timer (no /run/pgi/health.json), or give it back. */
  setHealthRecord(node: string, vmid: number, on: boolean): void
  /** A client of one node, with the pgi token (to act on VMs as a technician would). */
  client(node: string): PveApi
  close(): Promise<void>
}

export const TOKEN_ENV = 'PGI_LAB_TOKEN'

export async function startSimLab(o: SimLabOptions): Promise<SimLab> {
  const nodeNames = Array.from({length: o.nodes}, (_, i) => `lab${i + 1}`)
  const pgiSecret = randomUUID()
  const amiSecret = randomUUID()
  const amiAuditOnlySecret = randomUUID()
  const image = o.image ?? '2026.11.0'

  // establishments: round-robin over the nodes, vmid 1001… per node
  const establishments: Establishment[] = []
  const perNode = new Map<string, number>()
  for (let i = 0; i < o.sites; i++) {
    const node = nodeNames[i % o.nodes]!
    const k = (perNode.get(node) ?? 0) + 1
    perNode.set(node, k)
    establishments.push({
      uai: uaiFromNumber(9_900_001 + i), // the UAIs `pgi lab start` gives (src/lab/inventory-gen.ts)
      name: `Lycée ${i + 1}`,
      academie: 'Lab',
      hypervisor: node,
      node,
      vmid: 1000 + k,
      network: {address: `10.${Math.floor(i / 250)}.${i % 250}.10/24`, gateway: `10.${Math.floor(i / 250)}.${i % 250}.1`, dns: []},
      dataDiskGb: 8,
      osDiskGb: 4,
      cores: 1,
      memoryMb: 1024,
      cpuType: 'x86-64-v2',
      ami: {name: 'AMI', ageRecipient: 'age1lab', login: 'ami'},
      ring: 'general',
      image: o.wanted ?? image,
      groups: [],
      databases: [{name: 'pgi', company: 'Lycée', chart: 'fr', currency: 'EUR', source: {file: 'lab.yaml', line: i + 1, column: 1}}],
      source: {file: 'lab.yaml', line: i + 1, column: 1},
    })
  }
  const amiVm = establishments[0]!
  const amiTokenId = 'ami@pve!status'
  const amiAuditOnlyId = 'ami@pve!audit'

  const unhealthy = new Set<string>()
  const noHealthRecord = new Set<string>()
  const faultConfig = faultConfigFrom(o.faults ?? {}, 'test faults')
  const faults = new Faults(faultConfig)
  const lab = await startLab({
    prefix: 'pgi-status-lab-',
    nodes: o.nodes,
    pveVersion: '9.1',
    timeScale: 0,
    faults: faultConfig,
    // the lab's fault hook for "a guest whose PGI is not healthy", switchable while the lab runs
    simulated: {guestUnhealthy: (n, v) => faults.guestUnhealthy(n, v) || unhealthy.has(`${n}/${v}`), guestHealthRecord: (n, v) => !noHealthRecord.has(`${n}/${v}`)},
    authFailDelayMs: 0,
    access: {
      users: {'pgi@pve': {}, 'ami@pve': {}},
      tokens: {
        'pgi@pve!status': {secretSha256: sha256Hex(pgiSecret), privsep: false},
        [amiTokenId]: {secretSha256: sha256Hex(amiSecret), privsep: true},
        [amiAuditOnlyId]: {secretSha256: sha256Hex(amiAuditOnlySecret), privsep: true},
      },
      roles: {PGI: [...PGI_ROLE_PRIVILEGES['9']], 'PGI-AMI': [...AMI_ROLE_PRIVILEGES['9']], 'AMI-AUDIT': ['VM.Audit', 'VM.GuestAgent.Audit']},
      acl: [
        {path: '/', ugid: 'pgi@pve', roleid: 'PGI', propagate: true},
        // as docs/proxmox-role.md grants it: the user and its privilege-separated token
        {path: `/vms/${amiVm.vmid}`, ugid: 'ami@pve', roleid: 'PGI-AMI', propagate: true},
        {path: `/vms/${amiVm.vmid}`, ugid: amiTokenId, roleid: 'PGI-AMI', propagate: true},
        {path: `/vms/${amiVm.vmid}`, ugid: amiAuditOnlyId, roleid: 'AMI-AUDIT', propagate: true},
      ],
    },
  })
  const {rt, dir} = lab

  const hypervisors = new Map<string, Hypervisor>()
  for (const n of nodeNames) hypervisors.set(n, lab.hypervisor(n, {tokenId: 'pgi@pve!status', tokenEnv: TOKEN_ENV, pveVersion: '9.1'}))
  const inventory: Inventory = {path: dir, files: [], rings: ['canary', 'pilot', 'general'], recipients: [], hypervisors, establishments, groups: new Map([['first', establishments.slice(0, 2).map((e) => e.uai)]])}

  const clients: PveApi[] = []
  const client = (node: string): PveApi => {
    const cl = connectHypervisor(hypervisors.get(node)!, {tokenSecret: new Secret(pgiSecret), io: new MemoryIo('silent'), requestTimeoutMs: 30_000, poll: {initialMs: 5, maxMs: 50}})
    clients.push(cl)
    return cl
  }

  // create and start the VMs through the API, with the metadata deploy writes
  const dead = new Set((o.faults?.dead_nodes as string[] | undefined) ?? [])
  const byNode = new Map<string, Establishment[]>()
  establishments.forEach((e, i) => {
    if (o.skip?.(i) || dead.has(e.node)) return
    byNode.set(e.node, [...(byNode.get(e.node) ?? []), e])
  })
  await Promise.all(
    [...byNode].map(async ([node, list]) => {
      const cl = client(node)
      const par = o.createParallel ?? 4
      for (let i = 0; i < list.length; i += par) {
        await Promise.all(
          list.slice(i, i + par).map(async (e) => {
            const meta = {v: 1 as const, uai: e.uai, image, deployedAt: new Date().toISOString(), by: 'status-test'}
            await cl.createVm(node, e.vmid, {
              name: `pgi-${e.uai.toLowerCase()}`,
              cores: 1,
              memory: 1024,
              agent: 1,
              virtio0: 'local-vm:4',
              virtio1: 'local-vm:8,serial=pgi-data',
              net0: 'virtio,bridge=vmbr0',
              tags: formatTags(meta, e.ring),
              description: formatDescription(meta, e.name),
            })
            await cl.startVm(node, e.vmid)
          }),
        )
      }
    }),
  )

  return {
    dir,
    inventory,
    establishments,
    env: {[TOKEN_ENV]: pgiSecret},
    ami: {id: amiTokenId, secret: new Secret(amiSecret), uai: amiVm.uai},
    amiAuditOnly: {id: amiAuditOnlyId, secret: new Secret(amiAuditOnlySecret)},
    api: rt.api,
    requestLog: rt.requestLog,
    readRequestLog: () => rt.readRequestLog(),
    setUnhealthy(node, vmid, on) {
      if (on) unhealthy.add(`${node}/${vmid}`)
      else unhealthy.delete(`${node}/${vmid}`)
    },
    setHealthRecord(node, vmid, on) {
      if (on) noHealthRecord.delete(`${node}/${vmid}`)
      else noHealthRecord.add(`${node}/${vmid}`)
    },
    client,
    async close() {
      await Promise.allSettled(clients.map((cl) => (cl as PveApi & {close?: () => Promise<void>}).close?.()))
      await lab.close()
    },
  }
}
