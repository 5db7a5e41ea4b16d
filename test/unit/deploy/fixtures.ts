import {createParams, type DeployImage} from '../../../src/deploy/desired.js'
import {formatDescription, parseDescription} from '../../../src/fleet/vm-meta.js'
import type {Establishment, Hypervisor} from '../../../src/inventory/types.js'
import type {PveVmConfig} from '../../../src/proxmox/types.js'

/** Inventory entries and the config PVE holds after pgi created the VM: shared by the deploy tests. */
export const hv: Hypervisor = {
  name: 'hv-a',
  url: 'https://127.0.0.1:8006',
  nodes: ['n1'],
  tls: {fingerprint: 'AA'},
  token: {id: 'pgi@pve!deploy', secret: {env: 'T'}},
  storage: {os: 'local-vm', data: 'data-vm', import: 'local'},
  bridge: 'vmbr0',
  source: {file: 'h.yaml', line: 1, column: 1},
}

export const est: Establishment = {
  uai: '0130040Y',
  name: 'Lycée Georges Colomb',
  academie: 'Aix-Marseille',
  hypervisor: 'hv-a',
  node: 'n1',
  vmid: 1001,
  network: {address: '192.0.2.101/24', gateway: '192.0.2.1', dns: ['192.0.2.53', '192.0.2.54'], searchdomain: 'lycees.example'},
  dataDiskGb: 32,
  osDiskGb: 8,
  cores: 2,
  memoryMb: 4096,
  cpuType: 'x86-64-v2-AES',
  ami: {name: 'Jeanne', ageRecipient: 'age1x', login: 'ami', sshKey: 'ssh-ed25519 AAAAC3Nz jeanne@poste'},
  ring: 'canary',
  image: '2026.11.0',
  groups: [],
  databases: [{name: 'pgi', company: 'Lycée A', chart: 'fr', currency: 'EUR', source: {file: 'e.yaml', line: 3, column: 5}}],
  source: {file: 'e.yaml', line: 3, column: 5},
}

export const image: DeployImage = {name: 'pgi-tryton', version: '2026.11.0', file: 'pgi-tryton-2026.11.0.qcow2', path: '/x/pgi.qcow2', sha256: 'ab'.repeat(32), size: 1234}

/** The config PVE would hold after creating the VM from createParams (disks allocated, sizes set). */
export function configAfterCreate(e = est, h = hv): PveVmConfig {
  const p = createParams(e, h, image, new Date('2026-11-22T06:00:00Z'))
  const cfg: PveVmConfig = {digest: 'd1'}
  for (const [k, v] of Object.entries(p)) if (v !== undefined) cfg[k] = typeof v === 'boolean' ? (v ? 1 : 0) : v
  cfg.virtio0 = `${h.storage.os}:vm-${e.vmid}-disk-0.qcow2,size=${e.osDiskGb}G`
  cfg.virtio1 = `${h.storage.data}:vm-${e.vmid}-disk-1.qcow2,serial=pgi-data,size=${e.dataDiskGb}G`
  cfg.net0 = `virtio=BC:24:11:00:00:01,bridge=${h.bridge}`
  const meta = parseDescription(String(p.description))!
  cfg.description = formatDescription({...meta, configuredAt: '2026-11-22T06:10:00Z'}, e.name)
  return cfg
}

