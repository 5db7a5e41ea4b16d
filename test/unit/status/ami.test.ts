import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {PveApiError} from '../../../src/proxmox/errors.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import type {Secret} from '../../../src/secret.js'
import {HEALTH_RECORD_FILE} from '../../../src/status/health-record.js'
import {StatusService} from '../../../src/status/service.js'
import type {EstablishmentStatus, VerdictPolicy} from '../../../src/status/types.js'
import {DEFAULT_POLICY} from '../../../src/status/verdict.js'
import {startSimLab, type SimLab} from './sim-lab.js'

/**
 * An AMI's own token on a simulated PVE 9.1 lab: the PGI-AMI role (VM.Audit, VM.GuestAgent.Audit,
 * VM.GuestAgent.FileRead) on /vms/1001 may not run pgi-health (agent exec: 403, as PVE 9 answers)
 * but may read the health record the server keeps (agent file-read: 200), and gets the full
 * verdict from it — through the status service, the real client, pinned TLS and the lab's ACLs.
 * Three nodes, one VM 1001 on each (the AMI's grant on /vms/1001 covers all three): one per case.
 */
describe("an AMI's token on PVE 9: the server's health record", () => {
  let lab: SimLab
  const opened: PveApi[] = []

  beforeAll(async () => {
    lab = await startSimLab({nodes: 3, sites: 3})
  }, 60_000)
  afterAll(async () => {
    await Promise.allSettled(opened.map((c) => (c as PveApi & {close?: () => Promise<void>}).close?.()))
    await lab?.close()
  })

  const onNode = (node: string) => lab.establishments.find((e) => e.node === node)!

  /** A client of `node` with the given token (as the AMI would call the API). */
  function clientWith(node: string, token: {id: string; secret: Secret}): PveApi {
    const hv = lab.inventory.hypervisors.get(node)!
    const c = connectHypervisor({...hv, token: {id: token.id, secret: {env: 'X'}}}, {tokenSecret: token.secret, io: new MemoryIo('silent'), requestTimeoutMs: 10_000})
    opened.push(c)
    return c
  }

  async function status(node: string, o: {token?: {id: string; secret: Secret}; healthMaxAgeS?: number; policy?: VerdictPolicy} = {}): Promise<EstablishmentStatus> {
    const svc = await StatusService.open({
      inventory: lab.inventory,
      establishments: [onNode(node)],
      io: new MemoryIo(),
      env: lab.env,
      token: o.token ?? {id: lab.ami.id, secret: lab.ami.secret},
      ...(o.healthMaxAgeS === undefined ? {} : {healthMaxAgeS: o.healthMaxAgeS}),
      ...(o.policy ? {policy: o.policy} : {}),
    })
    try {
      return (await svc.collect()).establishments[0]!
    } finally {
      await svc.close()
    }
  }

  it('the lab answers as PVE 9 does: 403 on agent exec, 200 on agent file-read of the record', async () => {
    const c = clientWith('lab1', lab.ami)
    const exec = await c.agentExec('lab1', 1001, ['/usr/local/sbin/pgi-health']).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(exec).toBeInstanceOf(PveApiError)
    expect((exec as PveApiError).status).toBe(403)
    expect((exec as PveApiError).pveMessage).toBe('Permission check failed (/vms/1001, VM.GuestAgent.Unrestricted)')
    const text = await c.agentFileRead('lab1', 1001, HEALTH_RECORD_FILE)
    const rec = JSON.parse(text) as {v: number; at: string; exit_code: number; health: {healthy: boolean}}
    expect(rec).toMatchObject({v: 1, exit_code: 0, health: {healthy: true}})
    expect(Date.now() - Date.parse(rec.at)).toBeLessThan(60_000)
    // the token without VM.GuestAgent.FileRead is refused file-read, naming both privileges that allow it
    const old = await clientWith('lab1', lab.amiAuditOnly)
      .agentFileRead('lab1', 1001, HEALTH_RECORD_FILE)
      .then(
        () => undefined,
        (e: unknown) => e,
      )
    expect((old as PveApiError).status).toBe(403)
    expect((old as PveApiError).pveMessage).toBe('Permission check failed (/vms/1001, VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted)')
    const log = await lab.readRequestLog()
    const mine = log.filter((l) => l.user?.startsWith('ami@pve!') && l.path.startsWith('/nodes/lab1/qemu/1001/agent/'))
    expect(mine.map((l) => `${l.method} ${l.path.replace('/nodes/lab1/qemu/1001/', '')} ${l.status}`)).toEqual(['POST agent/exec 403', 'GET agent/file-read 200', 'GET agent/file-read 403'])
  })

  it('the full verdict from the record, its age shown: healthy, then degraded when the guest is', async () => {
    const e = await status('lab1')
    expect(e).toMatchObject({verdict: 'healthy', reason: 'all checks passed', agent: {answering: true}, image: {running: '2026.11.0'}})
    expect(e.checks).toMatchObject({postgresql: true, trytond: true, web: true, data_disk: true, backup: true})
    expect(e.dataDisk?.source).toBe('pgi-health')
    expect(e.healthCheck).toMatchObject({via: 'health-record', stale: false})
    expect(e.healthCheck!.ageS).toBeLessThan(60)
    expect(e.notes.some((n) => /^health recorded by the server \d+ s ago$/.test(n))).toBe(true)
    expect(e.errors).toEqual([])
    lab.setUnhealthy('lab1', 1001, true)
    try {
      const d = await status('lab1')
      expect(d).toMatchObject({verdict: 'degraded', reason: 'the Tryton server is not answering', healthCheck: {via: 'health-record'}})
      expect(d.checks.trytond).toBe(false)
    } finally {
      lab.setUnhealthy('lab1', 1001, false)
    }
  })

  it('a record older than the threshold is stale: unknown, and the threshold is a setting', async () => {
    // the server's timer stopped 25 min ago: its last record stays (written as the timer would, by the technician's token)
    const at = new Date(Date.now() - 25 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z')
    const h = JSON.parse(await clientWith('lab2', lab.ami).agentFileRead('lab2', 1001, HEALTH_RECORD_FILE)) as {health: unknown}
    await lab.client('lab2').agentFileWrite('lab2', 1001, HEALTH_RECORD_FILE, JSON.stringify({v: 1, at, took_s: 1.2, exit_code: 0, health: h.health}))
    const e = await status('lab2')
    expect(e.verdict).toBe('unknown')
    expect(e.reason).toBe(`the server's health record is stale: last written ${at.slice(0, 10)} ${at.slice(11, 16)} UTC (over 10 min ago; its pgi-health timer may have stopped)`)
    expect(e.notes).toContain('that record said: all checks passed')
    expect(e.checks.postgresql).toBeNull()
    expect(e.healthCheck).toMatchObject({via: 'health-record', recordedAt: at, stale: true})
    expect(e.healthCheck!.ageS).toBeGreaterThanOrEqual(25 * 60)
    const lenient = await status('lab2', {healthMaxAgeS: 3600})
    expect(lenient).toMatchObject({verdict: 'healthy', healthCheck: {stale: false}})
  })

  it('no record on the server (an image without the timer): a clear reason, and what the agent still tells', async () => {
    lab.setHealthRecord('lab3', 1001, false)
    try {
      const e = await status('lab3')
      expect(e.verdict).toBe('unknown')
      // the VM has just started in this lab: the timer's first run is not due yet
      expect(e.reason).toMatch(/^VM is starting \(up \d+ s; the server has not recorded its health yet\)$/)
      expect(e.agent.answering).toBe(true)
      expect(e.dataDisk?.source).toBe('agent-fsinfo')
      expect(e.errors.map((x) => x.call)).toEqual(['agent exec pgi-health', 'agent file-read /run/pgi/health.json'])
      // past the boot grace, the record should be there: said so
      const later = await status('lab3', {policy: {...DEFAULT_POLICY, agentBootGraceS: 0}})
      expect(later.reason).toBe('PGI health not known: the server has no health record (/run/pgi/health.json: an image without the pgi-health timer, or the timer is stopped)')
    } finally {
      lab.setHealthRecord('lab3', 1001, true)
    }
  })

  it('a token without VM.GuestAgent.FileRead is told which privilege to ask for', async () => {
    const e = await status('lab1', {token: lab.amiAuditOnly})
    expect(e).toMatchObject({verdict: 'unknown', reason: 'PGI health not checked: this token lacks the privilege VM.GuestAgent.FileRead or VM.GuestAgent.Unrestricted on /vms/1001', healthCheck: null})
    expect(e.agent.answering).toBe(true)
  })

  it("the technician's token still runs pgi-health live", async () => {
    const svc = await StatusService.open({inventory: lab.inventory, establishments: [onNode('lab1')], io: new MemoryIo(), env: lab.env})
    try {
      const e = (await svc.collect()).establishments[0]!
      expect(e).toMatchObject({verdict: 'healthy', healthCheck: {via: 'agent-exec', recordedAt: null, ageS: null, stale: false}})
    } finally {
      await svc.close()
    }
  })
})
