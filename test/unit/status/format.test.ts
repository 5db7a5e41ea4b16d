import {describe, expect, it} from 'vitest'

import {changeLine, diffStatuses, escapeLabel, renderPrometheus, renderTable, tableRows} from '../../../src/status/format.js'
import type {StatusReport} from '../../../src/status/types.js'
import {summarize, toEstablishmentStatus} from '../../../src/status/verdict.js'
import {watchStatus} from '../../../src/status/watch.js'
import {healthyReport, NOW, obs} from './fixtures.js'

function report(list: ReturnType<typeof obs>[], checkedAt = NOW.toISOString()): StatusReport {
  const establishments = list.map((o) => toEstablishmentStatus(o, NOW))
  return {checkedAt, durationMs: 420, summary: summarize(establishments), establishments, hypervisors: [{name: 'hv-marseille', reachable: true, error: null, establishments: list.length, durationMs: 400}]}
}

const pgDown = healthyReport({healthy: false, checks: {...healthyReport().checks, postgresql: {ok: false}}})

const sample = () =>
  report([
    obs({uai: '0130040Y'}),
    obs({uai: '0131549N', vmState: 'stopped', health: undefined}),
    obs({uai: '0130041Z', health: pgDown}),
    obs({uai: '0840004Y', hypervisor: 'hv-avignon', hypervisorReachable: false, hypervisorError: {code: 'PGI_UNREACHABLE', call: 'cluster/resources', message: 'x', timeoutMs: 5000}}),
    obs({uai: '0130042A'}),
  ])

describe('table', () => {
  it('puts problems first: down, degraded, unknown, then healthy', () => {
    const rows = tableRows(sample())
    expect(rows.map((r) => [r[0], r[2]])).toEqual([
      ['0131549N', 'down'],
      ['0130041Z', 'degraded'],
      ['0840004Y', 'unknown'],
      ['0130040Y', 'healthy'],
      ['0130042A', 'healthy'],
    ])
    expect(rows[1][3]).toBe('PostgreSQL is not running on the server')
    expect(rows[2][3]).toBe('hypervisor not reachable (timeout after 5 s)')
  })

  it('has no colour codes unless asked, and a summary line', () => {
    const plain = renderTable(sample(), {colour: false})
    expect(plain).not.toMatch(/\u001b\[/)
    expect(plain).toMatch(/5 establishments: 2 healthy, 1 degraded, 1 down, 1 unknown \(checked in 0\.4 s\)$/)
    const coloured = renderTable(sample(), {colour: true})
    // util.styleText honours NO_COLOR/FORCE_COLOR of the test environment; only check when it colours at all
    if (coloured !== plain) expect(coloured).toMatch(/\u001b\[3\dm(down|degraded)/)
  })

  it('shortens long reasons to fit the terminal width', () => {
    const long = obs({uai: '0130043B', health: healthyReport({healthy: false, problems: ['x'.repeat(300)]})})
    const text = renderTable(report([long]), {colour: false, width: 140})
    for (const line of text.split('\n').slice(0, -1)) expect(line.length).toBeLessThanOrEqual(140)
    expect(text).toContain('…')
  })
})

describe('prometheus', () => {
  it('writes HELP/TYPE once per metric and labelled samples', () => {
    const text = renderPrometheus(sample())
    expect(text.endsWith('\n')).toBe(true)
    const lines = text.trimEnd().split('\n')
    const helps = lines.filter((l) => l.startsWith('# HELP '))
    const types = lines.filter((l) => l.startsWith('# TYPE '))
    expect(new Set(helps.map((l) => l.split(' ')[2])).size).toBe(helps.length)
    expect(types.length).toBe(helps.length)
    expect(lines).toContain('pgi_up{uai="0130041Z",hypervisor="hv-marseille",node="pve-mrs1"} 0')
    expect(lines).toContain('pgi_up{uai="0130040Y",hypervisor="hv-marseille",node="pve-mrs1"} 1')
    expect(lines).toContain('pgi_health_check{uai="0130041Z",hypervisor="hv-marseille",node="pve-mrs1",check="postgresql"} 0')
    expect(lines).toContain('pgi_verdict{uai="0131549N",hypervisor="hv-marseille",node="pve-mrs1",verdict="down"} 1')
    expect(lines).toContain('pgi_data_disk_used_ratio{uai="0130040Y",hypervisor="hv-marseille",node="pve-mrs1"} 0.125')
    expect(lines).toContain('pgi_last_backup_age_seconds{uai="0130040Y",hypervisor="hv-marseille",node="pve-mrs1"} 18000')
    expect(lines).toContain('pgi_image_info{uai="0130040Y",hypervisor="hv-marseille",node="pve-mrs1",running="2026.11.0",wanted="2026.11.0"} 1')
    expect(lines).toContain('pgi_hypervisor_up{hypervisor="hv-marseille"} 1')
    // every sample line is `name{labels} value` in the exposition grammar
    for (const l of lines.filter((x) => !x.startsWith('#'))) expect(l).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? -?[0-9.e+]+$|NaN$/)
    // samples of one metric are contiguous (one block per family)
    const order = lines.filter((x) => !x.startsWith('#')).map((l) => l.replace(/[{ ].*/, ''))
    const seen = new Set<string>()
    for (let i = 0; i < order.length; i++) {
      if (i > 0 && order[i] !== order[i - 1]) {
        expect(seen.has(order[i])).toBe(false)
        seen.add(order[i - 1])
      }
    }
  })

  it('leaves out what was not observed instead of writing 0', () => {
    const text = renderPrometheus(report([obs({uai: '0840004Y', hypervisorReachable: false, vmPresent: undefined, vmState: undefined, health: undefined, agentAnswering: undefined})]))
    expect(text).toContain('pgi_up{uai="0840004Y"')
    expect(text).not.toContain('pgi_vm_running{')
    expect(text).not.toContain('pgi_health_check{')
    expect(text).not.toContain('pgi_last_backup_age_seconds{')
    expect(text).not.toContain('pgi_offsite_backup_age_seconds{')
  })

  it('reports the age of the last off-site copy', () => {
    const h = healthyReport({offsite: {configured: true, state: 'ok', last_success_at: '2026-11-22T03:00:00Z', age_s: 14400, error_class: null}})
    const text = renderPrometheus(report([obs({health: h})]))
    expect(text).toContain('# TYPE pgi_offsite_backup_age_seconds gauge')
    expect(text).toMatch(/^pgi_offsite_backup_age_seconds\{uai="[0-9A-Z]+",hypervisor="[^"]+",node="[^"]+"\} 14400$/m)
  })

  it('escapes label values', () => {
    expect(escapeLabel('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd')
  })
})

describe('change detection (--watch)', () => {
  it('reports every establishment the first time, then only changes of verdict or reason', () => {
    const first = sample()
    expect(diffStatuses(undefined, first)).toHaveLength(5)
    // same states, different uptime: no change
    const same = report([
      obs({uai: '0130040Y', uptimeS: 999_999}),
      obs({uai: '0131549N', vmState: 'stopped', health: undefined}),
      obs({uai: '0130041Z', health: pgDown}),
      obs({uai: '0840004Y', hypervisor: 'hv-avignon', hypervisorReachable: false, hypervisorError: {code: 'PGI_UNREACHABLE', call: 'cluster/resources', message: 'x', timeoutMs: 5000}}),
      obs({uai: '0130042A'}),
    ])
    expect(diffStatuses(first, same)).toEqual([])
    const next = report(
      [
        obs({uai: '0130040Y', health: pgDown}),
        obs({uai: '0131549N', vmState: 'stopped', health: undefined}),
        obs({uai: '0130041Z'}),
        obs({uai: '0840004Y', hypervisor: 'hv-avignon', hypervisorReachable: false, hypervisorError: {code: 'PGI_UNREACHABLE', call: 'cluster/resources', message: 'x', timeoutMs: 5000}}),
      ],
      '2026-11-22T07:01:00.000Z',
    )
    const changes = diffStatuses(first, next)
    expect(changes.map((c) => c.uai)).toEqual(['0130040Y', '0130041Z', '0130042A'])
    expect(changeLine(changes[0], next.checkedAt)).toBe('2026-11-22T07:01:00Z 0130040Y Lycée Georges Colomb: healthy → degraded (PostgreSQL is not running on the server)')
    expect(changeLine(changes[1], next.checkedAt)).toBe('2026-11-22T07:01:00Z 0130041Z Lycée Georges Colomb: degraded → healthy')
    expect(changeLine(changes[2], next.checkedAt)).toMatch(/0130042A .*: no longer selected$/)
  })

  it('the watch loop prints all lines once, then only changes, and stops on its signal', async () => {
    const rounds = [sample(), sample(), report([obs({uai: '0130040Y', vmState: 'stopped', health: undefined})])]
    let i = 0
    const out: string[] = []
    const ac = new AbortController()
    const last = await watchStatus({
      intervalS: 0,
      mode: 'changes',
      collect: async () => rounds[Math.min(i++, rounds.length - 1)],
      write: (t) => out.push(t),
      signal: ac.signal,
      onRound: (_r, n) => {
        if (n === 3) ac.abort()
      },
    })
    expect(i).toBe(3)
    const text = out.join('')
    expect(text.split('\n').filter(Boolean)).toHaveLength(5 + 0 + 5)
    expect(text).toMatch(/0130040Y .*: healthy → down \(VM is stopped\)/)
    expect(last?.summary.down).toBe(1)
  })

  it('redraws the whole screen on a terminal', async () => {
    const out: string[] = []
    await watchStatus({intervalS: 0, mode: 'redraw', collect: async () => sample(), render: () => 'TABLE', write: (t) => out.push(t), signal: new AbortController().signal, maxRounds: 2})
    expect(out).toHaveLength(2)
    for (const o of out) expect(o.startsWith('\u001b[H\u001b[2J')).toBe(true)
  })

  it('Ctrl-C during a slow round ends the watch at once with the last report', async () => {
    const ac = new AbortController()
    let n = 0
    const p = watchStatus({
      intervalS: 0,
      mode: 'json',
      collect: () => (n++ === 0 ? Promise.resolve(sample()) : new Promise<StatusReport>(() => undefined)),
      write: () => undefined,
      signal: ac.signal,
    })
    setTimeout(() => ac.abort(), 50)
    const last = await p
    expect(last?.summary.total).toBe(5)
  })
})
