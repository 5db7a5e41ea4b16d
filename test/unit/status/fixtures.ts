import type {Establishment} from '../../../src/inventory/types.js'
import type {Observation, PgiHealthReport} from '../../../src/status/types.js'

export const NOW = new Date('2026-11-22T07:00:00Z')

export function healthyReport(over: Partial<PgiHealthReport> = {}): PgiHealthReport {
  return {
    healthy: true,
    image: {name: 'pgi-tryton', version: '2026.11.0'},
    checks: {
      postgresql: {ok: true},
      trytond: {ok: true, version: '6.0.40'},
      web: {ok: true},
      data_disk: {ok: true, mounted: true, used_bytes: 4e9, size_bytes: 32e9, used_pct: 12.5},
      backup: {ok: true, last: '2026-11-22T02:00:00Z', age_s: 5 * 3600},
    },
    databases: [{name: 'bts_cg_2026', modules: {account_fr: '6.0.3'}}],
    problems: [],
    ...over,
  }
}

export function obs(over: Partial<Observation> = {}): Observation {
  return {
    uai: '0130040Y',
    name: 'Lycée Georges Colomb',
    hypervisor: 'hv-marseille',
    node: 'pve-mrs1',
    vmid: 1001,
    wantedImage: '2026.11.0',
    hypervisorReachable: true,
    vmPresent: true,
    vmNode: 'pve-mrs1',
    vmState: 'running',
    uptimeS: 86400 * 3,
    metaImage: '2026.11.0',
    deployedAt: '2026-11-01T10:00:00Z',
    agentAnswering: true,
    health: healthyReport(),
    healthExitCode: 0,
    ...over,
  }
}

export function establishment(uai: string, hypervisor: string, node: string, vmid: number, over: Partial<Establishment> = {}): Establishment {
  return {
    uai,
    name: `Lycée ${uai}`,
    academie: 'Aix-Marseille',
    hypervisor,
    node,
    vmid,
    network: {address: '192.0.2.10/24', gateway: '192.0.2.1', dns: []},
    dataDiskGb: 32,
    osDiskGb: 8,
    cores: 2,
    memoryMb: 4096,
    cpuType: 'x86-64-v2-AES',
    ami: {name: 'AMI', ageRecipient: 'age1xxx', login: 'ami'},
    ring: 'general',
    image: '2026.11.0',
    groups: [],
    databases: [{name: 'pgi', company: 'Lycée', chart: 'fr', currency: 'EUR', source: {file: 'establishments.yaml', line: 1, column: 1}}],
    source: {file: 'establishments.yaml', line: 1, column: 1},
    ...over,
  }
}
