/**
 * The pacing of a staging run: the transfer window's parser and clock (src/inventory/transfer-window.ts)
 * and the total cap's scheduler (src/rollout/pacing.ts) — pure arithmetic, no lab.
 */
import {describe, expect, it} from 'vitest'

import {clockFromEnv} from '../../../src/cli/flags.js'
import {asPgiError} from '../../../src/errors.js'
import {ExitCode} from '../../../src/exit-codes.js'
import {isOpen, localTime, nextClosing, nextOpening, parseTransferWindow} from '../../../src/inventory/transfer-window.js'
import {MIN_SHARE_BPS, planPacing, TransferPacer} from '../../../src/rollout/pacing.js'

const nights = parseTransferWindow('mon-fri 19:00-07:00,sat-sun')

describe('transfer window', () => {
  it('weekday nights and weekends, Europe/Paris: open and closed instants (winter, UTC+1)', () => {
    // Monday 2026-12-07
    expect(isOpen(nights, new Date('2026-12-07T12:00:00Z'))).toBe(false) // Mon 13:00
    expect(isOpen(nights, new Date('2026-12-07T18:00:00Z'))).toBe(true) // Mon 19:00
    expect(isOpen(nights, new Date('2026-12-08T05:59:00Z'))).toBe(true) // Tue 06:59, Monday's night
    expect(isOpen(nights, new Date('2026-12-08T06:00:00Z'))).toBe(false) // Tue 07:00
    expect(isOpen(nights, new Date('2026-12-12T12:00:00Z'))).toBe(true) // Sat noon
    expect(isOpen(nights, new Date('2026-12-13T22:59:00Z'))).toBe(true) // Sun 23:59
    expect(isOpen(nights, new Date('2026-12-14T06:30:00Z'))).toBe(false) // Mon 07:30: Sunday's whole day ended at midnight
    expect(isOpen(nights, new Date('2026-12-13T23:30:00Z'))).toBe(false) // Mon 00:30
  })

  it('the next opening and closing, in the window\'s time zone, across a daylight-saving change', () => {
    expect(nextOpening(nights, new Date('2026-12-07T12:00:00Z'))?.toISOString()).toBe('2026-12-07T18:00:00.000Z')
    expect(localTime(nextOpening(nights, new Date('2026-12-07T12:00:00Z'))!, nights.timezone)).toBe('2026-12-07 19:00 Europe/Paris')
    expect(nextClosing(nights, new Date('2026-12-07T20:00:00Z'))?.toISOString()).toBe('2026-12-08T06:00:00.000Z')
    // Friday evening to Sunday midnight: Friday's night joins the weekend (Sunday night is not a weekday night)
    expect(nextClosing(nights, new Date('2026-12-11T20:00:00Z'))?.toISOString()).toBe('2026-12-13T23:00:00.000Z')
    // Sunday 2027-03-28 the clocks go forward: Monday 19:00 is 17:00 UTC
    const w = parseTransferWindow('mon 19:00-23:00')
    expect(nextOpening(w, new Date('2027-03-27T12:00:00Z'))?.toISOString()).toBe('2027-03-29T17:00:00.000Z')
    expect(nextOpening(parseTransferWindow('22:00-06:00', {timezone: 'America/Cayenne'}), new Date('2026-12-07T12:00:00Z'))?.toISOString()).toBe('2026-12-08T01:00:00.000Z')
    expect(isOpen(parseTransferWindow('always'), new Date())).toBe(true)
    expect(nextClosing(parseTransferWindow('always'), new Date())).toBeUndefined()
  })

  it('bad syntax: a usage error (exit 2) naming the clause and the flag', () => {
    const cases: [string, RegExp][] = [
      ['mon-fri 19:00-25:00', /clause|"25:00"/],
      ['mon-fry 19:00-07:00', /"mon-fry".*not a day/],
      ['19:00-07:00 mon-fri', /clause 1 .*days come before the times/],
      ['mon-fri 19:00-07:00,,sat', /clause 2/],
      ['22:00-22:00', /empty/],
      ['nightly', /"nightly"/],
      ['', /empty/],
    ]
    for (const [spec, msg] of cases) {
      let err: unknown
      try {
        parseTransferWindow(spec)
      } catch (e) {
        err = e
      }
      const pe = asPgiError(err)
      expect(pe.code, spec).toBe('PGI_USAGE')
      expect(pe.exitCode, spec).toBe(ExitCode.USAGE)
      expect(pe.where, spec).toEqual({flag: 'transfer-window'})
      expect(pe.message, spec).toMatch(msg)
    }
    expect(() => parseTransferWindow('22:00-06:00', {timezone: 'Mars/Olympus'})).toThrow(/not an IANA time zone/)
  })
})

describe('total cap scheduler', () => {
  const M = 1024 * 1024
  it('slots and shares: total ÷ per-site cap at once, each its share, never more than the total', () => {
    // 10 MiB/s for 100 schools at 2 MiB/s each: 5 at once, 2 MiB/s each
    expect(planPacing({totalBps: 10 * M, perSiteBps: 2 * M, parallel: 20, count: 100})).toEqual({slots: 5, shareBps: 2 * M})
    // --max-parallel bounds it: 3 at once, the total split 3 ways but at most the per-site cap
    expect(planPacing({totalBps: 10 * M, perSiteBps: 4 * M, parallel: 3, count: 100})).toEqual({slots: 2, shareBps: 4 * M})
    expect(planPacing({totalBps: 10 * M, perSiteBps: 2 * M, parallel: 3, count: 100})).toEqual({slots: 3, shareBps: 2 * M})
    // two sites, no per-site cap: half each
    expect(planPacing({totalBps: M, parallel: 4, count: 2})).toEqual({slots: 2, shareBps: M / 2})
    // a per-site cap above the total: one at a time, at the total
    expect(planPacing({totalBps: M, perSiteBps: 2 * M, parallel: 4, count: 10})).toEqual({slots: 1, shareBps: M})
    // no per-site cap: no share below MIN_SHARE_BPS
    const p = planPacing({totalBps: 10 * MIN_SHARE_BPS + 5, parallel: 50, count: 100})
    expect(p.slots).toBe(10)
    expect(p.shareBps! * p.slots).toBeLessThanOrEqual(10 * MIN_SHARE_BPS + 5)
    // no total: the per-site cap, --max-parallel at once
    expect(planPacing({perSiteBps: 2 * M, parallel: 4, count: 10})).toEqual({slots: 4, shareBps: 2 * M})
  })

  it('a finished transfer hands its slot to the next; once nobody waits the shares grow, the sum never above the total', async () => {
    const total = 3 * M
    const p = new TransferPacer({totalBps: total, parallel: 4, count: 5})
    expect(p.plan).toEqual({slots: 4, shareBps: Math.floor(total / 4)})
    const running = new Set<string>()
    const sum = () => [...running].reduce((n, u) => n + (p.capFor(u) ?? 0), 0)
    for (const u of ['a', 'b', 'c', 'd']) {
      await p.acquire(u)
      running.add(u)
    }
    let eGot = false
    const e = p.acquire('e').then(() => {
      eGot = true
      running.add('e')
    })
    await Promise.resolve()
    expect(eGot).toBe(false)
    expect(sum()).toBeLessThanOrEqual(total)
    p.release('a')
    running.delete('a')
    await e
    expect(eGot).toBe(true)
    // e took a's slot at the same share; nobody waits now
    expect(p.capFor('e')).toBe(Math.floor(total / 4))
    expect(sum()).toBeLessThanOrEqual(total)
    p.release('b')
    running.delete('b')
    expect(p.capFor('c')).toBe(total / 3)
    expect(sum()).toBeLessThanOrEqual(total)
    p.release('c')
    p.release('d')
    running.delete('c')
    running.delete('d')
    expect(p.capFor('e')).toBe(total)
    // one that will not transfer (already staged, full transfer) frees the waiting count
    const q = new TransferPacer({totalBps: 2 * M, perSiteBps: M, parallel: 4, count: 3})
    expect(q.tryAcquire('x')).toBe(true)
    expect(q.tryAcquire('y')).toBe(true)
    expect(q.tryAcquire('z')).toBe(false)
    expect(q.capFor('x')).toBe(M)
    q.forgo()
    q.release('y')
    // alone now, but never above the per-site cap
    expect(q.capFor('x')).toBe(M)
    expect(q.capFor('y')).toBeUndefined()
  })
})

describe('PGI_NOW (the clock at the command line\'s edge)', () => {
  it('starts the clock at the instant given, which then runs on; a value that is no ISO instant is a usage error', () => {
    expect(clockFromEnv({})).toBeUndefined()
    const t = clockFromEnv({PGI_NOW: '2026-12-07T12:00:00Z'})!()
    expect(Math.abs(t.getTime() - Date.parse('2026-12-07T12:00:00Z'))).toBeLessThan(1000)
    for (const v of ['monday', '12:00', '2026-13-45T00:00:00Z']) {
      let err: unknown
      try {
        clockFromEnv({PGI_NOW: v})
      } catch (e) {
        err = e
      }
      expect(asPgiError(err)).toMatchObject({code: 'PGI_USAGE', exitCode: ExitCode.USAGE})
      expect(asPgiError(err).message).toMatch(/PGI_NOW/)
    }
  })
})
