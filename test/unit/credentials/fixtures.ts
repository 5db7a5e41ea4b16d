import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {generateIdentity, identityToRecipient} from 'age-encryption'

import type {Establishment} from '../../../src/inventory/types.js'

/** A fresh age key pair written to `<dir>/<name>.key` (the format age-keygen writes). */
export async function ageKey(dir: string, name: string): Promise<{file: string; recipient: string}> {
  const id = await generateIdentity()
  const recipient = await identityToRecipient(id)
  const file = join(dir, `${name}.key`)
  await writeFile(file, `# created: test\n# public key: ${recipient}\n${id}\n`, {mode: 0o600})
  return {file, recipient}
}

export function establishment(uai: string, amiRecipient: string, over: Partial<Establishment> = {}): Establishment {
  return {
    uai,
    name: 'Lycée Georges Colomb',
    academie: 'Aix-Marseille',
    hypervisor: 'hv-test',
    node: 'pve1',
    vmid: 1001,
    network: {address: '192.0.2.101/24', gateway: '192.0.2.1', dns: ['192.0.2.53']},
    dataDiskGb: 32,
    osDiskGb: 8,
    cores: 2,
    memoryMb: 4096,
    ami: {name: 'Jeanne Petit', ageRecipient: amiRecipient, login: 'ami'},
    ring: 'canary',
    groups: [],
    databases: [{name: 'pgi', company: 'Lycée Georges Colomb', chart: 'fr', currency: 'EUR', source: {file: 'inventory/establishments.yaml', line: 3, column: 5}}],
    source: {file: 'inventory/establishments.yaml', line: 3, column: 5},
    ...over,
  }
}
