import {describe, expect, it} from 'vitest'

import {LAB_ROUTES, NUMBERED_PARAMS, type ParamDef} from '../../../src/lab/params.js'
import {findMethod, loadPveSchema, schemaParamKey, validateRequest, type PveVersionKey, type SchemaParam} from '../../helpers/pve-schema.js'

/**
 * Every path, method and parameter the lab accepts must exist in the official PVE schema (read
 * from ../shared/pve-api at test time) with the same type and format, for both 9.1 and 8.4.
 */

function compareParam(version: PveVersionKey, route: string, name: string, lab: ParamDef, pve: SchemaParam): string[] {
  const problems: string[] = []
  const where = `${version} ${route} ${name}`
  if (lab.type !== pve.type) problems.push(`${where}: type ${lab.type} vs schema ${pve.type}`)
  const pveFormat = typeof pve.format === 'string' ? pve.format : undefined
  if (lab.format !== undefined && lab.format !== pveFormat) problems.push(`${where}: format ${lab.format} vs schema ${String(pveFormat)}`)
  if (lab.format === undefined && pveFormat !== undefined && !['pve-storage-content'].includes(pveFormat)) problems.push(`${where}: schema has format ${pveFormat}, the lab none`)
  if (lab.keys) {
    if (typeof pve.format !== 'object') problems.push(`${where}: lab parses a property string, schema has no format object`)
    else {
      const fmt = pve.format as Record<string, SchemaParam & {alias?: string; default_key?: number}>
      for (const [k, def] of Object.entries(lab.keys)) {
        const s = fmt[k]
        if (!s) {
          problems.push(`${where}: key ${k} not in schema`)
          continue
        }
        if (s.alias) continue
        if (def.type !== s.type) problems.push(`${where}.${k}: type ${def.type} vs schema ${s.type}`)
        if (def.enum && s.enum && def.enum.some((e) => !s.enum!.includes(e))) problems.push(`${where}.${k}: enum ${def.enum} not within ${s.enum}`)
        if (def.defaultKey && !s.default_key) problems.push(`${where}.${k}: lab default key, schema not`)
      }
    }
  }
  if (lab.enum && pve.enum && lab.enum.some((e) => !pve.enum!.includes(e))) problems.push(`${where}: enum ${lab.enum} not within schema ${pve.enum}`)
  if (lab.enum && !pve.enum) problems.push(`${where}: lab has an enum, schema none`)
  if (lab.minimum !== undefined && pve.minimum !== undefined && lab.minimum < pve.minimum) problems.push(`${where}: minimum ${lab.minimum} below schema ${pve.minimum}`)
  if (lab.maximum !== undefined && pve.maximum !== undefined && lab.maximum > pve.maximum) problems.push(`${where}: maximum ${lab.maximum} above schema ${pve.maximum}`)
  if (lab.maxLength !== undefined && pve.maxLength !== undefined && lab.maxLength !== pve.maxLength) problems.push(`${where}: maxLength ${lab.maxLength} vs schema ${pve.maxLength}`)
  if (lab.pattern !== undefined && lab.pattern !== pve.pattern) problems.push(`${where}: pattern ${lab.pattern} vs schema ${pve.pattern}`)
  if (!lab.optional && lab.maxIndex === undefined && pve.optional) problems.push(`${where}: required in the lab, optional in PVE`)
  if (lab.optional && !pve.optional) problems.push(`${where}: optional in the lab, required in PVE`)
  if (lab.requires !== pve.requires) problems.push(`${where}: requires ${lab.requires} vs schema ${pve.requires}`)
  return problems
}

describe.each(['9.1', '8.4'] as const)('lab routes conform to the PVE %s schema', (version) => {
  const schema = loadPveSchema(version)

  it('has every lab path and method in the schema', () => {
    const missing = LAB_ROUTES.filter((r) => !findMethod(schema, r.method, r.path)).map((r) => `${r.method} ${r.path}`)
    expect(missing).toEqual([])
  })

  it('accepts only parameters the schema defines, with the same type, format, enum and bounds', () => {
    const problems: string[] = []
    for (const r of LAB_ROUTES) {
      const m = findMethod(schema, r.method, r.path)!
      const props = m.parameters?.properties ?? {}
      expect(m.parameters?.additionalProperties ?? 0).toBe(0)
      for (const [name, def] of Object.entries(r.params)) {
        const key = NUMBERED_PARAMS.has(name) && def.maxIndex !== undefined ? `${name}[n]` : name
        const pve = props[key]
        if (!pve) {
          problems.push(`${version} ${r.method} ${r.path}: ${key} not in schema`)
          continue
        }
        problems.push(...compareParam(version, `${r.method} ${r.path}`, key, def, pve))
      }
    }
    expect(problems).toEqual([])
  })

  it('checks the same privileges as the schema', () => {
    const problems: string[] = []
    for (const r of LAB_ROUTES) {
      if (!r.perm) continue
      const check = findMethod(schema, r.method, r.path)!.permissions?.check
      const want = r.agent && version === '8.4' ? ['perm', '/vms/{vmid}', ['VM.Monitor']] : r.perm
      if (JSON.stringify(check) !== JSON.stringify(want)) problems.push(`${r.method} ${r.path}: lab ${JSON.stringify(want)} vs schema ${JSON.stringify(check)}`)
    }
    expect(problems).toEqual([])
  })

  it('marks /access/ticket as the only route without auth, and it refuses tokens like PVE (allowtoken 0)', () => {
    const noAuth = LAB_ROUTES.filter((r) => r.noAuth)
    expect(noAuth.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /access/ticket'])
    expect(findMethod(schema, 'POST', '/access/ticket')!.allowtoken).toBe(0)
  })
})

describe('schema helper (test/helpers/pve-schema.ts)', () => {
  const s = loadPveSchema('9.1')

  it('accepts a valid create with import-from and a urlencoded serial', () => {
    expect(validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 1001, name: 'pgi-0130040y', virtio0: 'local-lvm:0,import-from=local:import/pgi-2026.11.0.qcow2', virtio1: 'local-lvm:32,serial=pgi-data', agent: 1, ide2: 'local-lvm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.1.2.3/24,gw=10.1.2.1', sshkeys: 'ssh-ed25519%20AAAA'})).toEqual({})
  })

  it('rejects what PVE rejects', () => {
    const e = validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 5, virtio0: 'local:1,bogus=1', foo: 1})
    expect(Object.keys(e).sort()).toEqual(['foo', 'virtio0', 'vmid'])
    expect(validateRequest(s, 'GET', '/nodes/pve1/nothing-here', {})).toHaveProperty('<path>')
    expect(validateRequest(s, 'POST', '/nodes/pve1/qemu/100/agent/exec', {})).toEqual({command: 'property is missing and it is not optional'})
  })

  it('finds a method by concrete path', () => {
    expect(findMethod(s, 'GET', '/api2/json/nodes/pve1/qemu/100/config')?.name).toBe('vm_config')
    expect(schemaParamKey(findMethod(s, 'POST', '/nodes/x/qemu')!.parameters!.properties!, 'virtio7')).toBe('virtio[n]')
  })
})

describe('the lab serves every endpoint pgi calls (src/proxmox/role.ts PGI_ENDPOINTS)', () => {
  it('has a route for each', async () => {
    const {PGI_ENDPOINTS} = await import('../../../src/proxmox/role.js')
    const served = new Set(LAB_ROUTES.map((r) => `${r.method} ${r.path}`))
    expect(PGI_ENDPOINTS.map((e) => `${e.method} ${e.path}`).filter((e) => !served.has(e))).toEqual([])
  })
})
