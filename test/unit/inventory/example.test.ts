import {describe, expect, it} from 'vitest'

import {loadInventory, loadValidInventory} from '../../../src/inventory/load.js'

describe('the example inventory', () => {
  it('validates with no problem at all', async () => {
    const {problems} = await loadInventory('inventory/example')
    expect(problems).toEqual([])
  })

  it('resolves defaults into the model', async () => {
    const inv = await loadValidInventory('inventory/example')
    expect(inv.establishments.map((e) => e.uai)).toEqual(['0130040Y', '0130041Z', '0131549N', '0840004Y', '0840005Z'])
    expect([...inv.hypervisors.keys()]).toEqual(['hv-marseille', 'hv-avignon'])
    const colomb = inv.establishments[0]!
    expect(colomb).toMatchObject({
      academie: 'Aix-Marseille',
      hypervisor: 'hv-marseille',
      node: 'pve-mrs1',
      vmid: 1001,
      ring: 'canary',
      image: '2026.11.0',
      dataDiskGb: 48,
      osDiskGb: 8,
      cores: 2,
      memoryMb: 4096,
      cpuType: 'x86-64-v2-AES',
      network: {address: '192.0.2.101/24', gateway: '192.0.2.1', dns: ['192.0.2.53'], searchdomain: 'lycees.example'},
      ami: {name: 'Jeanne Petit', login: 'ami', email: 'ami.0130040Y@example.org'},
      maintenanceWindow: {days: ['wed', 'sat'], start: '12:00', end: '14:00', timezone: 'Europe/Paris'},
      groups: ['bts-cg'],
    })
    expect(colomb.source).toEqual({file: 'inventory/example/establishments.yaml', line: 3, column: 5})
    const mistral = inv.establishments[3]!
    expect(mistral.network.dns).toEqual(['198.51.100.53'])
    expect(mistral.groups).toEqual(['bts-cg', 'vaucluse'])
    expect(mistral.ring).toBe('pilot')
    const girard = inv.establishments[4]!
    expect(girard.ring).toBe('general')
    expect(girard.maintenanceWindow).toEqual({days: ['mon', 'tue', 'wed', 'thu', 'fri'], start: '18:30', end: '22:00', timezone: 'Europe/Paris'})
    const avignon = inv.hypervisors.get('hv-avignon')!
    expect(avignon.tls.caFile).toMatch(/inventory\/example\/ca\/avignon-ca\.pem$/)
    expect(avignon.token).toEqual({id: 'pgi@pve!deploy', secret: {store: 'hypervisors/hv-avignon/token'}})
    expect(avignon.ssh).toEqual({host: '198.51.100.20', port: 22, user: 'pgi'})
    expect(inv.hypervisors.get('hv-marseille')!.bridge).toBe('vmbr0')
    expect(inv.rings).toEqual(['canary', 'pilot', 'general'])
    expect(inv.recipients).toHaveLength(2)
    expect(inv.groups.get('vaucluse')).toEqual(['0840004Y', '0840005Z'])
  })
})
