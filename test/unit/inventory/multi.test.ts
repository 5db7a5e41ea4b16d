import {describe, expect, it} from 'vitest'

import {ExitCode} from '../../../src/exit-codes.js'
import {InventoryInvalidError, InventoryNotFoundError} from '../../../src/inventory/errors.js'
import {loadInventory, loadValidInventory} from '../../../src/inventory/load.js'
import {AGE1, AGE2, FP, locate, writeInventory} from './helpers.js'

// A broken inventory in three files (one of them in a sub-folder), with many problems of different
// kinds: one run must report every one of them, each at its exact line and column.
const hypervisors = `# yaml-language-server: $schema=../schema.json
hypervisors:
  hv-nord:
    url: https://192.0.2.10:8006
    nodes: [pve1, pve2]
    tls: {fingerprint: "3a:9f"}
    token: {id: pgi@pve!deploy, secret: s3cr3t-t0ken}
    storage: {os: local-lvm, data: local-lvm, import: local}
    brigde: vmbr0
  hv-sud:
    url: https://198.51.100.20:8006
    nodes: [pve-sud]
    tls: {fingerprint: "${FP}"}
    token: {id: pgi@pve!deploy, secret: {store: hypervisors/hv-sud/token}}
    storage: {os: local-lvm, data: local-lvm, import: local}
`

const establishments = `establishments:
  - uai: 0130040X
    name: Lycée Un
    hypervisor: hv-nord
    node: pve1
    vmid: 1001
    network: {address: 192.0.2.101/24, gateway: 192.0.3.1}
    ami: {name: A, age_recipient: ${AGE1}}
  - uai: 0130041Z
    name: Lycée Deux
    hypervisor: hv-nrod
    node: pve1
    vmid: 1002
    ring: canari
    network: {address: 192.0.2.0/24, gateway: 192.0.2.1}
    ami: {name: B, age_recipient: ${AGE2}}
  - uai: 0131549N
    name: Lycée Trois
    hypervisor: hv-nord
    node: pve2
    vmid: 1001
    network: {address: 192.0.2.103/24, gateway: 192.0.2.1}
    maintenance_window: {days: [mon], start: "19:00", end: "19:00"}
    ami: {name: C, age_recipient: ${AGE2}, emial: c@example.org}
`

const region = `rings: [canary, pilot, general]
defaults:
  academie: Aix-Marseille
groups:
  nord: [0130040Y, 0131549N]
`

describe('a broken inventory', () => {
  it('reports every problem in one run, with file:line:column, sorted', async () => {
    const dir = writeInventory({'hypervisors.yaml': hypervisors, 'sites/establishments.yaml': establishments, 'region.yaml': region})
    const {problems} = await loadInventory(dir)
    const at = (file: string, text: string, needle: string, nth = 1) => ({file: `${dir}/${file}`, ...locate(text, needle, nth)})
    const E = 'sites/establishments.yaml'
    const expected = [
      {...at('hypervisors.yaml', hypervisors, '"3a:9f"'), rule: 'tls-fingerprint'},
      {...at('hypervisors.yaml', hypervisors, 's3cr3t-t0ken'), rule: 'secret-literal'},
      {...at('hypervisors.yaml', hypervisors, 'brigde'), rule: 'unknown-key'},
      {...at('hypervisors.yaml', hypervisors, 'hv-sud'), rule: 'unused-hypervisor'}, // a warning
      {...at('region.yaml', region, '0130040Y'), rule: 'group-unknown-uai'},
      {...at(E, establishments, '0130040X'), rule: 'uai-check-letter'},
      {...at(E, establishments, '192.0.3.1'), rule: 'gateway-outside-subnet'},
      {...at(E, establishments, 'hv-nrod'), rule: 'unknown-hypervisor'},
      {...at(E, establishments, 'canari'), rule: 'unknown-ring'},
      {...at(E, establishments, '192.0.2.0/24'), rule: 'address-reserved'},
      {...at(E, establishments, '1001', 2), rule: 'duplicate-vmid'},
      {...at(E, establishments, '"19:00"', 2), rule: 'maintenance-window'},
      {...at(E, establishments, 'emial'), rule: 'unknown-key'},
    ]
    // files are read in sorted order: hypervisors.yaml, region.yaml, sites/establishments.yaml
    expect(problems.map((p) => ({file: p.file, line: p.line, column: p.column, rule: p.rule}))).toEqual(expected)
    expect(problems.every((p) => p.suggestion)).toBe(true)
    expect(problems.filter((p) => p.severity === 'warning').map((p) => p.rule)).toEqual(['unused-hypervisor'])
    expect(problems.find((p) => p.rule === 'unknown-key' && p.message.includes('brigde'))!.suggestion).toBe('did you mean "bridge"?')
    expect(problems.find((p) => p.rule === 'unknown-key' && p.message.includes('emial'))!.suggestion).toBe('did you mean "email"?')
    expect(problems.find((p) => p.rule === 'group-unknown-uai')!.suggestion).toBe(
      `the establishment at ${dir}/sites/establishments.yaml:2:10 has its UAI written wrongly (0130040X): fix it there`,
    )
    // a literal secret is never echoed back in a problem
    expect(JSON.stringify(problems)).not.toContain('s3cr3t-t0ken')
  })

  it('loadValidInventory throws InventoryInvalidError (exit 3) carrying every problem', async () => {
    const dir = writeInventory({'hypervisors.yaml': hypervisors, 'sites/establishments.yaml': establishments, 'region.yaml': region})
    const err = await loadValidInventory(dir).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(InventoryInvalidError)
    const e = err as InventoryInvalidError
    expect(e.code).toBe('PGI_INVENTORY_INVALID')
    expect(e.exitCode).toBe(ExitCode.INVALID_INPUT)
    expect((e.details?.problems as unknown[]).length).toBe(13) // 12 errors and 1 warning
    expect(e.message).toMatch(/12 errors/)
    expect(e.where).toMatchObject({file: `${dir}/hypervisors.yaml`, line: 6})
  })

  it('a missing path is PGI_INVENTORY_NOT_FOUND with a suggestion', async () => {
    const err = await loadInventory('/nonexistent/pgi-inventory').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(InventoryNotFoundError)
    expect((err as InventoryNotFoundError).code).toBe('PGI_INVENTORY_NOT_FOUND')
    expect((err as InventoryNotFoundError).suggestions.join(' ')).toMatch(/--inventory|PGI_INVENTORY/)
  })

  it('a folder without YAML files is PGI_INVENTORY_NOT_FOUND', async () => {
    const dir = writeInventory({'README.txt': 'nothing'})
    await expect(loadInventory(dir)).rejects.toThrow(/no \*\.yaml or \*\.yml/)
  })

  it('a single file is an inventory too', async () => {
    const dir = writeInventory({
      'all.yml': `${hypervisors.split('  hv-sud:')[0]!.replace('"3a:9f"', `"${FP}"`).replace('s3cr3t-t0ken', '{env: T}').replace('brigde', 'bridge')}establishments:
  - {uai: 0130040Y, name: X, academie: Y, hypervisor: hv-nord, node: pve2, vmid: 100, network: {address: 10.0.0.2/8, gateway: 10.0.0.1}, ami: {name: A, age_recipient: ${AGE1}}}
`,
    })
    const inv = await loadValidInventory(`${dir}/all.yml`)
    expect(inv.files).toEqual([`${dir}/all.yml`])
    expect(inv.establishments[0]).toMatchObject({uai: '0130040Y', node: 'pve2', ring: 'general', dataDiskGb: 32, ami: {login: 'ami'}})
    expect(inv.hypervisors.get('hv-nord')!.token.secret).toEqual({env: 'T'})
  })
})
