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
    cpuType: 'x86-64-v2-AES',
    ami: {name: 'Jeanne Petit', ageRecipient: amiRecipient, login: 'ami'},
    ring: 'canary',
    groups: [],
    databases: [{name: 'pgi', company: 'Lycée Georges Colomb', chart: 'fr', currency: 'EUR', source: {file: 'inventory/establishments.yaml', line: 3, column: 5}}],
    source: {file: 'inventory/establishments.yaml', line: 3, column: 5},
    ...over,
  }
}

/**
 * The single-file inventory of the command tests: one hypervisor (hv-test, pinned, token from
 * PGI_TOKEN_HV_TEST) and two establishments, 0130040Y (VM 1001, AMI A) and 0130041Z (VM 1002, AMI
 * B); `extra` is appended as more top-level YAML (e.g. an `offsite:` section).
 */
export function twoEstablishmentsInventory(opts: {recipients: {name: string; key: string}[]; amiA: string; amiB: string; extra?: string}): string {
  return `region: Test
recipients:
${opts.recipients.map((r) => `  - {name: ${r.name}, key: ${r.key}}`).join('\n')}
hypervisors:
  hv-test:
    url: https://127.0.0.1:8006
    nodes: [pve1]
    tls: {fingerprint: "3A:9F:0C:51:7B:22:E4:18:C6:0D:95:AB:41:7E:F2:63:88:1C:D4:5A:09:B7:E3:2F:6C:11:8A:D0:54:F9:2E:B3"}
    token: {id: pgi@pve!deploy, secret: {env: PGI_TOKEN_HV_TEST}}
    storage: {os: local-lvm, data: local-lvm, import: local}
    bridge: vmbr0
establishments:
${[
    ['0130040Y', 'Lycée Georges Colomb', 1001, 101, 'Jeanne Petit', opts.amiA],
    ['0130041Z', 'Lycée Marseilleveyre', 1002, 102, 'Karim Benali', opts.amiB],
  ]
    .map(([uai, name, vmid, host, ami, key]) => `  - uai: ${uai}
    name: ${name}
    academie: Aix-Marseille
    hypervisor: hv-test
    node: pve1
    vmid: ${vmid}
    network: {address: 192.0.2.${host}/24, gateway: 192.0.2.1, dns: [192.0.2.53]}
    ami: {name: ${ami}, age_recipient: ${key}}`)
    .join('\n')}
${opts.extra ?? ''}`
}
