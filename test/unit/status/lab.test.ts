import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {databaseLine} from '../../../src/status/format.js'
import {StatusService} from '../../../src/status/service.js'
import type {StatusReport} from '../../../src/status/types.js'
import {startSimLab, type SimLab} from './sim-lab.js'

/**
 * pgi status against a simulated lab (3 nodes; lab3 accepts connections but never answers),
 * through the real Proxmox client, pinned TLS and the lab's PVE permission checks.
 */
describe('pgi status on a simulated lab', () => {
  let lab: SimLab
  const TIMEOUT_MS = 1500

  beforeAll(async () => {
    lab = await startSimLab({nodes: 3, sites: 9, faults: {dead_nodes: ['lab3']}})
  }, 60_000)
  afterAll(async () => {
    await lab?.close()
  })

  async function status(opts: {uais?: string[]; token?: {id: string; secret: import('../../../src/secret.js').Secret}; databaseDetails?: boolean} = {}): Promise<StatusReport> {
    const ests = opts.uais ? lab.establishments.filter((e) => opts.uais!.includes(e.uai)) : lab.establishments
    const svc = await StatusService.open({inventory: lab.inventory, establishments: ests, io: new MemoryIo(), env: lab.env, requestTimeoutMs: TIMEOUT_MS, ...(opts.token ? {token: opts.token} : {}), ...(opts.databaseDetails ? {databaseDetails: true} : {})})
    try {
      return await svc.collect()
    } finally {
      await svc.close()
    }
  }

  const on = (node: string) => lab.establishments.filter((e) => e.node === node)
  const verdicts = (r: StatusReport, node: string) => r.establishments.filter((e) => e.node === node).map((e) => e.verdict)

  it('healthy: running VMs whose guest says all is well, with one listing per node', async () => {
    const r = await status({uais: [...on('lab1'), ...on('lab2')].map((e) => e.uai)})
    expect(r.summary).toMatchObject({healthy: 6, total: 6})
    const e = r.establishments[0]
    expect(e).toMatchObject({verdict: 'healthy', reason: 'all checks passed', vm: {present: true, state: 'running'}, agent: {answering: true}, image: {wanted: '2026.11.0', recorded: '2026.11.0', running: '2026.11.0'}})
    expect(e.checks).toMatchObject({postgresql: true, trytond: true, web: true, data_disk: true})
    expect(e.dataDisk?.source).toBe('pgi-health')
    const log = await lab.readRequestLog()
    const listings = log.filter((l) => l.path === '/cluster/resources')
    expect(listings.map((l) => l.node).sort()).toEqual(['lab1', 'lab2'])
    expect(log.filter((l) => /\/agent\/exec$/.test(l.path))).toHaveLength(6)
    expect(log.filter((l) => /\/status\/current$/.test(l.path))).toHaveLength(0)
  })

  it('degraded: a guest whose Tryton server fails, with the reason', async () => {
    const target = on('lab1')[1]!
    lab.setUnhealthy('lab1', target.vmid, true)
    try {
      const r = await status({uais: on('lab1').map((e) => e.uai)})
      const e = r.establishments.find((x) => x.uai === target.uai)!
      expect(e.verdict).toBe('degraded')
      expect(e.reason).toBe('the Tryton server is not answering')
      expect(e.checks.trytond).toBe(false)
      expect(r.establishments[0]!.uai).toBe(target.uai) // problems first
      expect(r.summary).toMatchObject({healthy: 2, degraded: 1})
    } finally {
      lab.setUnhealthy('lab1', target.vmid, false)
    }
  })

  it('down: a VM stopped through the API', async () => {
    const target = on('lab2')[0]!
    const cl = lab.client('lab2')
    await cl.stopVm('lab2', target.vmid)
    try {
      const r = await status({uais: on('lab2').map((e) => e.uai)})
      const e = r.establishments.find((x) => x.uai === target.uai)!
      expect(e).toMatchObject({verdict: 'down', reason: 'VM is stopped', vm: {present: true, state: 'stopped'}})
      expect(e.agent.answering).toBeNull()
      const log = await lab.readRequestLog()
      // no guest-agent call for a stopped VM
      expect(log.some((l) => l.path === `/nodes/lab2/qemu/${target.vmid}/agent/exec`)).toBe(true) // from earlier runs only…
      const after = log.filter((l) => Date.parse(l.time) >= Date.parse(r.checkedAt))
      expect(after.some((l) => l.path.startsWith(`/nodes/lab2/qemu/${target.vmid}/agent`))).toBe(false)
    } finally {
      await cl.startVm('lab2', target.vmid)
    }
  })

  it('unknown: a node that stops answering; the others come back within the timeout', async () => {
    const t0 = Date.now()
    const r = await status()
    const took = Date.now() - t0
    expect(verdicts(r, 'lab3').every((v) => v === 'unknown')).toBe(true)
    expect(r.establishments.find((e) => e.node === 'lab3')!.reason).toBe('hypervisor not reachable (timeout after 1.5 s)')
    expect(verdicts(r, 'lab1').every((v) => v === 'healthy')).toBe(true)
    expect(verdicts(r, 'lab2').every((v) => v === 'healthy')).toBe(true)
    expect(took).toBeLessThan(TIMEOUT_MS + 1500)
    expect(r.hypervisors.find((h) => h.name === 'lab3')).toMatchObject({reachable: false})
    expect(r.hypervisors.find((h) => h.name === 'lab1')!.durationMs).toBeLessThan(TIMEOUT_MS)
  })

  it("an AMI's own token: the full verdict from the server's health record; another VM is not visible", async () => {
    const r = await status({uais: [lab.ami.uai], token: {id: lab.ami.id, secret: lab.ami.secret}})
    const e = r.establishments[0]!
    expect(e.verdict).toBe('healthy')
    expect(e.healthCheck).toMatchObject({via: 'health-record', stale: false})
    expect(e.vm).toMatchObject({present: true, state: 'running'})
    expect(e.agent.answering).toBe(true)
    expect(e.image.recorded).toBe('2026.11.0')
    expect(e.dataDisk).toMatchObject({source: 'pgi-health', sizeBytes: 8 * 2 ** 30})
    // a token of the role before VM.GuestAgent.FileRead: the refused privilege is named, the rest is shown
    const old = (await status({uais: [lab.ami.uai], token: lab.amiAuditOnly})).establishments[0]!
    expect(old.verdict).toBe('unknown')
    expect(old.reason).toBe('PGI health not checked: this token lacks the privilege VM.GuestAgent.FileRead or VM.GuestAgent.Unrestricted on /vms/1001')
    expect(old.dataDisk).toMatchObject({source: 'agent-fsinfo', sizeBytes: 8 * 2 ** 30})
    // another establishment's VM is invisible to that token: said so, not "absent"
    const other = on('lab1')[1]!
    const r2 = await status({uais: [other.uai], token: {id: lab.ami.id, secret: lab.ami.secret}})
    expect(r2.establishments[0]).toMatchObject({verdict: 'unknown', reason: `cannot see the VM: this token lacks the privilege VM.Audit on /vms/${other.vmid}`})
  })

  it('one establishment: its databases with size, company, modules, login and last backup (pgi-db list); an AMI token sees them from the record', async () => {
    const e = lab.establishments.find((x) => x.uai === lab.ami.uai)!
    const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.env.PGI_LAB_TOKEN!)})
    try {
      const conf = await api.agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-configure'], {inputData: JSON.stringify({tryton_admin: {password: 'p4ss-word'}}), timeoutMs: 10_000})
      expect(conf.exitcode, conf.stderr).toBe(0)
      const made = await api.agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-db', 'create', 'pgi', '--company', 'Lycée Test'], {timeoutMs: 10_000})
      expect(made.exitcode, made.stderr).toBe(0)
    } finally {
      await api.close()
    }
    const d = (await status({uais: [e.uai], databaseDetails: true})).establishments[0]!
    expect(d.databases).toEqual([{name: 'pgi', modules: expect.objectContaining({account_fr: expect.any(String)}), sizeBytes: 40 * 2 ** 20, lastBackup: null, login: true, company: 'Lycée Test'}])
    expect(databaseLine(d.databases![0]!)).toMatch(/^pgi {2}41\.9 MB {2}company "Lycée Test" {2}login ok {2}no backup yet {2}modules: account, account_fr, /)
    // without details (a fleet-wide run): no pgi-db list, sizes unknown
    const fleet = (await status({uais: [e.uai]})).establishments[0]!
    expect(fleet.databases).toEqual([expect.objectContaining({name: 'pgi', sizeBytes: null, login: true})])
    // an AMI's token reads the server's record: names, modules and the login, not the sizes
    const ami = (await status({uais: [e.uai], token: {id: lab.ami.id, secret: lab.ami.secret}, databaseDetails: true})).establishments[0]!
    expect(ami.healthCheck?.via).toBe('health-record')
    expect(ami.databases).toEqual([expect.objectContaining({name: 'pgi', sizeBytes: null, login: true, modules: expect.objectContaining({account_fr: expect.any(String)})})])
  })
})
