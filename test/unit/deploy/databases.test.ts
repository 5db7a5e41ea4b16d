import {describe, expect, it} from 'vitest'

import {ErrorCode, UserError} from '../../../src/errors.js'
import {ensureDatabases, readPlannedDatabases} from '../../../src/deploy/databases.js'
import type {GuestTarget} from '../../../src/fleet/guest.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {est as establishment} from './fixtures.js'

/**
 * The declared databases against a guest that answers as the image's pgi-db does (JSON on stdout,
 * its exit statuses), recording every command: what deploy runs, in which order, and what it
 * never runs (a create over an existing database).
 */
function guest(opts: {have: string[]; record?: string[] | 'none'; loginFails?: string[]; appearsOnCreate?: string[]}) {
  const have = new Set(opts.have)
  const calls: string[][] = []
  const api = {
    hypervisor: 'hv-a',
    async agentFileRead(_n: string, _v: number, file: string) {
      calls.push(['file-read', file])
      if (opts.record === 'none') throw new Error('Agent error: No such file or directory')
      return JSON.stringify({v: 1, at: '2026-12-04T10:00:00Z', exit_code: 0, health: {healthy: true, databases: (opts.record ?? [...have]).map((name) => ({name, modules: {}}))}})
    },
    async agentExec(_n: string, _v: number, command: string[]) {
      calls.push(command)
      const [prog, cmd, ...rest] = command
      if (prog === '/usr/local/lib/pgi/health-record') return {exitcode: 0, stdout: '', stderr: ''}
      if (cmd === 'list') return {exitcode: 0, stdout: JSON.stringify([...have].map((name) => ({name, size: 1, tryton: true, modules: [], kind: 'create', class: null, last_backup: null}))), stderr: ''}
      if (cmd === 'create') {
        const name = rest[0]!
        if (opts.appearsOnCreate?.includes(name)) have.add(name)
        if (have.has(name)) return {exitcode: 5, stdout: JSON.stringify({error: {code: 'exists', message: `database ${name} already exists`}}), stderr: ''}
        have.add(name)
        return {exitcode: 0, stdout: JSON.stringify({database: name, modules: [], from: 'template', company: null, fiscal_years: [], method: 'template', seconds: 3.5}), stderr: ''}
      }
      if (cmd === 'login-check') {
        const out = rest.map((name) => ({name, seconds: 1.5, ok: !opts.loginFails?.includes(name), ...(opts.loginFails?.includes(name) ? {error: 'Tryton refused the login (HTTP 200)'} : {})}))
        return {exitcode: out.every((r) => r.ok) ? 0 : 1, stdout: JSON.stringify(out), stderr: ''}
      }
      return {exitcode: 2, stdout: JSON.stringify({error: {code: 'usage', message: 'usage'}}), stderr: ''}
    },
  }
  const target: GuestTarget = {api: api as unknown as PveApi, node: 'pve1', vmid: 1001, uai: '0130040Y'}
  return {target, calls, have}
}

const est = (names: string[]) => ({
  ...establishment,
  databases: names.map((name) => ({name, company: 'Lycée A', chart: 'fr' as const, currency: 'EUR' as const, source: establishment.source, ...(name === 'next' ? {fiscalYear: 2027} : {})})),
})
const now = () => new Date('2026-12-04T10:00:00Z')

describe('declared databases', () => {
  it('plans from the health record alone (a GET), pgi-db list only when there is no record', async () => {
    const g = guest({have: ['pgi']})
    expect(await readPlannedDatabases(g.target, est(['pgi', 'next']))).toEqual({databases: [{name: 'pgi', state: 'exists'}, {name: 'next', state: 'missing'}]})
    expect(g.calls).toEqual([['file-read', '/run/pgi/health.json']])
    const none = guest({have: ['pgi'], record: 'none'})
    expect((await readPlannedDatabases(none.target, est(['pgi']))).databases).toEqual([{name: 'pgi', state: 'exists'}])
    expect(none.calls.map((c) => c[1])).toEqual(['/run/pgi/health.json', 'list'])
  })

  it('creates only the missing ones (company, fiscal year), never runs create over an existing one, then logs into each', async () => {
    const g = guest({have: ['pgi']})
    const out = await ensureDatabases(g.target, est(['pgi', 'next', 'cours']), {now})
    expect(out).toEqual([
      {name: 'pgi', outcome: 'existing', loginSeconds: 1.5},
      {name: 'next', outcome: 'created', company: 'Lycée A', fiscalYear: 2027, seconds: 3.5, loginSeconds: 1.5},
      {name: 'cours', outcome: 'created', company: 'Lycée A', fiscalYear: 2026, seconds: 3.5, loginSeconds: 1.5},
    ])
    expect(g.calls.filter((c) => c[1] === 'create')).toEqual([
      ['/usr/local/sbin/pgi-db', 'create', 'next', '--company', 'Lycée A', '--fiscal-year', '2027'],
      ['/usr/local/sbin/pgi-db', 'create', 'cours', '--company', 'Lycée A', '--fiscal-year', '2026'],
    ])
    expect(g.calls.at(-2)).toEqual(['/usr/local/sbin/pgi-db', 'login-check', 'pgi', 'next', 'cours'])
    // the guest writes its health record at once (what its timer does), for the next plan and AMIs' status
    expect(g.calls.at(-1)).toEqual(['/usr/local/lib/pgi/health-record'])
  })

  it('leaves a database that appeared meanwhile as it is (pgi-db refuses: exists)', async () => {
    const g = guest({have: [], appearsOnCreate: ['pgi']})
    expect(await ensureDatabases(g.target, est(['pgi']), {now})).toEqual([{name: 'pgi', outcome: 'existing', loginSeconds: 1.5}])
  })

  it('nothing to create: no create, no health record written; a failed login fails the deploy with the database named', async () => {
    const g = guest({have: ['pgi']})
    await ensureDatabases(g.target, est(['pgi']), {now})
    expect(g.calls.map((c) => c[1] ?? c[0])).toEqual(['list', 'login-check'])
    const bad = guest({have: ['pgi'], loginFails: ['pgi']})
    const err = await ensureDatabases(bad.target, est(['pgi']), {now}).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UserError)
    expect(err).toMatchObject({code: ErrorCode.DB_FAILED})
    expect((err as Error).message).toMatch(/Tryton login failed in pgi \(Tryton refused the login/)
  })
})
