import {createHash} from 'node:crypto'
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {Hypervisor} from '../../../src/inventory/types.js'
import {connectHypervisor, type PveClient} from '../../../src/proxmox/client.js'
import {createTrustedFetch, type FetchFn} from '../../../src/proxmox/tls.js'
import {Secret} from '../../../src/secret.js'
import {loadPveSchema, validateRequest} from '../../helpers/pve-schema.js'
import {startTestLab, TOKEN, type TestLab} from './lab-harness.js'

/**
 * pgi's own Proxmox client (src/proxmox/client.ts) against the lab, TLS pinned to the node's
 * fingerprint: the workflow calls work, and every request the client sends is valid per the
 * PVE 9.1 schema (checked with test/helpers/pve-schema.ts on the recorded requests).
 */
describe('pgi client against the lab', () => {
  let lab: TestLab
  let api: PveClient
  const sent: {method: string; path: string; params: Record<string, unknown>}[] = []

  beforeAll(async () => {
    lab = await startTestLab({timeScale: 0})
    const port = lab.rt.ports.lab1!
    const hv: Hypervisor = {name: 'lab1', url: `https://127.0.0.1:${port}`, nodes: ['lab1'], tls: {fingerprint: lab.rt.fingerprints.lab1}, token: {id: 'pgi@pve!deploy', secret: {store: 'hypervisors/lab1/token'}}, storage: {os: 'local-vm', data: 'local-vm', import: 'local'}, bridge: 'vmbr0', source: {file: 'lab.yaml', line: 1, column: 1}}
    const trusted = createTrustedFetch({fingerprint: lab.rt.fingerprints.lab1})
    const recording: FetchFn = (async (input: Parameters<FetchFn>[0], init?: Parameters<FetchFn>[1]) => {
      const url = new URL(String(input instanceof Request ? input.url : input))
      const method = (init?.method ?? 'GET').toUpperCase()
      const params: Record<string, unknown> = {}
      const add = (k: string, v: string) => {
        const prev = params[k]
        params[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev as string, v]
      }
      url.searchParams.forEach((v, k) => add(k, v))
      const body = init?.body
      if (typeof body === 'string') {
        if (body.trim().startsWith('{')) Object.assign(params, JSON.parse(body))
        else new URLSearchParams(body).forEach((v, k) => add(k, v))
      } else if (body instanceof URLSearchParams) body.forEach((v, k) => add(k, v))
      sent.push({method, path: url.pathname, params})
      return trusted.fetch(input, init)
    }) as FetchFn
    api = connectHypervisor(hv, {tokenSecret: new Secret(TOKEN.split('=')[1]!), fetch: recording, poll: {initialMs: 5, maxMs: 20}})
  })
  afterAll(async () => lab?.close())

  it('runs the deploy workflow calls', async () => {
    expect((await api.version()).release).toBe('9.1')
    const img = join(lab.dir, 'pgi-tryton-2026.11.0.qcow2')
    const data = Buffer.alloc(4096, 1)
    await writeFile(img, data)
    await api.uploadFile('lab1', 'local', img, {filename: 'pgi-tryton-2026.11.0.qcow2', content: 'import', sha256: createHash('sha256').update(data).digest('hex')})
    expect((await api.storageContent('lab1', 'local', 'import')).map((v) => v.volid)).toEqual(['local:import/pgi-tryton-2026.11.0.qcow2'])
    await api.createVm('lab1', 1001, {
      name: 'pgi-9900001a', cores: 1, memory: 1024, agent: 1, tags: 'pgi;image-2026.11.0',
      virtio0: 'local-vm:0,import-from=local:import/pgi-tryton-2026.11.0.qcow2', virtio1: 'local-vm:8,serial=pgi-data',
      ide2: 'local-vm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.1.0.10/16,gw=10.1.0.1',
      ciuser: 'ami', sshkeys: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL+x lab@test', boot: 'order=virtio0',
    })
    const cfg = await api.vmConfig('lab1', 1001)
    expect(cfg?.sshkeys).toContain('%20')
    await api.updateVmConfig('lab1', 1001, {description: 'image 2026.11.0', digest: cfg!.digest})
    await expect(api.updateVmConfig('lab1', 1001, {description: 'stale', digest: cfg!.digest})).rejects.toThrow(/checksum mismatch/)
    await api.regenerateCloudinit('lab1', 1001)
    await api.startVm('lab1', 1001)
    expect((await api.vmStatus('lab1', 1001))?.status).toBe('running')
    expect(await api.agentPing('lab1', 1001)).toBe(true)
    const ifs = await api.agentNetworkInterfaces('lab1', 1001)
    expect(ifs.find((i) => i.name === 'eth0')?.['ip-addresses']?.[0]?.['ip-address']).toBe('10.1.0.10')
    const h = await api.agentExec('lab1', 1001, ['/usr/local/sbin/pgi-health'])
    expect(JSON.parse(h.stdout).image.version).toBe('2026.11.0')
    const conf = await api.agentExec('lab1', 1001, ['/usr/local/sbin/pgi-configure'], {inputData: JSON.stringify({ami: {login: 'ami', password: 'x'}})})
    expect(JSON.parse(conf.stdout)).toEqual({changed: ['ami']})
    await api.snapshot('lab1', 1001, 'pre_update', 'before 2026.12')
    expect((await api.listSnapshots('lab1', 1001)).map((s) => s.name)).toContain('pre_update')
    await api.resizeDisk('lab1', 1001, 'virtio1', '+1G')
    await api.shutdownVm('lab1', 1001)
    await api.rollbackSnapshot('lab1', 1001, 'pre_update')
    await api.deleteSnapshot('lab1', 1001, 'pre_update')
    expect((await api.clusterResources('vm')).map((r) => r.vmid)).toEqual([1001])
  })

  it('sent only requests that are valid per the PVE 9.1 schema', () => {
    const schema = loadPveSchema('9.1')
    const invalid = sent
      .filter((r) => !r.path.endsWith('/upload')) // multipart: fields are not recorded here
      .map((r) => ({r: `${r.method} ${r.path}`, errors: validateRequest(schema, r.method, r.path, r.params)}))
      .filter((x) => Object.keys(x.errors).length > 0)
    expect(invalid).toEqual([])
    expect(sent.length).toBeGreaterThan(15)
  })
})
