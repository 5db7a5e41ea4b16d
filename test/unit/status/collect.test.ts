import {describe, expect, it} from 'vitest'

import {formatDescription, formatTags} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {PveApiError} from '../../../src/proxmox/errors.js'
import type {AgentExecResult, PveApi, PveResource, PveVmConfig, PveVmStatus} from '../../../src/proxmox/types.js'
import {collectStatus, findDataDisk, withTimeout} from '../../../src/status/collect.js'
import {CallTimeout} from '../../../src/status/probe-error.js'
import {DEFAULT_POLICY} from '../../../src/status/verdict.js'
import {establishment, healthyReport} from './fixtures.js'

/**
 * A test double of PveApi holding a few VMs in memory: only the read calls status makes are
 * implemented; every call is counted and concurrency per hypervisor is measured.
 */
interface FakeVm {
  node: string
  vmid: number
  status: 'running' | 'stopped'
  image: string
  health?: object
  /** Hide from cluster/resources (a token that cannot see it). */
  hidden?: boolean
}

class FakePve {
  calls: string[] = []
  inFlight = 0
  maxInFlight = 0
  /** Delay of every call (ms), or 'hang' from the n-th call on. */
  delayMs = 5
  hangFrom = Infinity
  denyExec = false
  denyStatus = false
  /** What agent file-read of /run/pgi/health.json gives: a record's text, missing, or refused. */
  healthRecord: string | 'missing' | 'deny' = 'missing'

  constructor(
    readonly hypervisor: string,
    readonly vms: FakeVm[],
  ) {}

  private async op<T>(name: string, f: () => T | Promise<T>): Promise<T> {
    this.calls.push(name)
    const n = this.calls.length
    this.inFlight++
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
    try {
      if (n >= this.hangFrom) await new Promise(() => undefined)
      await new Promise((r) => setTimeout(r, this.delayMs))
      return await f()
    } finally {
      this.inFlight--
    }
  }

  private forbidden(path: string, priv: string): PveApiError {
    return new PveApiError({status: 403, pveMessage: `Permission check failed (${path}, ${priv})`, method: 'GET', path, where: {hypervisor: this.hypervisor}})
  }

  api(): PveApi {
    const self = this
    const find = (vmid: number) => self.vms.find((v) => v.vmid === vmid)
    const partial: Partial<PveApi> = {
      hypervisor: this.hypervisor,
      clusterResources: () =>
        self.op('cluster/resources', () =>
          self.vms.filter((v) => !v.hidden).map((v): PveResource => ({id: `qemu/${v.vmid}`, type: 'qemu', node: v.node, vmid: v.vmid, status: v.status, uptime: v.status === 'running' ? 7200 : 0, tags: formatTags({uai: 'x', image: v.image})})),
        ),
      vmStatus: (node, vmid) =>
        self.op('status/current', (): PveVmStatus | undefined => {
          if (self.denyStatus) throw self.forbidden(`/vms/${vmid}`, 'VM.Audit')
          const v = find(vmid)
          return v ? {vmid, status: v.status} : undefined
        }),
      vmConfig: (node, vmid) =>
        self.op('config', (): PveVmConfig | undefined => {
          const v = find(vmid)
          return v ? {digest: 'd', description: formatDescription({v: 1, uai: 'x', image: v.image, deployedAt: '2026-11-01T00:00:00Z', by: 'test'}, 'X')} : undefined
        }),
      agentExec: (node, vmid) =>
        self.op('agent exec', (): AgentExecResult => {
          if (self.denyExec) throw self.forbidden(`/vms/${vmid}`, 'VM.GuestAgent.Unrestricted')
          const h = find(vmid)?.health ?? healthyReport()
          return {exitcode: 0, stdout: JSON.stringify(h), stderr: '', truncated: false}
        }),
      agentFileRead: (node, vmid, file) =>
        self.op('agent file-read', (): string => {
          if (self.healthRecord === 'deny') throw self.forbidden(`/vms/${vmid}`, 'VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted')
          if (self.healthRecord === 'missing' || file !== '/run/pgi/health.json') {
            throw new PveApiError({status: 500, pveMessage: `Agent error: failed to open file '${file}' (mode: 'r'): No such file or directory`, method: 'GET', path: 'file-read', where: {hypervisor: self.hypervisor}})
          }
          return self.healthRecord
        }),
      agentPing: () => self.op('agent ping', () => true),
      agentFsInfo: () =>
        self.op('agent get-fsinfo', () => [
          {name: 'vda1', mountpoint: '/', type: 'ext4', 'total-bytes': 8e9, 'used-bytes': 2e9, disk: [{serial: '', 'bus-type': 'virtio', bus: 0, target: 0, unit: 0}]},
          {name: 'vdb', mountpoint: '/srv/pgi', type: 'ext4', 'total-bytes': 32e9, 'used-bytes': 8e9, disk: [{serial: 'pgi-data', 'bus-type': 'virtio', bus: 0, target: 1, unit: 0}]},
        ]),
    }
    return partial as PveApi
  }
}

function fleet(hv: string, node: string, n: number, from = 1001): {fake: FakePve; ests: ReturnType<typeof establishment>[]} {
  const vms: FakeVm[] = []
  const ests = []
  for (let i = 0; i < n; i++) {
    vms.push({node, vmid: from + i, status: 'running', image: '2026.11.0'})
    ests.push(establishment(`${String(1300000 + from + i)}X`, hv, node, from + i))
  }
  return {fake: new FakePve(hv, vms), ests}
}

describe('collectStatus', () => {
  it('makes one listing per hypervisor, one config per VM, and runs pgi-health only in running VMs', async () => {
    const {fake, ests} = fleet('hv-a', 'pve1', 6)
    fake.vms[1].status = 'stopped'
    fake.vms[2].status = 'stopped'
    const r = await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo()})
    const count = (c: string) => fake.calls.filter((x) => x === c).length
    expect(count('cluster/resources')).toBe(1)
    expect(count('config')).toBe(6)
    expect(count('agent exec')).toBe(4)
    expect(count('status/current')).toBe(0)
    expect(r.summary).toMatchObject({healthy: 4, down: 2, total: 6})
    expect(r.establishments[0].verdict).toBe('down')
  })

  it('keeps at most perHypervisor requests in flight on one hypervisor', async () => {
    const {fake, ests} = fleet('hv-a', 'pve1', 20)
    await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo(), perHypervisor: 3})
    expect(fake.maxInFlight).toBe(3)
  })

  it('a hypervisor that never answers makes only its own lines unknown, within the request timeout', async () => {
    const a = fleet('hv-a', 'pve1', 5)
    const b = fleet('hv-b', 'pve2', 5, 2001)
    b.fake.hangFrom = 1
    const t0 = Date.now()
    const r = await collectStatus({
      establishments: [...a.ests, ...b.ests],
      api: async (name) => (name === 'hv-a' ? a.fake.api() : b.fake.api()),
      io: new MemoryIo(),
      requestTimeoutMs: 300,
    })
    const took = Date.now() - t0
    expect(took).toBeLessThan(300 + 250)
    expect(r.summary).toMatchObject({healthy: 5, unknown: 5})
    for (const e of r.establishments.filter((x) => x.hypervisor === 'hv-b')) {
      expect(e.verdict).toBe('unknown')
      expect(e.reason).toBe('hypervisor not reachable (timeout after 0.3 s)')
      expect(e.hypervisorReachable).toBe(false)
    }
    expect(r.hypervisors.find((h) => h.name === 'hv-b')).toMatchObject({reachable: false, error: {code: 'PGI_UNREACHABLE'}})
  })

  it('a hypervisor that stops answering half-way costs one timeout, not one per call', async () => {
    const {fake, ests} = fleet('hv-a', 'pve1', 12)
    fake.hangFrom = 3 // the listing and one more call answer, then nothing
    const t0 = Date.now()
    const r = await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo(), requestTimeoutMs: 200, perHypervisor: 2})
    // after the first timeout no further call is sent to that hypervisor (the answered ones, plus the
    // ones already in flight), and the run does not wait one timeout per call
    expect(fake.calls.length).toBeLessThanOrEqual(3 + 2)
    expect(Date.now() - t0).toBeLessThan(200 * 12)
    expect(r.summary.healthy).toBe(0)
    expect(r.establishments.every((e) => e.verdict === 'unknown')).toBe(true)
  })

  it("with a token that may neither run pgi-health nor read files: names the privilege to ask for, still shows what is known", async () => {
    const {fake, ests} = fleet('hv-a', 'pve1', 1)
    fake.denyExec = true
    fake.healthRecord = 'deny'
    const r = await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo()})
    const e = r.establishments[0]
    expect(e.verdict).toBe('unknown')
    expect(e.reason).toBe('PGI health not checked: this token lacks the privilege VM.GuestAgent.FileRead or VM.GuestAgent.Unrestricted on /vms/1001')
    expect(e.vm).toMatchObject({present: true, state: 'running', uptimeS: 7200})
    expect(e.agent.answering).toBe(true)
    expect(e.dataDisk).toMatchObject({usedBytes: 8e9, sizeBytes: 32e9, usedRatio: 0.25, source: 'agent-fsinfo'})
    expect(e.image.recorded).toBe('2026.11.0')
    expect(e.healthCheck).toBeNull()
    expect(e.errors).toEqual([
      expect.objectContaining({code: 'PGI_PVE_PERMISSION', privilege: 'VM.GuestAgent.Unrestricted', call: 'agent exec pgi-health'}),
      expect.objectContaining({code: 'PGI_PVE_PERMISSION', privilege: 'VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted', call: 'agent file-read /run/pgi/health.json'}),
    ])
  })

  describe('with a token that may read files but not run pgi-health (an AMI on PVE 9)', () => {
    const NOW = new Date('2026-11-22T08:00:00Z')
    const record = (at: string, health: object | null, extra: object = {}) => JSON.stringify({v: 1, at, took_s: 2.1, exit_code: health ? 0 : 3, health, ...extra})
    const run = async (rec: string | 'missing', o: {uptimeS?: number; maxAgeS?: number} = {}) => {
      const {fake, ests} = fleet('hv-a', 'pve1', 1)
      fake.denyExec = true
      fake.healthRecord = rec
      const r = await collectStatus({
        establishments: ests,
        api: async () => fake.api(),
        io: new MemoryIo(),
        now: () => NOW,
        ...(o.maxAgeS ? {policy: {...DEFAULT_POLICY, healthRecordMaxAgeS: o.maxAgeS}} : {}),
      })
      return {e: r.establishments[0]!, calls: fake.calls}
    }

    it('a fresh record gives the full verdict, its age shown; the exec refusal is not an error then', async () => {
      const {e, calls} = await run(record('2026-11-22T07:58:40Z', healthyReport()))
      expect(e).toMatchObject({verdict: 'healthy', reason: 'all checks passed', agent: {answering: true}})
      expect(e.checks).toMatchObject({postgresql: true, trytond: true, web: true, data_disk: true, backup: true})
      expect(e.image.running).toBe('2026.11.0')
      expect(e.dataDisk?.source).toBe('pgi-health')
      expect(e.healthCheck).toEqual({via: 'health-record', recordedAt: '2026-11-22T07:58:40Z', ageS: 80, stale: false})
      expect(e.notes).toContain('health recorded by the server 80 s ago')
      expect(e.errors).toEqual([])
      // the record says everything: no ping, no get-fsinfo
      expect([...calls].sort()).toEqual(['agent exec', 'agent file-read', 'cluster/resources', 'config'])
    })

    it('a record of an unhealthy server: degraded with the reason', async () => {
      const h = healthyReport()
      h.healthy = false
      h.checks.postgresql = {ok: false}
      const {e} = await run(record('2026-11-22T07:59:00Z', h))
      expect(e).toMatchObject({verdict: 'degraded', reason: 'PostgreSQL is not running on the server'})
    })

    it('past the threshold the record is stale: unknown, its checks not used, what it said in a note', async () => {
      const {e} = await run(record('2026-11-22T07:35:00Z', healthyReport()))
      expect(e.verdict).toBe('unknown')
      expect(e.reason).toBe("the server's health record is stale: last written 2026-11-22 07:35 UTC (over 10 min ago; its pgi-health timer may have stopped)")
      expect(e.notes).toContain('that record said: all checks passed')
      expect(e.checks.postgresql).toBeNull()
      expect(e.dataDisk).toBeNull()
      expect(e.healthCheck).toEqual({via: 'health-record', recordedAt: '2026-11-22T07:35:00Z', ageS: 1500, stale: true})
      // the threshold is a setting: 30 min makes the same record fresh
      expect((await run(record('2026-11-22T07:35:00Z', healthyReport()), {maxAgeS: 1800})).e.verdict).toBe('healthy')
    })

    it('a missing record: said plainly, with what the agent still tells', async () => {
      const {e} = await run('missing')
      expect(e.verdict).toBe('unknown')
      expect(e.reason).toBe('PGI health not known: the server has no health record (/run/pgi/health.json: an image without the pgi-health timer, or the timer is stopped)')
      expect(e.agent.answering).toBe(true)
      expect(e.dataDisk?.source).toBe('agent-fsinfo')
    })

    it('a record of a pgi-health that failed or did not finish', async () => {
      const failed = await run(record('2026-11-22T07:59:00Z', null, {error: 'pgi-health exited with 3: Traceback'}))
      expect(failed.e).toMatchObject({verdict: 'unknown', reason: 'the health check failed to run (pgi-health exited with 3: Traceback)'})
      const slow = await run(record('2026-11-22T07:59:00Z', null, {timed_out: true, timeout_s: 120, error: 'pgi-health did not finish within 120 s'}))
      expect(slow.e).toMatchObject({verdict: 'degraded', reason: 'the health check did not finish within 120 s'})
    })

    it('an unreadable record is not taken for a health', async () => {
      const {e} = await run('{"v": 1, "health": {"healthy": true, "checks": {}}}')
      expect(e).toMatchObject({verdict: 'unknown', reason: 'PGI health not known: the health record on the server is unreadable: it has no valid "at" time'})
      expect((await run('not json')).e.reason).toBe('PGI health not known: the health record on the server is unreadable: it is not JSON')
    })

    it("a server's clock ahead of this machine's: age 0 and a note, not a negative age", async () => {
      const {e} = await run(record('2026-11-22T08:10:00Z', healthyReport()))
      expect(e.verdict).toBe('healthy')
      expect(e.healthCheck?.ageS).toBe(0)
      expect(e.notes).toContain("the server's clock is 10 min ahead of this machine's")
    })
  })

  it('tells a VM that is not there (down) from one the token cannot see (unknown, VM.Audit)', async () => {
    const {fake, ests} = fleet('hv-a', 'pve1', 2)
    fake.vms.splice(1, 1) // 1002 does not exist
    fake.vms[0].hidden = true
    const r1 = await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo()})
    const byUai = new Map(r1.establishments.map((e) => [e.vmid, e]))
    expect(byUai.get(1002)?.verdict).toBe('down')
    expect(byUai.get(1001)?.verdict).toBe('healthy') // hidden from the listing but readable directly
    fake.denyStatus = true
    const r2 = await collectStatus({establishments: ests, api: async () => fake.api(), io: new MemoryIo()})
    const e = r2.establishments.find((x) => x.vmid === 1001)!
    expect(e.verdict).toBe('unknown')
    expect(e.reason).toBe('cannot see the VM: this token lacks the privilege VM.Audit on /vms/1001')
  })

  it('a hypervisor whose token cannot be found is unknown with the reason', async () => {
    const {ests} = fleet('hv-a', 'pve1', 1)
    const {UserError, ErrorCode} = await import('../../../src/errors.js')
    const r = await collectStatus({
      establishments: ests,
      api: async () => {
        throw new UserError(ErrorCode.SECRET_MISSING, 'environment variable PGI_TOKEN_HV_A is not set')
      },
      io: new MemoryIo(),
    })
    expect(r.establishments[0]).toMatchObject({verdict: 'unknown', reason: 'no API token for this hypervisor: environment variable PGI_TOKEN_HV_A is not set'})
  })
})

describe('withTimeout', () => {
  it('rejects with CallTimeout when nothing answers', async () => {
    await expect(withTimeout(new Promise(() => undefined), 50, 'x')).rejects.toBeInstanceOf(CallTimeout)
  })

  it('does not blame the hypervisor when this process was starved: an answer waiting behind a busy loop wins', async () => {
    // the answer arrives (check phase) right after the deadline's timer, both delayed by a 400 ms busy loop
    const answer = new Promise<string>((r) => setTimeout(() => setImmediate(() => r('ok')), 50))
    const p = withTimeout(answer, 100, 'x')
    const until = Date.now() + 400
    while (Date.now() < until) {
      // busy: the event loop cannot run
    }
    await expect(p).resolves.toBe('ok')
  })
})

describe('findDataDisk', () => {
  it('finds the data disk by mountpoint or serial', () => {
    expect(findDataDisk([{mountpoint: '/mnt', 'total-bytes': 10, 'used-bytes': 5, disk: [{serial: 'pgi-data'}]}])).toEqual({usedBytes: 5, sizeBytes: 10, mountpoint: '/mnt'})
    expect(findDataDisk([{mountpoint: '/', 'total-bytes': 10, 'used-bytes': 5, disk: []}])).toBeUndefined()
  })
})
