import {access, readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {openHandoff} from '../../../src/fleet/handoff.js'
import {runDeploy} from '../../../src/deploy/service.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import type {RequestLogEntry} from '../../../src/lab/server.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {deployRequest, startSimLab, type SimLab} from './sim-lab.js'

let lab: SimLab | undefined
afterEach(async () => {
  await lab?.close()
  lab = undefined
})

const request = deployRequest

const writes = (log: RequestLogEntry[]) => log.filter((e) => e.method !== 'GET')

/** Every secret of the store, revealed, to prove none of them leaks. */
async function allSecrets(l: SimLab): Promise<string[]> {
  const keys = await l.store.list('establishments/')
  const out: string[] = [l.tokenSecret]
  for (const k of keys) if (!k.endsWith('ssh-host-keys')) out.push((await l.store.get(k)).reveal())
  return out
}

describe('pgi deploy against a simulated lab', () => {
  it('plans, creates, then finds everything up to date without a single write request', async () => {
    lab = await startSimLab({nodes: 2, establishmentsPerNode: 2})
    const io = new MemoryIo()

    const dry = await runDeploy(request(lab, io, {dryRun: true}))
    expect(dry.plan.map((r) => r.action)).toEqual(['create', 'create', 'create', 'create'])
    // the plan says which declared databases would be created
    for (const r of dry.plan) expect(r.databases).toEqual([{name: 'pgi', state: 'missing'}])
    expect(dry.plan[0]!.detail).toMatch(/create database pgi/)
    expect(writes(await lab.rt.readRequestLog())).toEqual([])

    const first = await runDeploy(request(lab, io))
    expect(first.result!.outcomes.map((o) => o.outcome)).toEqual(['created', 'created', 'created', 'created'])
    expect(first.result!.exitCode).toBe(0)
    for (const o of first.result!.outcomes) {
      expect(o.databases).toEqual([expect.objectContaining({name: 'pgi', outcome: 'created', company: `Lycée ${o.uai}`, fiscalYear: new Date().getFullYear()})])
      expect(o.detail).toMatch(/created database pgi/)
    }
    const log1 = await lab.rt.readRequestLog()
    // staged once per node, whatever the number of establishments on it
    expect(writes(log1).filter((e) => e.path.endsWith('/upload'))).toHaveLength(2)
    // secrets went through the agent's stdin, never a config key
    const creates = writes(log1).filter((e) => /\/qemu$/.test(e.path))
    for (const c of creates) expect(c.params).not.toContain('cipassword')

    for (const e of lab.inventory.establishments) {
      const h = await openHandoff(join(lab.dir, 'handoffs', `${e.uai}.handoff.age`), [lab.amiIdentityFile])
      expect(h.document.establishment.uai).toBe(e.uai)
      // the databases the VM has, read from it, with their company
      expect(h.document.databases).toEqual([{name: 'pgi', company: `Lycée ${e.uai}`}])
      expect(h.text).toContain(`Base de données       : « pgi » (société Lycée ${e.uai})`)
      expect(h.document.postgresql.password.reveal()).toBe((await lab.store.get(`establishments/${e.uai}/sql-admin`)).reveal())
      const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
      const cfg = await api.vmConfig(e.node, e.vmid)
      expect(parseDescription(String(cfg!.description))).toMatchObject({uai: e.uai, image: '2026.11.0'})
      expect(parseDescription(String(cfg!.description))!.configuredAt).toBeTruthy()
      expect(cfg!.name).toBe(`pgi-${e.uai.toLowerCase()}`)
      await api.close()
    }

    const before = log1.length
    const second = await runDeploy(request(lab, io))
    expect(second.upToDate).toBe(true)
    expect(second.result!.outcomes.map((o) => o.outcome)).toEqual(['up-to-date', 'up-to-date', 'up-to-date', 'up-to-date'])
    for (const r of second.plan) expect(r.databases).toEqual([{name: 'pgi', state: 'exists'}])
    const log2 = await lab.rt.readRequestLog()
    expect(log2.length).toBeGreaterThan(before)
    expect(writes(log2.slice(before))).toEqual([])

    // nothing secret in any output: log lines, the JSON result, the journals
    const secrets = await allSecrets(lab)
    expect(secrets.length).toBeGreaterThanOrEqual(13)
    const journal = await readFile(join(lab.env.PGI_STATE_DIR!, 'journal', 'deploy', `${lab.inventory.establishments[0]!.uai}.json`), 'utf8')
    const text = [io.text(), JSON.stringify(first), JSON.stringify(second), journal, await readFile(lab.rt.requestLog, 'utf8')].join('\n')
    for (const s of secrets) expect(text).not.toContain(s)
  }, 60_000)

  it('creates a newly declared database, never touches an existing one, and rewrites the handoff with what the VM has', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 1})
    const io = new MemoryIo()
    await runDeploy(request(lab, io))
    const e = lab.inventory.establishments[0]!
    // the inventory now says another company for pgi (ignored: it exists) and a second database
    e.databases = [
      {...e.databases[0]!, company: 'Autre société'},
      {name: 'bts_cg', company: 'Colomb SARL', fiscalYear: 2027, chart: 'fr', currency: 'EUR', source: e.source},
    ]
    const before = (await lab.rt.readRequestLog()).length
    const dry = await runDeploy(request(lab, io, {dryRun: true}))
    expect(dry.plan[0]).toMatchObject({action: 'drifted', databases: [{name: 'pgi', state: 'exists'}, {name: 'bts_cg', state: 'missing'}]})
    expect(dry.plan[0]!.detail).toBe('create database bts_cg')
    expect(writes((await lab.rt.readRequestLog()).slice(before)), 'the plan read the VM\'s health record, ran nothing').toEqual([])

    const r = await runDeploy(request(lab, io))
    expect(r.result!.outcomes[0]).toMatchObject({outcome: 'updated', detail: 'created database bts_cg'})
    expect(r.result!.outcomes[0]!.databases).toEqual([
      expect.objectContaining({name: 'pgi', outcome: 'existing'}),
      expect.objectContaining({name: 'bts_cg', outcome: 'created', company: 'Colomb SARL', fiscalYear: 2027}),
    ])
    const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
    const list = JSON.parse((await api.agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-db', 'list'], {timeoutMs: 10_000})).stdout) as {name: string; company: string}[]
    expect(list.map((d) => [d.name, d.company])).toEqual([
      ['bts_cg', 'Colomb SARL'],
      ['pgi', `Lycée ${e.uai}`],
    ])
    await api.close()
    const h = await openHandoff(join(lab.dir, 'handoffs', `${e.uai}.handoff.age`), [lab.amiIdentityFile])
    expect(h.document.databases!.map((d) => d.name)).toEqual(['bts_cg', 'pgi'])
    expect(h.document.desktopClient.database).toBe('pgi')

    const again = await runDeploy(request(lab, io))
    expect(again.upToDate).toBe(true)
    expect(again.result!.outcomes[0]!.outcome).toBe('up-to-date')
  }, 60_000)

  it('reports drift, fixes what it can, and leaves the image to rollout', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 1})
    const io = new MemoryIo()
    await runDeploy(request(lab, io))
    const e = lab.inventory.establishments[0]!
    const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
    await api.updateVmConfig(e.node, e.vmid, {cores: 3, nameserver: '9.9.9.9'})

    const dry = await runDeploy(request(lab, io, {dryRun: true}))
    expect(dry.plan[0]!.action).toBe('drifted')
    expect(dry.plan[0]!.drifts!.map((d) => d.setting).sort()).toEqual(['cores', 'nameserver'])

    const fixed = await runDeploy(request(lab, io))
    expect(fixed.result!.outcomes[0]).toMatchObject({outcome: 'updated'})
    const cfg = await api.vmConfig(e.node, e.vmid)
    expect(cfg).toMatchObject({cores: 1, nameserver: e.network.dns.join(' ')})

    const newer = await runDeploy(request(lab, io, {image: {name: 'pgi-tryton', version: '2026.12.0'}, dryRun: true}))
    expect(newer.plan[0]!.action).toBe('drifted')
    expect(newer.plan[0]!.drifts).toEqual([expect.objectContaining({setting: 'image', fix: 'manual'})])
    await api.close()
  }, 60_000)

  it('blocks a vmid held by a VM pgi did not create, and still deploys the others (exit 4)', async () => {
    lab = await startSimLab({nodes: 2, establishmentsPerNode: 1})
    const [a, b] = lab.inventory.establishments
    const api = connectHypervisor(lab.inventory.hypervisors.get(a!.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
    await api.createVm(a!.node, a!.vmid, {name: 'someone-else', memory: 512})
    const io = new MemoryIo()
    const r = await runDeploy(request(lab, io))
    const byUai = Object.fromEntries(r.result!.outcomes.map((o) => [o.uai, o]))
    expect(byUai[a!.uai]).toMatchObject({outcome: 'blocked', error: {code: 'PGI_VMID_TAKEN', where: {uai: a!.uai, hypervisor: a!.hypervisor, node: a!.node}}})
    expect(byUai[b!.uai]).toMatchObject({outcome: 'created'})
    expect(r.result!.exitCode).toBe(4)
    // the foreign VM was not touched
    expect((await api.vmConfig(a!.node, a!.vmid))!.name).toBe('someone-else')
    await api.close()
  }, 60_000)

  it('continues an unfinished deploy instead of recreating the VM', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 1})
    const e = lab.inventory.establishments[0]!
    lab.rt.api.faults.config.unhealthyVms.push(`${e.node}/${e.vmid}`)
    const io = new MemoryIo()
    const broken = await runDeploy(request(lab, io, {healthTimeoutMs: 500}))
    expect(broken.result!.outcomes[0]).toMatchObject({outcome: 'failed', error: {code: 'PGI_TIMEOUT'}})
    lab.rt.api.faults.config.unhealthyVms.length = 0

    const log1 = await lab.rt.readRequestLog()
    const dry = await runDeploy(request(lab, io, {dryRun: true}))
    expect(dry.plan[0]!.action).toBe('continue')
    const again = await runDeploy(request(lab, io))
    expect(again.result!.outcomes[0]).toMatchObject({outcome: 'created', detail: expect.stringContaining('completed')})
    const after = writes((await lab.rt.readRequestLog()).slice(log1.length))
    expect(after.filter((w) => /\/qemu$/.test(w.path))).toEqual([])
    expect(after.filter((w) => w.path.endsWith('/upload'))).toEqual([])
    await access(join(lab.dir, 'handoffs', `${e.uai}.handoff.age`))
  }, 60_000)

  it('sends nothing to a node whose certificate does not match the pin (exit 8)', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 2})
    const hv = [...lab.inventory.hypervisors.values()][0]!
    hv.tls = {fingerprint: hv.tls.fingerprint!.replace(/^../, (x) => (x === 'AA' ? 'BB' : 'AA'))}
    const io = new MemoryIo()
    const r = await runDeploy(request(lab, io))
    expect(r.result!.outcomes.map((o) => o.outcome)).toEqual(['blocked', 'blocked'])
    expect(r.result!.outcomes[0]!.error!.code).toBe('PGI_TLS_MISMATCH')
    expect(r.result!.exitCode).toBe(8)
    expect(await lab.rt.readRequestLog()).toEqual([])
  }, 60_000)

  it('blocks establishments whose image cannot be verified, before anything is sent', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 1})
    const io = new MemoryIo()
    const {UserError, ErrorCode} = await import('../../../src/errors.js')
    const r = await runDeploy(request(lab, io, {resolveImage: async () => {
      throw new UserError(ErrorCode.IMAGE_INVALID, 'the signature of manifest.json does not match')
    }}))
    expect(r.result!.outcomes[0]).toMatchObject({outcome: 'blocked', error: {code: 'PGI_IMAGE_INVALID'}})
    expect(writes(await lab.rt.readRequestLog())).toEqual([])
  }, 60_000)
})
