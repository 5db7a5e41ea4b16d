/**
 * The least-privilege role, checked three ways:
 *  1. against the PVE API schema (8.4 and 9.1; the trimmed copy of the official files kept in
 *     src/lab/pve-schema/, or the official files in PGI_PVE_API_DIR):
 *     every endpoint the client calls exists, and its `permissions.check` (and the privileges its
 *     description names) are satisfied by the role on the ACL paths we grant — and nothing in
 *     the role is unneeded or unknown to that PVE version;
 *  2. against the client itself: driving every PveClient method hits exactly PGI_ENDPOINTS;
 *  3. against docs/proxmox-role.md: the documented privileges are the ones in src/proxmox/role.ts.
 */
import {existsSync, readFileSync} from 'node:fs'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describe, expect, it} from 'vitest'

import {
  AMI_DB_ENDPOINTS,
  AMI_DB_ROLE_PRIVILEGES,
  AMI_ENDPOINTS,
  AMI_ROLE_PRIVILEGES,
  PGI_ENDPOINTS,
  PGI_ROLE_PRIVILEGES,
  pveumAmiCommands,
  pveumCommands,
  type PveMajor,
} from '../../../src/proxmox/role.js'
import {client, FakePve, ok, upid, type Recorded, type Reply} from './fake-pve.js'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..')
const apiDir = process.env.PGI_PVE_API_DIR ?? resolve(repo, 'src/lab/pve-schema')
const FILES: Record<PveMajor, string> = process.env.PGI_PVE_API_DIR ? {'8': 'apidoc-pve8.json', '9': 'apidoc.json'} : {'8': 'pve-8.4.json', '9': 'pve-9.1.json'}

type Check = [string, ...unknown[]]
interface Method {
  parameters?: {properties?: Record<string, unknown>}
  permissions?: {check?: Check; description?: string; user?: string}
}
interface SchemaNode {
  path: string
  info?: Record<string, Method>
  children?: SchemaNode[]
}

function loadSchema(major: PveMajor): {index: Map<string, Method>; text: string} {
  const file = join(apiDir, FILES[major])
  if (!existsSync(file)) throw new Error(`PVE API schema not found at ${file} (set PGI_PVE_API_DIR)`)
  const text = readFileSync(file, 'utf8')
  const index = new Map<string, Method>()
  const walk = (nodes: SchemaNode[]): void => {
    for (const n of nodes) {
      for (const [m, info] of Object.entries(n.info ?? {})) index.set(`${m} ${n.path}`, info)
      walk(n.children ?? [])
    }
  }
  walk(JSON.parse(text) as SchemaNode[])
  return {index, text}
}

/** ACL paths the pveum commands grant the role on (storages/bridges are per hypervisor). */
const GRANTED = ['/vms', '/nodes', '/storage/', '/sdn/zones/localnetwork/']
const covered = (p: string): boolean => GRANTED.some((g) => p === g || p.startsWith(g.endsWith('/') ? g : g + '/'))

/**
 * Evaluates a PVE permission check (PVE::RPCEnvironment::check_api2_permissions) for our grants:
 * `grants` tells whether the role is granted on an ACL path (default: the PGI role's paths).
 */
function satisfied(check: Check | undefined, privs: Set<string>, named: Set<string>, grants: (path: string) => boolean = covered): boolean {
  if (!check) return true
  const [op, ...rest] = check
  if (op === 'and') return rest.map((c) => satisfied(c as Check, privs, named, grants)).every(Boolean)
  if (op === 'or') return rest.map((c) => satisfied(c as Check, privs, named, grants)).some(Boolean)
  if (op === 'perm') {
    const [path, list, ...mods] = rest as [string, string[], ...unknown[]]
    for (const p of list) named.add(p)
    if (mods.includes('require_param')) return false // pools: pgi does not use them
    if (!grants(path)) return false
    return mods.includes('any') ? list.some((p) => privs.has(p)) : list.every((p) => privs.has(p))
  }
  throw new Error(`unhandled permission check ${JSON.stringify(check)}`)
}

/** The AMI roles are granted on /vms/<vmid> alone. */
const oneVm = (p: string): boolean => p === '/vms/{vmid}'

describe.each(['8', '9'] as PveMajor[])('PGI role on PVE %s', (major) => {
  const {index, text} = loadSchema(major)
  const role = new Set(PGI_ROLE_PRIVILEGES[major])

  it('satisfies the permissions of every endpoint the client calls', () => {
    const failures: string[] = []
    for (const e of PGI_ENDPOINTS) {
      const m = index.get(`${e.method} ${e.path}`)
      if (!m) {
        failures.push(`${e.method} ${e.path}: not in the PVE ${major} schema`)
        continue
      }
      if (!satisfied(m.permissions?.check, role, new Set())) failures.push(`${e.method} ${e.path}: ${JSON.stringify(m.permissions?.check)}`)
      for (const p of e.described ?? []) {
        if (!(m.permissions?.description ?? '').includes(p)) failures.push(`${e.method} ${e.path}: description does not name ${p}`)
        if (!role.has(p)) failures.push(`${e.method} ${e.path}: role lacks ${p}`)
      }
    }
    expect(failures).toEqual([])
  })

  it('holds nothing unneeded, and only privileges this PVE version knows', () => {
    const named = new Set<string>()
    for (const e of PGI_ENDPOINTS) {
      const m = index.get(`${e.method} ${e.path}`)
      satisfied(m?.permissions?.check, role, named)
      for (const p of e.described ?? []) named.add(p)
    }
    expect([...role].filter((p) => !named.has(p))).toEqual([])
    expect([...role].filter((p) => !new RegExp(`"${p.replace(/\./g, '\\.')}"`).test(text))).toEqual([])
  })

  it('is really needed: without the guest-agent privilege, agent exec is refused', () => {
    const agentPriv = major === '8' ? 'VM.Monitor' : 'VM.GuestAgent.Unrestricted'
    const without = new Set([...role].filter((p) => p !== agentPriv))
    const exec = index.get('POST /nodes/{node}/qemu/{vmid}/agent/exec')!
    expect(satisfied(exec.permissions?.check, without, new Set())).toBe(false)
    const dl = index.get('POST /nodes/{node}/storage/{storage}/download-url')!
    expect(satisfied(dl.permissions?.check, new Set([...role].filter((p) => p !== 'Sys.AccessNetwork')), new Set())).toBe(false)
  })

  /** Can a role granted on /vms/<vmid> call this endpoint, per the PVE schema? */
  const allows = (privs: readonly string[], key: string): boolean => {
    const m = index.get(key)
    if (!m) throw new Error(`${key}: not in the PVE ${major} schema`)
    return satisfied(m.permissions?.check, new Set(privs), new Set(), oneVm)
  }
  const NEVER = [
    'PUT /nodes/{node}/qemu/{vmid}/config',
    'POST /nodes/{node}/qemu/{vmid}/status/stop',
    'POST /nodes/{node}/qemu/{vmid}/status/start',
    'DELETE /nodes/{node}/qemu/{vmid}',
    'POST /nodes/{node}/qemu/{vmid}/snapshot',
    'POST /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback',
    'POST /nodes/{node}/qemu/{vmid}/clone',
    'PUT /nodes/{node}/qemu/{vmid}/resize',
  ]

  it.each([
    ['PGI-AMI', AMI_ROLE_PRIVILEGES[major], AMI_ENDPOINTS],
    ['PGI-AMI-DB', AMI_DB_ROLE_PRIVILEGES[major], AMI_DB_ENDPOINTS],
  ] as const)('%s: its endpoints on one VM, only privileges they ask for and this PVE version knows', (_name, privs, endpoints) => {
    for (const e of endpoints) expect(allows(privs, `${e.method} ${e.path}`), `${e.method} ${e.path}`).toBe(true)
    const named = new Set<string>()
    for (const e of endpoints) satisfied(index.get(`${e.method} ${e.path}`)?.permissions?.check, new Set(privs), named, oneVm)
    expect(privs.filter((p) => !named.has(p))).toEqual([])
    expect(privs.filter((p) => !new RegExp(`"${p.replace(/\./g, '\\.')}"`).test(text))).toEqual([])
    // each privilege is needed: without it, one of the endpoints is refused
    for (const p of privs) expect(endpoints.some((e) => !allows(privs.filter((x) => x !== p), `${e.method} ${e.path}`)), `${p} is needed`).toBe(true)
    // nothing on the VM itself: configuration, power, snapshots, deletion, clones
    for (const k of NEVER) expect(allows(privs, k), k).toBe(false)
  })

  it('PGI-AMI reads files through the agent but may not run commands (PVE 9); PGI-AMI-DB may', () => {
    const exec = 'POST /nodes/{node}/qemu/{vmid}/agent/exec'
    expect(allows(AMI_ROLE_PRIVILEGES[major], 'GET /nodes/{node}/qemu/{vmid}/agent/file-read')).toBe(true)
    // PVE 8 has no finer agent privilege: VM.Monitor also allows exec and file-write (documented caveat)
    expect(allows(AMI_ROLE_PRIVILEGES[major], exec)).toBe(major === '8')
    expect(allows(AMI_ROLE_PRIVILEGES[major], 'POST /nodes/{node}/qemu/{vmid}/agent/file-write')).toBe(major === '8')
    expect(allows(AMI_DB_ROLE_PRIVILEGES[major], exec)).toBe(true)
    expect(allows(AMI_DB_ROLE_PRIVILEGES[major], 'GET /nodes/{node}/qemu/{vmid}/agent/exec-status')).toBe(true)
  })
})

describe('the client calls exactly PGI_ENDPOINTS', () => {
  it('every PveClient method maps to a listed endpoint, and every listed endpoint is used', async () => {
    const templates = PGI_ENDPOINTS.map((e) => ({
      key: `${e.method} ${e.path}`,
      re: new RegExp(`^${e.method} ${e.path.replace(/\{upid\}/g, 'UPID:[^/]+').replace(/\{[a-z]+\}/g, '[^/]+')}$`),
    }))
    const fake = new FakePve()
    const u = upid('qmcreate', 100)
    fake.fallback = (r: Recorded): Reply => {
      if (r.path.includes('/tasks/') && r.path.endsWith('/status')) return ok({status: 'stopped', exitstatus: 'OK', upid: u, type: 'qmcreate', node: 'pve1', starttime: 1})
      if (r.path.endsWith('/agent/exec')) return ok({pid: 7})
      if (r.path.endsWith('/exec-status')) return ok({exited: 1, exitcode: 0, 'out-data': ''})
      if (r.path.endsWith('/nextid')) return ok('100')
      if (r.path.endsWith('/agent/file-read')) return ok({content: '{}'})
      if (r.method !== 'GET' && !r.path.endsWith('/config') && !r.path.endsWith('/cloudinit') && !r.path.endsWith('/file-write')) return ok(u)
      return ok(r.path.endsWith('/config') ? {digest: 'x'} : [])
    }
    const c = client(fake)
    const dir = await mkdtemp(join(tmpdir(), 'pgi-role-'))
    try {
      await writeFile(join(dir, 'i.qcow2'), 'x')
      await c.version()
      await c.nodes()
      await c.clusterResources('vm')
      await c.nextVmid()
      await c.createVm('pve1', 100, {name: 'a'})
      await c.vmConfig('pve1', 100)
      await c.updateVmConfig('pve1', 100, {memory: 1})
      await c.vmStatus('pve1', 100)
      await c.cloneVm('pve1', 100, 101, {full: true, name: 'pgi-b', storage: 'local-lvm', target: 'pve1', description: 'd'})
      await c.convertToTemplate('pve1', 100)
      await c.startVm('pve1', 100)
      await c.shutdownVm('pve1', 100, {forceStopAfterS: 60})
      await c.stopVm('pve1', 100)
      await c.deleteVm('pve1', 100, {purge: true, destroyUnreferencedDisks: true})
      await c.resizeDisk('pve1', 100, 'virtio1', '64G')
      await c.listSnapshots('pve1', 100)
      await c.snapshot('pve1', 100, 'pre-update', 'before 2026.11.1')
      await c.rollbackSnapshot('pve1', 100, 'pre-update')
      await c.deleteSnapshot('pve1', 100, 'pre-update')
      await c.regenerateCloudinit('pve1', 100)
      await c.agentPing('pve1', 100)
      await c.agentNetworkInterfaces('pve1', 100)
      await c.agentFsInfo('pve1', 100)
      await c.agentExec('pve1', 100, ['true'], {inputData: '{}'})
      await c.agentFileWrite('pve1', 100, '/tmp/x', 'y')
      await c.agentFileRead('pve1', 100, '/etc/pgi/image.json')
      await c.storageContent('pve1', 'local', 'import')
      await c.storageStatus('pve1', 'local')
      await c.uploadFile('pve1', 'local', join(dir, 'i.qcow2'), {filename: 'i.qcow2', content: 'import', sha256: 'a'.repeat(64)})
      await c.downloadUrl('pve1', 'local', {url: 'https://images.invalid/i.qcow2', filename: 'i.qcow2', content: 'import', sha256: 'a'.repeat(64)})
      await c.listTasks('pve1', {vmid: 100, type: 'qmstart', since: 1})
      await c.taskLog('pve1', u)
    } finally {
      await rm(dir, {recursive: true, force: true})
    }
    const used = new Set<string>()
    const unlisted: string[] = []
    for (const r of fake.requests) {
      const t = templates.find((x) => x.re.test(`${r.method} ${r.path}`))
      if (t) used.add(t.key)
      else unlisted.push(`${r.method} ${r.path}`)
    }
    expect(unlisted).toEqual([])
    expect(templates.map((t) => t.key).filter((k) => !used.has(k))).toEqual([])

    // Every parameter name the client sends exists for that endpoint in both PVE versions
    // (PVE rejects unknown parameters: additionalProperties 0).
    const unknown: string[] = []
    for (const major of ['8', '9'] as PveMajor[]) {
      const {index} = loadSchema(major)
      for (const r of fake.requests) {
        const t = templates.find((x) => x.re.test(`${r.method} ${r.path}`))!
        const props = index.get(t.key)?.parameters?.properties ?? {}
        const names = new Set<string>([...r.query.keys(), ...(r.form?.keys() ?? [])])
        if (r.bodyBytes) for (const m of r.bodyBytes.toString('latin1').matchAll(/Content-Disposition: form-data; name="([^"]+)"/g)) names.add(m[1])
        for (const n of names) if (!(n in props)) unknown.push(`PVE ${major}: ${t.key} has no parameter "${n}"`)
      }
    }
    expect([...new Set(unknown)]).toEqual([])
  })
})

describe('docs/proxmox-role.md', () => {
  it.each(['8', '9'] as PveMajor[])('documents the exact PVE %s privileges and pveum commands', (major) => {
    const doc = readFileSync(join(repo, 'docs/proxmox-role.md'), 'utf8')
    const v = major === '8' ? '8.4' : '9.1'
    expect(doc).toContain(pveumCommands({pveVersion: v, storages: [], bridges: []})[0])
    for (const db of [false, true]) expect(doc).toContain(pveumAmiCommands({pveVersion: v, user: 'x', vmid: 1, db})[0])
    for (const line of pveumAmiCommands({pveVersion: v, user: 'ami-0130040y@pve', vmid: 1001}).slice(1)) expect(doc).toContain(line)
    expect(doc).toContain(pveumAmiCommands({pveVersion: v, user: 'ami-0130040y@pve', vmid: 1001, db: true}).at(-1))
    for (const p of PGI_ROLE_PRIVILEGES[major]) expect(doc).toContain(p)
  })

  it('the README shows the same PVE 9 privileges', () => {
    const readme = readFileSync(join(repo, 'README.md'), 'utf8')
    expect(readme).toContain(`PVE 9.x: \`${PGI_ROLE_PRIVILEGES['9'].join(' ')}\``)
  })
})
