import {describe, expect, it} from 'vitest'

import {ErrorCode} from '../../../src/errors.js'
import {PveApiError} from '../../../src/proxmox/errors.js'
import {CallTimeout, toProbeError} from '../../../src/status/probe-error.js'
import {DEFAULT_POLICY, humanDuration, judge, parseHealthOutput, rolloutState, statusExitCode, toEstablishmentStatus} from '../../../src/status/verdict.js'
import {healthyReport, NOW, obs} from './fixtures.js'

describe('judge', () => {
  it('is healthy when the VM runs and every check passes', () => {
    const j = judge(obs(), NOW)
    expect(j.verdict).toBe('healthy')
    expect(j.reasons).toEqual([])
    expect(toEstablishmentStatus(obs(), NOW).reason).toBe('all checks passed')
  })

  it('is degraded with a plain reason when PostgreSQL is down', () => {
    const h = healthyReport({healthy: false, checks: {...healthyReport().checks, postgresql: {ok: false, detail: 'inactive'}}, problems: ['postgresql: inactive']})
    const j = judge(obs({health: h, healthExitCode: 1}), NOW)
    expect(j.verdict).toBe('degraded')
    expect(j.reasons[0]).toBe('PostgreSQL is not running on the server')
  })

  it('lists every failing check, PostgreSQL first', () => {
    const c = healthyReport().checks
    const h = healthyReport({healthy: false, checks: {...c, web: {ok: false}, trytond: {ok: false}, postgresql: {ok: false}}})
    expect(judge(obs({health: h}), NOW).reasons).toEqual(['PostgreSQL is not running on the server', 'the Tryton server is not answering', 'the web client is not served'])
  })

  it('is down when the VM is stopped, paused or absent', () => {
    expect(judge(obs({vmState: 'stopped', health: undefined, agentAnswering: undefined}), NOW)).toMatchObject({verdict: 'down', reasons: ['VM is stopped']})
    expect(judge(obs({vmState: 'paused', health: undefined}), NOW)).toMatchObject({verdict: 'down', reasons: ['VM is paused']})
    const absent = judge(obs({vmPresent: false, vmState: undefined, health: undefined}), NOW)
    expect(absent.verdict).toBe('down')
    expect(absent.reasons[0]).toMatch(/no VM 1001 on pve-mrs1/)
  })

  it('is unknown when the hypervisor does not answer, with the timeout in the reason', () => {
    const e = toProbeError('cluster/resources', new CallTimeout('cluster/resources', 5000))
    const j = judge(obs({hypervisorReachable: false, hypervisorError: e, vmPresent: undefined, health: undefined}), NOW)
    expect(j).toMatchObject({verdict: 'unknown', reasons: ['hypervisor not reachable (timeout after 5 s)']})
  })

  it('says the TLS certificate does not match', () => {
    const j = judge(obs({hypervisorReachable: false, hypervisorError: {code: ErrorCode.TLS_MISMATCH, call: 'cluster/resources', message: 'fingerprint mismatch'}}), NOW)
    expect(j.verdict).toBe('unknown')
    expect(j.reasons[0]).toMatch(/TLS certificate does not match the pinned fingerprint/)
  })

  it('names the missing privilege when the health check is refused, and keeps what is known', () => {
    const err = new PveApiError({status: 403, pveMessage: 'Permission check failed (/vms/1001, VM.GuestAgent.Unrestricted)', method: 'POST', path: '/nodes/pve-mrs1/qemu/1001/agent/exec', where: {}})
    const he = toProbeError('agent exec pgi-health', err)
    expect(he).toMatchObject({code: ErrorCode.PVE_PERMISSION, privilege: 'VM.GuestAgent.Unrestricted', path: '/vms/1001'})
    const o = obs({health: undefined, healthExitCode: undefined, healthError: he, agentAnswering: true, fsDataDisk: {usedBytes: 95, sizeBytes: 100, mountpoint: '/srv/pgi'}})
    const j = judge(o, NOW)
    expect(j.verdict).toBe('unknown')
    expect(j.reasons[0]).toBe('PGI health not checked: this token lacks the privilege VM.GuestAgent.Unrestricted on /vms/1001')
    expect(j.notes).toContain('the VM runs and its guest agent answers')
    const s = toEstablishmentStatus(o, NOW)
    expect(s.vm.state).toBe('running')
    expect(s.dataDisk).toMatchObject({usedRatio: 0.95, source: 'agent-fsinfo'})
    expect(s.errors[0]?.privilege).toBe('VM.GuestAgent.Unrestricted')
  })

  it('a stopped VM is down even when the token cannot run the health check', () => {
    const he = {code: ErrorCode.PVE_PERMISSION, call: 'x', message: 'Permission check failed (/vms/1001, VM.GuestAgent.Unrestricted)', privilege: 'VM.GuestAgent.Unrestricted'}
    expect(judge(obs({vmState: 'stopped', health: undefined, healthError: he}), NOW).verdict).toBe('down')
  })

  it('a VM the token cannot see is unknown, naming VM.Audit', () => {
    const e = toProbeError('status/current', new Error('403 Permission check failed (/vms/1001, VM.Audit)'))
    const j = judge(obs({vmPresent: undefined, vmError: e, health: undefined}), NOW)
    expect(j).toMatchObject({verdict: 'unknown'})
    expect(j.reasons[0]).toBe('cannot see the VM: this token lacks the privilege VM.Audit on /vms/1001')
  })

  it('a running VM whose agent does not answer is starting (unknown) early, degraded later', () => {
    const ae = {code: ErrorCode.PVE_HTTP, call: 'agent exec pgi-health', message: 'QEMU guest agent is not running'}
    const early = judge(obs({uptimeS: 40, agentAnswering: false, agentError: ae, health: undefined}), NOW)
    expect(early.verdict).toBe('unknown')
    expect(early.reasons[0]).toMatch(/VM is starting/)
    const late = judge(obs({uptimeS: 3600, agentAnswering: false, agentError: ae, health: undefined}), NOW)
    expect(late.verdict).toBe('degraded')
    expect(late.reasons[0]).toMatch(/guest agent not responding/)
  })

  it('a health check that never finishes degrades; a missing pgi-health is unknown', () => {
    const slow = toProbeError('agent exec pgi-health', new CallTimeout('agent exec pgi-health', 30_000, false))
    expect(slow.code).toBe(ErrorCode.TIMEOUT)
    expect(judge(obs({health: undefined, healthError: slow}), NOW)).toMatchObject({verdict: 'degraded', reasons: ['the health check did not finish within 30 s']})
    const missing = {code: ErrorCode.PVE_HTTP, call: 'agent exec pgi-health', message: 'Failed to execute child process “/usr/local/sbin/pgi-health” (No such file or directory)'}
    expect(judge(obs({health: undefined, healthError: missing}), NOW).reasons[0]).toMatch(/pgi-health is missing/)
  })

  it('a full data disk and a stale backup degrade', () => {
    const c = healthyReport().checks
    const h = healthyReport({checks: {...c, data_disk: {ok: true, mounted: true, used_bytes: 31e9, size_bytes: 32e9}, backup: {ok: true, last: '2026-11-18T02:00:00Z', age_s: 4 * 86400 + 5 * 3600}}})
    const j = judge(obs({health: h}), NOW)
    expect(j.verdict).toBe('degraded')
    expect(j.reasons).toEqual(['the data disk is 97 % full', 'the last backup is 4 days old'])
  })

  it('a new server without a backup yet is not degraded for it', () => {
    const c = healthyReport().checks
    const h = healthyReport({checks: {...c, backup: {ok: false, last: null, age_s: null}}})
    const young = judge(obs({health: h, deployedAt: '2026-11-22T01:00:00Z'}), NOW)
    expect(young.verdict).toBe('healthy')
    expect(young.notes[0]).toMatch(/no backup yet/)
    expect(judge(obs({health: h, deployedAt: '2026-11-01T01:00:00Z'}), NOW)).toMatchObject({verdict: 'degraded', reasons: ['no backup of the databases was found']})
  })

  it('the off-site copy: judged only when the inventory asks for one; stale, never made or not configured degrades, with the last failure\'s class', () => {
    const P = {...DEFAULT_POLICY, offsiteMaxAgeS: 48 * 3600}
    const fresh = healthyReport({offsite: {configured: true, state: 'ok', last_success_at: '2026-11-22T03:00:00Z', age_s: 4 * 3600, error_class: null}})
    expect(judge(obs({health: fresh}), NOW, P)).toMatchObject({verdict: 'healthy', reasons: []})
    const stale = healthyReport({offsite: {configured: true, state: 'failed', last_success_at: '2026-11-18T03:00:00Z', age_s: 4 * 86400 + 4 * 3600, error_class: 'wrong_key'}})
    expect(judge(obs({health: stale}), NOW, P)).toMatchObject({verdict: 'degraded', reasons: ['the last off-site copy is 4 days old (last push: wrong_key)']})
    // the same report with no offsite: section in the inventory: not judged
    expect(judge(obs({health: stale}), NOW).verdict).toBe('healthy')
    // a failed push within the threshold is a note
    const failedOnce = healthyReport({offsite: {configured: true, state: 'failed', last_success_at: '2026-11-21T03:00:00Z', age_s: 28 * 3600, error_class: 'unreachable'}})
    const f = judge(obs({health: failedOnce}), NOW, P)
    expect(f.verdict).toBe('healthy')
    expect(f.notes).toContain('the last off-site push failed (unreachable); the copy of 28 h ago is the latest')
    const off = healthyReport({offsite: {configured: false}})
    expect(judge(obs({health: off}), NOW, P).reasons).toEqual(['off-site copies are not configured on the server (pgi deploy gives it its settings)'])
    const never = healthyReport({offsite: {configured: true, state: 'pending', last_success_at: null, age_s: null}})
    expect(judge(obs({health: never, deployedAt: '2026-11-21T20:00:00Z'}), NOW, P)).toMatchObject({verdict: 'healthy', notes: ['no off-site copy yet']})
    expect(judge(obs({health: never, deployedAt: '2026-11-01T01:00:00Z'}), NOW, P)).toMatchObject({verdict: 'degraded', reasons: ['no off-site copy was ever made']})
    expect(toEstablishmentStatus(obs({health: stale}), NOW, P).offsite).toEqual({configured: true, state: 'failed', lastSuccess: '2026-11-18T03:00:00Z', ageS: 4 * 86400 + 4 * 3600, errorClass: 'wrong_key'})
    expect(toEstablishmentStatus(obs(), NOW, P).offsite).toBeNull()
  })

  it('reads the off-site part of pgi-health\'s output', () => {
    const r = parseHealthOutput(JSON.stringify({...healthyReport(), offsite: {configured: true, state: 'ok', last_success_at: '2026-11-22T03:00:00Z', age_s: 14400, error_class: null, error: null, bytes_sent: 12}}))
    expect('report' in r && r.report.offsite).toEqual({configured: true, state: 'ok', last_success_at: '2026-11-22T03:00:00Z', age_s: 14400, error_class: null, error: null})
  })

  it('unhealthy without a known failing check uses the guest problem text', () => {
    const h = healthyReport({healthy: false, problems: ['trytond: 2 workers crashed']})
    expect(judge(obs({health: h}), NOW).reasons).toEqual(['the server reports: trytond: 2 workers crashed'])
  })

  it('image drift is a note, not a verdict change', () => {
    const j = judge(obs({wantedImage: '2026.12.0'}), NOW)
    expect(j.verdict).toBe('healthy')
    expect(j.notes).toContain('runs image 2026.11.0, the inventory wants 2026.12.0')
  })

  it('a failed update degrades; a fresh pending one is a note; a stalled one degrades', () => {
    const base = {id: 'r1', from: '2026.10.0', to: '2026.11.0', at: '2026-11-22T06:30:00Z'}
    const failed = judge(obs({rollout: rolloutState({...base, step: 'rolled-back', reason: 'login gate failed'})}), NOW)
    expect(failed).toMatchObject({verdict: 'degraded', reasons: ['the update to 2026.11.0 failed and was rolled back: login gate failed']})
    const pending = judge(obs({rollout: rolloutState({...base, step: 'backup'})}), NOW)
    expect(pending.verdict).toBe('healthy')
    expect(pending.notes).toContain('update to 2026.11.0 in progress (step backup)')
    const stalled = judge(obs({rollout: rolloutState({...base, step: 'swapped', at: '2026-11-21T07:00:00Z'})}), NOW)
    expect(stalled.verdict).toBe('degraded')
    expect(stalled.reasons[0]).toMatch(/stopped half-way \(step swapped, 24 h ago\)/)
    expect(rolloutState({...base, step: 'committed'}).state).toBe('done')
  })

  it('a server running another image than its VM records is degraded, and says which (a note only mid-update)', () => {
    const h = healthyReport({image: {name: 'pgi-tryton', version: '0.0.0'}})
    const j = judge(obs({health: h, metaImage: '1.0.0'}), NOW)
    expect(j.verdict).toBe('degraded')
    expect(j.reasons).toEqual(['the VM metadata says image 1.0.0 but the server runs 0.0.0'])
    expect(toEstablishmentStatus(obs({health: h, metaImage: '1.0.0'}), NOW).reason).toBe('the VM metadata says image 1.0.0 but the server runs 0.0.0')
    // half-way through a running update the OS disk is already the new one: expected, noted
    const mid = judge(obs({health: h, metaImage: '1.0.0', rollout: rolloutState({id: 'r1', from: '1.0.0', to: '0.0.0', at: '2026-11-22T06:30:00Z', step: 'swapped'})}), NOW)
    expect(mid.verdict).toBe('healthy')
    expect(mid.notes).toContain('the VM metadata says image 1.0.0 but the server runs 0.0.0')
  })

  it('a node reported offline makes its VMs unknown', () => {
    expect(judge(obs({vmState: 'unknown', health: undefined}), NOW)).toMatchObject({verdict: 'unknown', reasons: ['node pve-mrs1 is offline or not answering for its VMs']})
  })
})

describe('parseHealthOutput', () => {
  it('reads the guest contract', () => {
    const r = parseHealthOutput(JSON.stringify(healthyReport()))
    expect('report' in r && r.report.checks.postgresql?.ok).toBe(true)
  })
  it('takes the last JSON line when something was printed before it', () => {
    const r = parseHealthOutput(`warning: locale\n${JSON.stringify(healthyReport({healthy: false}))}\n`)
    expect('report' in r && r.report.healthy).toBe(false)
  })
  it('reports garbage as an error instead of throwing', () => {
    expect(parseHealthOutput('')).toEqual({error: 'pgi-health printed nothing'})
    expect(parseHealthOutput('Traceback (most recent call last)')).toEqual({error: 'pgi-health did not print JSON'})
    expect(parseHealthOutput('{"checks":{}}')).toEqual({error: 'pgi-health output has no "healthy" field'})
  })
})

describe('humanDuration', () => {
  it('uses the unit a person would', () => {
    expect(humanDuration(45)).toBe('45 s')
    expect(humanDuration(600)).toBe('10 min')
    expect(humanDuration(5 * 3600)).toBe('5 h')
    expect(humanDuration(3 * 86400)).toBe('3 days')
  })
})

describe('statusExitCode', () => {
  const tls = {code: ErrorCode.TLS_MISMATCH, call: 'cluster/resources', message: 'fingerprint mismatch'}
  const cut = () => toEstablishmentStatus(obs({hypervisorReachable: false, hypervisorError: tls, vmPresent: undefined, health: undefined}), NOW)
  const healthy = () => toEstablishmentStatus(obs(), NOW)
  it('0 all healthy, 8 when no hypervisor could be reached or trusted, 5 otherwise', () => {
    expect(statusExitCode([healthy(), healthy()])).toBe(0)
    expect(statusExitCode([])).toBe(0)
    expect(statusExitCode([cut(), cut()])).toBe(8)
    expect(statusExitCode([cut(), healthy()])).toBe(5)
    const refused = toEstablishmentStatus(obs({hypervisorReachable: false, hypervisorError: {code: ErrorCode.PVE_AUTH, call: 'cluster/resources', message: '401'}, vmPresent: undefined, health: undefined}), NOW)
    expect(statusExitCode([refused])).toBe(5)
  })
})
