import {describe, expect, it} from 'vitest'

import {AGE1, AGE2, establishment, FP, HYPERVISORS, inventoryFiles, locate, problemsOf, REGION} from './helpers.js'

/** The second establishment (on hv-b), so that both hypervisors are used. */
const B = establishment({
  uai: '0840004Y',
  name: 'Lycée B',
  hypervisor: 'hv-b',
  node: 'pve-b',
  vmid: '1001',
  network: '{address: 198.51.100.101/24, gateway: 198.51.100.1}',
  ami: `{name: Paul, age_recipient: ${AGE2}}`,
})

const est = (...entries: string[]): string => `establishments:\n${entries.join('')}${B}`

interface Case {
  name: string
  rule: string
  files: Record<string, string>
  /** The file and the text the problem must point at. */
  file: string
  at: string
  nth?: number
  message?: RegExp
  suggestion?: RegExp
  severity?: 'error' | 'warning'
}

const E = 'establishments.yaml'
const H = 'hypervisors.yaml'
const R = 'region.yaml'

const hvWith = (replace: string, by: string): string => {
  if (!HYPERVISORS.includes(replace)) throw new Error(`fixture: ${replace}`)
  return HYPERVISORS.replace(replace, by)
}

const cases: Case[] = [
  // YAML and structure
  (() => {
    const e = est(establishment({name: 'a: b'}))
    return {name: 'YAML syntax error', rule: 'yaml-syntax', files: inventoryFiles({establishments: e}), file: E, at: 'a: b', message: /Nested mappings/}
  })(),
  (() => {
    const e = est(establishment({name: 'Lycée A\n    name: Lycée A bis'}))
    return {name: 'duplicate key in a mapping', rule: 'duplicate-key', files: inventoryFiles({establishments: e}), file: E, at: 'name: Lycée A bis'}
  })(),
  (() => {
    const more = `hypervisors:\n  hv-a:\n    url: https://192.0.2.99:8006\n    nodes: [x]\n    tls: {fingerprint: "${FP}"}\n    token: {id: a@pve!b, secret: {env: X}}\n    storage: {os: a, data: b, import: c}\n`
    return {name: 'hypervisor defined in two files', rule: 'duplicate-key', files: {...inventoryFiles(), 'more.yaml': more}, file: 'more.yaml', at: 'hv-a', message: /already defined at .*hypervisors\.yaml:2:3/}
  })(),
  {name: 'rings defined in two files', rule: 'duplicate-key', files: {...inventoryFiles(), 'z.yaml': 'rings: [a]\n'}, file: 'z.yaml', at: 'rings'},
  {
    name: 'unknown key with did-you-mean',
    rule: 'unknown-key',
    files: inventoryFiles({establishments: est(establishment({rign: 'canary'}))}),
    file: E,
    at: 'rign',
    suggestion: /did you mean "ring"\?/,
  },
  {
    name: 'unknown top-level key',
    rule: 'unknown-key',
    files: inventoryFiles({region: REGION + 'hypervisor: {}\n'}),
    file: R,
    at: 'hypervisor:',
    suggestion: /did you mean "hypervisors"\?/,
  },
  {name: 'missing required key', rule: 'missing-key', files: inventoryFiles({establishments: est(establishment({vmid: null}))}), file: E, at: 'uai: 0130040Y', message: /"vmid"/},
  {name: 'wrong type', rule: 'wrong-type', files: inventoryFiles({establishments: est(establishment({cores: 'deux'}))}), file: E, at: 'deux', message: /whole number/},
  {
    name: 'value not among the allowed ones',
    rule: 'invalid-value',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{days: [mon, tuesday], start: "18:00", end: "20:00"}'}))}),
    file: E,
    at: 'tuesday',
    suggestion: /did you mean "tue"\?/,
  },
  {name: 'bad format (pattern)', rule: 'invalid-format', files: inventoryFiles({establishments: est(establishment({ami: `{name: J, age_recipient: ${AGE1}, email: nobody}`}))}), file: E, at: 'nobody'},
  {
    name: 'invalid hypervisor name',
    rule: 'invalid-name',
    files: inventoryFiles({hypervisors: HYPERVISORS + HYPERVISORS.split('\n').slice(1, 7).join('\n').replace('hv-a', 'HV_C') + '\n'}),
    file: H,
    at: 'HV_C',
  },
  // UAI
  {
    name: 'UAI without its check letter (YAML reads a number)',
    rule: 'uai-format',
    files: inventoryFiles({establishments: est(establishment({uai: '0130040'}))}),
    file: E,
    at: '0130040',
    suggestion: /write 0130040Y/,
  },
  {name: 'UAI of the wrong shape', rule: 'uai-format', files: inventoryFiles({establishments: est(establishment({uai: 'AB12345C'}))}), file: E, at: 'AB12345C'},
  {
    name: 'UAI with a wrong check letter',
    rule: 'uai-check-letter',
    files: inventoryFiles({establishments: est(establishment({uai: '0130040X'}))}),
    file: E,
    at: '0130040X',
    message: /gives Y, not X/,
    suggestion: /write 0130040Y/,
  },
  {
    name: 'duplicate UAI',
    rule: 'duplicate-uai',
    files: inventoryFiles({establishments: est(establishment(), establishment({vmid: '1002', network: '{address: 192.0.2.102/24, gateway: 192.0.2.1}'}))}),
    file: E,
    at: '0130040Y',
    nth: 2,
    message: /establishments\.yaml:2:5/,
  },
  // vmid and addresses
  {
    name: 'duplicate vmid on one hypervisor (other node: PVE ids are cluster-wide)',
    rule: 'duplicate-vmid',
    files: inventoryFiles({establishments: est(establishment(), establishment({uai: '0130041Z', node: 'pve2', network: '{address: 192.0.2.102/24, gateway: 192.0.2.1}'}))}),
    file: E,
    at: '1001',
    nth: 2,
    suggestion: /1002/,
  },
  {
    name: 'duplicate address on one hypervisor',
    rule: 'duplicate-address',
    files: inventoryFiles({establishments: est(establishment(), establishment({uai: '0130041Z', vmid: '1002'}))}),
    file: E,
    at: '192.0.2.101/24',
    nth: 2,
  },
  {
    name: 'same address on two hypervisors (warning: separate sites may reuse private ranges)',
    rule: 'duplicate-address',
    severity: 'warning',
    files: inventoryFiles({establishments: `establishments:\n${establishment()}${establishment({uai: '0840004Y', hypervisor: 'hv-b', node: 'pve-b', ami: `{name: P, age_recipient: ${AGE2}}`})}`}),
    file: E,
    at: '192.0.2.101/24',
    nth: 2,
  },
  {name: 'bad CIDR', rule: 'bad-cidr', files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.300/24, gateway: 192.0.2.1}'}))}), file: E, at: '192.0.2.300/24'},
  {name: 'CIDR without prefix', rule: 'bad-cidr', files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.101/40, gateway: 192.0.2.1}'}))}), file: E, at: '192.0.2.101/40'},
  {
    name: 'address is the network address',
    rule: 'address-reserved',
    files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.0/24, gateway: 192.0.2.1}'}))}),
    file: E,
    at: '192.0.2.0/24',
    suggestion: /192\.0\.2\.1 and 192\.0\.2\.254/,
  },
  {
    name: 'address is the broadcast address',
    rule: 'address-reserved',
    files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.255/24, gateway: 192.0.2.1}'}))}),
    file: E,
    at: '192.0.2.255/24',
    message: /broadcast/,
  },
  {
    name: 'gateway outside the subnet',
    rule: 'gateway-outside-subnet',
    files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.201/25, gateway: 192.0.2.1}'}))}),
    file: E,
    at: '192.0.2.1}',
    message: /192\.0\.2\.1 is outside the VM's subnet 192\.0\.2\.128\/25/,
  },
  {
    name: 'bad DNS address',
    rule: 'bad-ip',
    files: inventoryFiles({establishments: est(establishment({network: '{address: 192.0.2.101/24, gateway: 192.0.2.1, dns: [192.0.2.999]}'}))}),
    file: E,
    at: '192.0.2.999',
  },
  // references
  {
    name: 'unknown hypervisor',
    rule: 'unknown-hypervisor',
    files: inventoryFiles({establishments: est(establishment({hypervisor: 'hv-c'}))}),
    file: E,
    at: 'hv-c',
    suggestion: /did you mean "hv-a"\?/,
  },
  {name: 'node not among the hypervisor nodes', rule: 'unknown-node', files: inventoryFiles({establishments: est(establishment({node: 'pve3'}))}), file: E, at: 'pve3', suggestion: /did you mean "pve1"\?/},
  {name: 'node left out on a multi-node hypervisor', rule: 'node-required', files: inventoryFiles({establishments: est(establishment({node: null}))}), file: E, at: 'hv-a', suggestion: /node: pve1/},
  {name: 'ring not in rings', rule: 'unknown-ring', files: inventoryFiles({establishments: est(establishment({ring: 'canari'}))}), file: E, at: 'canari', suggestion: /did you mean "canary"\?/},
  {name: 'default ring not in rings', rule: 'unknown-ring', files: inventoryFiles({region: REGION.replace('ring: general', 'ring: generale')}), file: R, at: 'generale'},
  {
    name: 'group naming an unknown UAI',
    rule: 'group-unknown-uai',
    files: inventoryFiles({region: REGION.replace('g1: [0840004Y]', 'g1: [0840004Y, 0130040X]')}),
    file: R,
    at: '0130040X',
    suggestion: /did you mean 0130040Y\?/,
  },
  // secrets and TLS
  {name: 'token without secret', rule: 'secret-missing', files: inventoryFiles({hypervisors: hvWith('token: {id: pgi@pve!deploy, secret: {env: PGI_TOKEN_HV_A}}', 'token: {id: pgi@pve!deploy}')}), file: H, at: '{id: pgi@pve!deploy}', suggestion: /PGI_TOKEN_HV_A/},
  {
    name: 'literal secret in the YAML',
    rule: 'secret-literal',
    files: inventoryFiles({hypervisors: hvWith('secret: {env: PGI_TOKEN_HV_A}', 'secret: 0b6c2c5e-1b7a-4c1e-9d55-2d1f4c0c9a11')}),
    file: H,
    at: '0b6c2c5e',
    suggestion: /rotate/,
  },
  {name: 'malformed secret reference (bad variable name)', rule: 'secret-ref', files: inventoryFiles({hypervisors: hvWith('{env: PGI_TOKEN_HV_A}', '{env: 1-BAD}')}), file: H, at: '1-BAD'},
  {name: 'secret reference naming two sources', rule: 'secret-ref', files: inventoryFiles({hypervisors: hvWith('{env: PGI_TOKEN_HV_A}', '{env: A, store: b}')}), file: H, at: '{env: A, store: b}'},
  {
    name: 'fingerprint in the wrong form',
    rule: 'tls-fingerprint',
    files: inventoryFiles({hypervisors: hvWith(`tls: {fingerprint: "${FP}"}`, `tls: {fingerprint: "${FP.replace(/:/g, '').toLowerCase()}"}`)}),
    file: H,
    at: `"${FP.replace(/:/g, '').toLowerCase()}`,
    suggestion: new RegExp(`write it as ${FP}`),
  },
  {name: 'SHA-1 fingerprint', rule: 'tls-fingerprint', files: inventoryFiles({hypervisors: hvWith(`tls: {fingerprint: "${FP}"}`, `tls: {fingerprint: "${FP.slice(0, 59)}"}`)}), file: H, at: `"${FP.slice(0, 59)}`, message: /SHA-1/},
  {name: 'TLS with neither fingerprint nor CA', rule: 'tls-missing', files: inventoryFiles({hypervisors: hvWith(`tls: {fingerprint: "${FP}"}`, 'tls: {}')}), file: H, at: '{}', suggestion: /pgi inventory trust hv-a/},
  {name: 'no tls at all', rule: 'tls-missing', files: inventoryFiles({hypervisors: hvWith(`    tls: {fingerprint: "${FP}"}\n    token: {id: pgi@pve!deploy, secret: {env: PGI_TOKEN_HV_A}}`, '    token: {id: pgi@pve!deploy, secret: {env: PGI_TOKEN_HV_A}}')}), file: H, at: 'url: https://192.0.2.10'},
  {name: 'CA file missing on disk', rule: 'tls-ca-file', files: inventoryFiles({hypervisors: hvWith(`tls: {fingerprint: "${FP}"}`, 'tls: {ca_file: ca/missing.pem}')}), file: H, at: 'ca/missing.pem', message: /does not exist/},
  {
    name: 'CA file that is not PEM',
    rule: 'tls-ca-file',
    files: {...inventoryFiles({hypervisors: hvWith(`tls: {fingerprint: "${FP}"}`, 'tls: {ca_file: ca.txt}')}), 'ca.txt': 'hello'},
    file: H,
    at: 'ca.txt',
    message: /no PEM/,
  },
  {name: 'API URL with a path', rule: 'hypervisor-url', files: inventoryFiles({hypervisors: hvWith('https://192.0.2.10:8006', 'https://192.0.2.10:8006/api2/json/nodes')}), file: H, at: 'https://192.0.2.10'},
  // age
  {
    name: 'AMI age recipient with a bad checksum',
    rule: 'age-recipient',
    files: inventoryFiles({establishments: est(establishment({ami: `{name: J, age_recipient: ${AGE1.slice(0, -1)}y}`}))}),
    file: E,
    at: AGE1.slice(0, -1) + 'y',
    message: /bech32/,
  },
  {name: 'recipient key of the wrong kind', rule: 'age-recipient', files: inventoryFiles({region: REGION + `recipients:\n  - {name: x, key: ${AGE1.slice(0, 20)}}\n`}), file: R, at: AGE1.slice(0, 20)},
  // maintenance windows
  {
    name: 'maintenance window with an impossible time',
    rule: 'maintenance-window',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{days: [mon], start: "25:00", end: "02:00"}'}))}),
    file: E,
    at: '"25:00"',
  },
  {
    name: 'maintenance window with a time YAML reads as a number',
    rule: 'maintenance-window',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{days: [mon], start: 18.30, end: "20:00"}'}))}),
    file: E,
    at: '18.30',
    suggestion: /"18:30"/,
  },
  {
    name: 'empty maintenance window',
    rule: 'maintenance-window',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{days: [mon], start: "18:00", end: "18:00"}'}))}),
    file: E,
    at: '"18:00"',
    nth: 2,
  },
  {
    name: 'unknown time zone',
    rule: 'maintenance-window',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{days: [mon], start: "18:00", end: "20:00", timezone: Europe/Pari}'}))}),
    file: E,
    at: 'Europe/Pari',
    suggestion: /Europe\/Paris/,
  },
  {
    name: 'incomplete maintenance window (no defaults to fill it)',
    rule: 'maintenance-window',
    files: inventoryFiles({establishments: est(establishment({maintenance_window: '{start: "18:00", end: "20:00"}'}))}),
    file: E,
    at: '{start',
    message: /no days/,
  },
  // databases
  {
    name: 'database name with upper case and a dash',
    rule: 'database-name',
    files: inventoryFiles({establishments: est(establishment({databases: '[{name: pgi}, {name: Compta-2026}]'}))}),
    file: E,
    at: 'Compta-2026',
    suggestion: /compta_2026/,
  },
  {
    name: 'database name starting with a digit',
    rule: 'database-name',
    files: inventoryFiles({establishments: est(establishment({databases: '[{name: "2026"}]'}))}),
    file: E,
    at: '"2026"',
    suggestion: /db_2026/,
  },
  {
    name: 'database name reserved by the engine',
    rule: 'database-name',
    files: inventoryFiles({establishments: est(establishment({databases: '[{name: pgi_template_bts}]'}))}),
    file: E,
    at: 'pgi_template_bts',
    message: /reserved/,
  },
  {
    name: 'database name of PostgreSQL (in defaults)',
    rule: 'database-name',
    files: inventoryFiles({region: REGION.replace('  ring: general\n', '  ring: general\n  databases: [{name: postgres}]\n')}),
    file: R,
    at: 'postgres',
    message: /reserved/,
  },
  {
    name: 'database declared twice',
    rule: 'duplicate-database',
    files: inventoryFiles({establishments: est(establishment({databases: '[{name: pgi}, {name: cours}, {name: pgi, fiscal_year: 2027}]'}))}),
    file: E,
    at: 'pgi',
    nth: 2,
    message: /declared twice \(first at .*establishments\.yaml:\d+:\d+\)/,
  },
  {
    name: 'establishment name too long to name the company',
    rule: 'database-company',
    files: inventoryFiles({establishments: est(establishment({name: `Lycée ${'x'.repeat(130)}`}))}),
    file: E,
    at: 'Lycée x',
  },
  // warnings
  {name: 'empty file', rule: 'empty-file', severity: 'warning', files: {...inventoryFiles(), 'empty.yaml': '# nothing yet\n'}, file: 'empty.yaml', at: '# nothing'},
  {name: 'hypervisor without establishments', rule: 'unused-hypervisor', severity: 'warning', files: inventoryFiles({establishments: `establishments:\n${B}`}), file: H, at: 'hv-a'},
  {name: 'empty group', rule: 'empty-group', severity: 'warning', files: inventoryFiles({region: REGION + '  g2: []\n'}), file: R, at: 'g2'},
  {
    name: 'recipient listed twice',
    rule: 'duplicate-recipient',
    severity: 'warning',
    files: inventoryFiles({region: REGION + `recipients:\n  - {name: a, key: ${AGE1}}\n  - {name: b, key: ${AGE1}}\n`}),
    file: R,
    at: AGE1,
    nth: 2,
  },
]

describe('inventory rules: one broken fixture per rule', () => {
  it('the fixtures start from a valid inventory', async () => {
    const {problems} = await problemsOf(inventoryFiles())
    expect(problems).toEqual([])
  })

  it.each(cases)('$rule: $name', async (c) => {
    const {dir, problems, errors} = await problemsOf(c.files)
    const found = problems.filter((p) => p.rule === c.rule)
    expect(found, JSON.stringify(problems, null, 1)).toHaveLength(1)
    const p = found[0]!
    const pos = locate(c.files[c.file]!, c.at, c.nth)
    expect({file: p.file, line: p.line, column: p.column}).toEqual({file: `${dir}/${c.file}`, ...pos})
    expect(p.severity).toBe(c.severity ?? 'error')
    expect(p.message.length).toBeGreaterThan(10)
    if (c.message) expect(p.message).toMatch(c.message)
    if (c.suggestion) expect(p.suggestion).toMatch(c.suggestion)
    // the broken fixture has exactly this error (no cascade of follow-up errors)
    if ((c.severity ?? 'error') === 'error') expect(errors.map((e) => e.rule)).toEqual([c.rule])
    else expect(errors).toEqual([])
  })

  it('every error has a suggestion', async () => {
    for (const c of cases) {
      const {problems} = await problemsOf(c.files)
      for (const p of problems) expect(p.suggestion, `${c.name}: ${p.rule} ${p.message}`).toBeTruthy()
    }
  })
})

describe('declared databases', () => {
  const load = async (files: Record<string, string>) => {
    const {loadInventory} = await import('../../../src/inventory/load.js')
    const {writeInventory} = await import('./helpers.js')
    return loadInventory(writeInventory(files))
  }

  it('default: one database pgi, company named after the establishment, French chart, EUR, current year', async () => {
    const {inventory, problems} = await load(inventoryFiles())
    expect(problems).toEqual([])
    const a = inventory.establishments.find((e) => e.uai === '0130040Y')!
    expect(a.databases).toEqual([{name: 'pgi', company: 'Lycée A', chart: 'fr', currency: 'EUR', source: expect.objectContaining({line: expect.any(Number)})}])
    expect(a.databases[0]!.fiscalYear).toBeUndefined()
  })

  it('defaults.databases is inherited; an establishment list replaces it; [] declares none', async () => {
    const region = REGION.replace('  ring: general\n', '  ring: general\n  databases: [{name: pgi}, {name: exercices, fiscal_year: 2027}]\n')
    const estA = establishment({databases: '[{name: cours, company: "SARL Cours", fiscal_year: 2025}]'})
    const estB = B.replace("    ami:", '    databases: []\n    ami:')
    const {inventory, problems} = await load(inventoryFiles({region, establishments: `establishments:\n${estA}${estB}`}))
    expect(problems).toEqual([])
    const [a, b] = ['0130040Y', '0840004Y'].map((u) => inventory.establishments.find((e) => e.uai === u)!)
    expect(a!.databases.map((d) => [d.name, d.company, d.fiscalYear])).toEqual([['cours', 'SARL Cours', 2025]])
    expect(b!.databases).toEqual([])
    const {inventory: inv2} = await load(inventoryFiles({region}))
    expect(inv2.establishments[0]!.databases.map((d) => [d.name, d.company, d.fiscalYear])).toEqual([
      ['pgi', 'Lycée A', undefined],
      ['exercices', 'Lycée A', 2027],
    ])
  })

  it('only the French chart and EUR are accepted (what the image template holds)', async () => {
    const {problems} = await load(inventoryFiles({establishments: est(establishment({databases: '[{name: pgi, chart: be, currency: USD}]'}))}))
    expect(problems.map((p) => p.rule).sort()).toEqual(['invalid-value', 'invalid-value'])
    expect(problems.map((p) => p.message).join('\n')).toMatch(/not one of fr[\s\S]*not one of EUR|not one of EUR[\s\S]*not one of fr/)
  })

  it('old_cluster_days: inherited from defaults, overridden per establishment, a whole number of days', async () => {
    const region = REGION.replace('  ring: general\n', '  ring: general\n  old_cluster_days: 90\n')
    const estA = establishment({old_cluster_days: '30'})
    const {inventory, problems} = await load(inventoryFiles({region, establishments: `establishments:\n${estA}${B}`}))
    expect(problems).toEqual([])
    expect(['0130040Y', '0840004Y'].map((u) => inventory.establishments.find((e) => e.uai === u)!.oldClusterDays)).toEqual([30, 90])
    const {inventory: none} = await load(inventoryFiles())
    expect(none.establishments[0]!.oldClusterDays).toBeUndefined()
    const {problems: bad} = await load(inventoryFiles({establishments: est(establishment({old_cluster_days: '0'}))}))
    expect(bad.map((p) => [p.rule, p.line > 0])).toEqual([['invalid-value', true]])
  })
})
