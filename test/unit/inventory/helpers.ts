import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'

import {afterAll} from 'vitest'

import {loadInventory} from '../../../src/inventory/load.js'
import type {InventoryProblem} from '../../../src/inventory/types.js'

const dirs: string[] = []
afterAll(() => {
  for (const d of dirs) rmSync(d, {recursive: true, force: true})
})

/** Writes files into a fresh temp folder and returns its path. */
export function writeInventory(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgi-inv-'))
  dirs.push(dir)
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), {recursive: true})
    writeFileSync(join(dir, name), text)
  }
  return dir
}

/** 1-based line and column of the first occurrence of `needle` in `text` (the n-th with `nth`). */
export function locate(text: string, needle: string, nth = 1): {line: number; column: number} {
  let i = -1
  for (let k = 0; k < nth; k++) {
    i = text.indexOf(needle, i + 1)
    if (i === -1) throw new Error(`fixture does not contain ${JSON.stringify(needle)} (${nth})`)
  }
  const before = text.slice(0, i).split('\n')
  return {line: before.length, column: before.at(-1)!.length + 1}
}

export async function problemsOf(files: Record<string, string>): Promise<{dir: string; problems: InventoryProblem[]; errors: InventoryProblem[]}> {
  const dir = writeInventory(files)
  const {problems} = await loadInventory(dir)
  return {dir, problems, errors: problems.filter((p) => p.severity === 'error')}
}

export const FP = '3A:9F:0C:51:7B:22:E4:18:C6:0D:95:AB:41:7E:F2:63:88:1C:D4:5A:09:B7:E3:2F:6C:11:8A:D0:54:F9:2E:B3'
export const AGE1 = 'age1ppm2jlw8edhgt99e7furp5wjdd4gyrlv5ndarvv4npp3g67wzceqdhdjyx'
export const AGE2 = 'age15clj4ufv8lshfq6zcm3xawc8kexgsl5rlp22u6lgercrd0s7ppqqctympt'

export const HYPERVISORS = `hypervisors:
  hv-a:
    url: https://192.0.2.10:8006
    nodes: [pve1, pve2]
    tls: {fingerprint: "${FP}"}
    token: {id: pgi@pve!deploy, secret: {env: PGI_TOKEN_HV_A}}
    storage: {os: local-lvm, data: local-lvm, import: local}
  hv-b:
    url: https://198.51.100.20:8006
    nodes: [pve-b]
    tls: {fingerprint: "${FP}"}
    token: {id: pgi@pve!deploy, secret: {store: hypervisors/hv-b/token}}
    storage: {os: local-zfs, data: tank, import: local}
`

export const REGION = `region: Test
rings: [canary, pilot, general]
defaults:
  academie: Aix-Marseille
  ring: general
groups:
  g1: [0840004Y]
`

/** One establishment on hv-a (text), with `over` lines replacing the default ones by key. */
export function establishment(over: Record<string, string | null> = {}, indent = '    '): string {
  const base: Record<string, string> = {
    uai: '0130040Y',
    name: 'Lycée A',
    hypervisor: 'hv-a',
    node: 'pve1',
    vmid: '1001',
    network: '{address: 192.0.2.101/24, gateway: 192.0.2.1}',
    ami: `{name: Jeanne, age_recipient: ${AGE1}}`,
  }
  const merged: Record<string, string | null> = {...base, ...over}
  const lines = Object.entries(merged)
    .filter((e): e is [string, string] => e[1] !== null)
    .map(([k, v]) => `${k}: ${v}`)
  return `  - ${lines[0]}\n${lines.slice(1).map((l) => `${indent}${l}`).join('\n')}\n`
}

/** A valid inventory (3 files) with optional replacements. */
export function inventoryFiles(parts: {region?: string; hypervisors?: string; establishments?: string} = {}): Record<string, string> {
  return {
    'region.yaml': parts.region ?? REGION,
    'hypervisors.yaml': parts.hypervisors ?? HYPERVISORS,
    'establishments.yaml':
      parts.establishments ??
      `establishments:\n${establishment()}${establishment({uai: '0840004Y', name: 'Lycée B', hypervisor: 'hv-b', node: 'pve-b', vmid: '1001', network: '{address: 198.51.100.101/24, gateway: 198.51.100.1}', ami: `{name: Paul, age_recipient: ${AGE2}}`})}`,
  }
}
