import {execFileSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describe, expect, it} from 'vitest'

import {knownFormat} from '../../../src/lab/pve-formats.js'
import {pveSchemaFile, type PermissionCheck, type SchemaProp} from '../../../src/lab/pve-schema.js'
import {LAB_ROUTES} from '../../../src/lab/params.js'
import {findMethod, loadPveSchema, schemaParamKey, validateRequest} from '../../helpers/pve-schema.js'

/**
 * The lab validates requests against the PVE API schema kept in the repository
 * (src/lab/pve-schema/, trimmed from the official files by scripts/trim-pve-schema.mjs). These
 * tests check that everything the lab serves exists in that schema for both releases, that the
 * lab implements every named format and permission test its endpoints use, that the trimmed copy
 * holds no prose and is what the script makes from the official files (when they are at hand:
 * ../shared/pve-api or PGI_PVE_API_DIR), and that the lab serves every endpoint pgi calls.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const OFFICIAL = process.env.PGI_PVE_API_DIR ?? resolve(ROOT, '..', 'shared', 'pve-api')

/** Every named format of a parameter, its property-string keys and array items. */
function formatsOf(p: SchemaProp, out: Set<string>): void {
  if (typeof p.format === 'string') out.add(p.format)
  else if (p.format && typeof p.format === 'object') for (const k of Object.values(p.format)) formatsOf(k, out)
  if (p.items) formatsOf(p.items, out)
}

/** Permission tests the lab evaluates (src/lab/access.ts checkApi). */
function unsupportedTests(check: PermissionCheck | undefined): string[] {
  if (!check) return []
  const [test, ...rest] = check
  if (test === 'and' || test === 'or') return rest.flatMap((c) => unsupportedTests(c as PermissionCheck))
  return test === 'perm' ? [] : [String(test)]
}

describe.each(['9.1', '8.4'] as const)('lab routes against the PVE %s schema', (version) => {
  const schema = loadPveSchema(version)

  it('serves only paths and methods of the schema', () => {
    const missing = LAB_ROUTES.filter((r) => !findMethod(schema, r.method, r.path)).map((r) => `${r.method} ${r.path}`)
    expect(missing).toEqual([])
  })

  it('implements every named format its endpoints use', () => {
    const formats = new Set<string>()
    for (const r of LAB_ROUTES) for (const p of Object.values(findMethod(schema, r.method, r.path)?.parameters?.properties ?? {})) formatsOf(p, formats)
    expect([...formats].filter((f) => !knownFormat(f)).sort()).toEqual([])
    expect(formats.size).toBeGreaterThan(30)
  })

  it('can evaluate every permission check of its endpoints', () => {
    const problems = LAB_ROUTES.flatMap((r) => {
      const perms = findMethod(schema, r.method, r.path)?.permissions
      if (!perms) return [`${r.method} ${r.path}: no permissions (root only)`]
      return unsupportedTests(perms.check).map((t) => `${r.method} ${r.path}: ${t}`)
    })
    expect(problems).toEqual([])
  })

  it('marks /access/ticket as the only route without auth, and it refuses tokens like PVE (allowtoken 0)', () => {
    const noAuth = LAB_ROUTES.filter((r) => r.noAuth)
    expect(noAuth.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /access/ticket'])
    expect(findMethod(schema, 'POST', '/access/ticket')!.allowtoken).toBe(0)
    expect(findMethod(schema, 'POST', '/access/ticket')!.permissions?.user).toBe('world')
  })

  it('uses VM.GuestAgent.* on 9.1 and VM.Monitor on 8.4 for the guest agent', () => {
    const check = JSON.stringify(findMethod(schema, 'POST', '/nodes/{node}/qemu/{vmid}/agent/exec')!.permissions?.check)
    expect(check).toContain(version === '9.1' ? 'VM.GuestAgent.Unrestricted' : 'VM.Monitor')
  })
})

describe('the trimmed schema in the repository', () => {
  const PROSE = ['description', 'verbose_description', 'typetext', 'format_description', 'title', 'renderer']

  it('holds no prose, and stays small', () => {
    for (const v of ['9.1', '8.4'] as const) {
      const text = readFileSync(pveSchemaFile(v), 'utf8')
      const nodes = JSON.parse(text) as {path: string; info?: Record<string, Record<string, unknown>>}[]
      expect(nodes[0]).toMatchObject({path: '', version: v})
      const found = new Set<string>()
      const walk = (x: unknown, inPermissions: boolean): void => {
        if (Array.isArray(x)) return x.forEach((y) => walk(y, inPermissions))
        if (!x || typeof x !== 'object') return
        for (const [k, y] of Object.entries(x)) {
          // the permission text is kept: it names privileges no `check` expresses
          if (PROSE.includes(k) && !(inPermissions && k === 'description')) found.add(k)
          // maps of parameter / property / key names: their names are data (a parameter may be called "description")
          if ((k === 'properties' || k === 'format' || k === 'info') && y && typeof y === 'object' && !Array.isArray(y)) Object.values(y).forEach((z) => walk(z, false))
          else walk(y, k === 'permissions')
        }
      }
      walk(nodes.slice(1), false)
      expect([...found]).toEqual([])
      expect(text.length).toBeLessThan(700_000)
      expect(nodes.length).toBeGreaterThan(400)
    }
  })

  it.skipIf(!existsSync(join(OFFICIAL, 'apidoc.json')))('is what scripts/trim-pve-schema.mjs makes from the official files', () => {
    const out = mkdtempSync(join(tmpdir(), 'pgi-trim-'))
    try {
      execFileSync(process.execPath, [join(ROOT, 'scripts', 'trim-pve-schema.mjs'), OFFICIAL, out], {stdio: 'pipe'})
      for (const f of ['pve-9.1.json', 'pve-8.4.json']) expect(readFileSync(join(out, f), 'utf8') === readFileSync(join(ROOT, 'src', 'lab', 'pve-schema', f), 'utf8'), f).toBe(true)
    } finally {
      rmSync(out, {recursive: true, force: true})
    }
  })
})

describe('schema helper (test/helpers/pve-schema.ts)', () => {
  const s = loadPveSchema('9.1')

  it('accepts a valid create with import-from and a urlencoded serial', () => {
    expect(validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 1001, name: 'pgi-0130040y', virtio0: 'local-lvm:0,import-from=local:import/pgi-2026.11.0.qcow2', virtio1: 'local-lvm:32,serial=pgi-data', agent: 1, ide2: 'local-lvm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.1.2.3/24,gw=10.1.2.1', sshkeys: 'ssh-ed25519%20AAAA'})).toEqual({})
  })

  it('rejects what PVE rejects', () => {
    const e = validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 5, virtio0: 'local:1,bogus=1', foo: 1, onboot: 'true'})
    expect(Object.keys(e).sort()).toEqual(['foo', 'onboot', 'virtio0', 'vmid'])
    expect(e.virtio0).toBe('invalid format - invalid key in comma-separated list property: bogus\n')
    expect(validateRequest(s, 'GET', '/nodes/pve1/nothing-here', {})).toHaveProperty('<path>')
    expect(validateRequest(s, 'POST', '/nodes/pve1/qemu/100/agent/exec', {})).toEqual({command: 'property is missing and it is not optional'})
    // numbered keys exist only within PVE's ranges
    expect(validateRequest(s, 'POST', '/nodes/pve1/qemu', {vmid: 100, virtio16: 'local:1'})).toHaveProperty('virtio16')
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
