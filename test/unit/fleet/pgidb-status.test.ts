/**
 * How the host reads pgi-db's exit statuses (src/fleet/pgidb.ts): each status the engine documents
 * becomes pgi's error code and exit code, with pgi-db's own message, the VM named, and what to do
 * next. The guest agent is replaced by a function returning what pgi-db printed: the mapping is
 * the subject here; the real engine's statuses are tested in the image's own suite (test_pgidb.py,
 * exit 130 included) and through the CLI in test/unit/db/cli.test.ts.
 */
import {describe, expect, it} from 'vitest'

import {UserError} from '../../../src/errors.js'
import {runPgiDb, type GuestTarget} from '../../../src/fleet/pgidb.js'
import type {PveApi} from '../../../src/proxmox/types.js'

function target(exitcode: number, error: {code: string; message: string}): GuestTarget {
  const api = {
    hypervisor: 'pve-test',
    agentExec: async () => ({exitcode, stdout: JSON.stringify({error}) + '\n', stderr: ''}),
  } as unknown as PveApi
  return {api, node: 'pve1', vmid: 2101, uai: '0750001A'}
}

async function failure(t: GuestTarget): Promise<UserError> {
  const e = await runPgiDb(t, ['class', 'modele', '-']).then(
    () => undefined,
    (err: unknown) => err,
  )
  expect(e).toBeInstanceOf(UserError)
  return e as UserError
}

describe('pgi-db exit statuses on the host', () => {
  it('130 (stopped in the VM, what it began undone): PGI_DB_INTERRUPTED, exit 1, says it was stopped and what to do', async () => {
    const e = await failure(target(130, {code: 'interrupted', message: 'interrupted'}))
    expect(e.code).toBe('PGI_DB_INTERRUPTED')
    expect(e.exitCode).toBe(1)
    expect(e.message).toBe('pgi-db class was stopped in VM 2101: interrupted')
    expect(e.where).toMatchObject({uai: '0750001A', hypervisor: 'pve-test', node: 'pve1', vmid: 2101})
    expect(e.suggestions.join(' ')).toMatch(/pgi status UAI.*run the command again/)
  })

  it('a refusal keeps its own code and exit (busy: 7), an unknown status is a failure (1) naming it', async () => {
    const busy = await failure(target(7, {code: 'busy', message: 'modele is in use by class 2B'}))
    expect([busy.code, busy.exitCode, busy.message]).toEqual(['PGI_DB_BUSY', 7, 'pgi-db class refused in VM 2101: modele is in use by class 2B'])
    const other = await failure(target(1, {code: 'failed', message: 'psql: boom'}))
    expect([other.code, other.exitCode]).toEqual(['PGI_DB_FAILED', 1])
    expect(other.message).toMatch(/failed in VM 2101 \(exit 1\): psql: boom/)
  })
})
