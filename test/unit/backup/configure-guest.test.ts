/**
 * configureGuestOffsite (src/backup/offsite.ts) against the image's real pgi-offsite: a guest-agent
 * stand-in runs the command it is given, natively, with the stdin it is given (the data disk a
 * temporary folder), and records both — so the test sees what would reach the VM (the password on
 * stdin only, never in the command) and what the VM would write (0600, checked settings).
 */
import {spawnSync} from 'node:child_process'
import {mkdtemp, readFile, rm, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {configureGuestOffsite, GUEST_OFFSITE} from '../../../src/backup/offsite.js'
import type {GuestTarget} from '../../../src/fleet/guest.js'
import type {OffsiteSettings} from '../../../src/inventory/types.js'
import type {AgentExecResult} from '../../../src/proxmox/types.js'
import {Secret} from '../../../src/secret.js'

const ROOT = resolve(import.meta.dirname, '..', '..', '..')
const FILES = join(ROOT, 'images', 'pgi-tryton', 'files')
let tmp: string
const calls: {command: string[]; inputData?: string}[] = []

function target(): GuestTarget {
  const api = {
    hypervisor: 'hv-test',
    async agentExec(_node: string, _vmid: number, command: string[], opts: {inputData?: string} = {}): Promise<AgentExecResult> {
      calls.push({command, ...(opts.inputData === undefined ? {} : {inputData: opts.inputData})})
      const local = command[0] === GUEST_OFFSITE ? join(FILES, 'usr', 'local', 'sbin', 'pgi-offsite') : command[0]!
      const r = spawnSync('/usr/bin/python3', [local, ...command.slice(1)], {
        input: opts.inputData,
        encoding: 'utf8',
        env: {PATH: process.env.PATH, PGI_DATA: join(tmp, 'data'), PYTHONPATH: join(FILES, 'usr', 'local', 'lib', 'pgi')},
      })
      return {exitcode: r.status ?? 1, stdout: r.stdout, stderr: r.stderr, truncated: false}
    },
  }
  return {api: api as unknown as GuestTarget['api'], node: 'pve1', vmid: 1001, uai: '0130040Y'}
}

function settings(over: Partial<OffsiteSettings> = {}): OffsiteSettings {
  return {repository: 'rest:http://10.0.2.100:8000/{uai}/', regionRepository: '/srv/restic/{uai}', repositories: new Map(), retention: {daily: 7, weekly: 4, monthly: 12}, limitUploadKib: 2048, window: '01:00-06:00', maxAgeS: 48 * 3600, source: {file: 'x.yaml', line: 1, column: 1}, ...over}
}

describe('configureGuestOffsite with the image\'s pgi-offsite', () => {
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'pgi-offsite-conf-'))
  })
  afterAll(async () => {
    await rm(tmp, {recursive: true, force: true})
  })

  it('sends the settings on stdin only; the VM writes them 0600, for its own repository', async () => {
    const pw = new Secret('clé-de-la-région-0130040Y-9f8e7d')
    const r = await configureGuestOffsite(target(), '0130040Y', settings(), pw)
    expect(r).toEqual({repository: 'rest:http://10.0.2.100:8000/0130040Y/'})
    const call = calls.at(-1)!
    expect(call.command).toEqual([GUEST_OFFSITE, '--configure'])
    expect(call.command.join(' ')).not.toContain(pw.reveal())
    const file = join(tmp, 'data', '.pgi', 'offsite.json')
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    expect(JSON.parse(await readFile(file, 'utf8'))).toEqual({repository: 'rest:http://10.0.2.100:8000/0130040Y/', password: pw.reveal(), host: '0130040Y', limit_upload_kib: 2048, window: '01:00-06:00'})
  })

  it('a setting the VM refuses is a typed error naming the establishment, without the password; the file is unchanged', async () => {
    const pw = new Secret('autre-clé-123456')
    const before = await readFile(join(tmp, 'data', '.pgi', 'offsite.json'), 'utf8')
    await expect(configureGuestOffsite(target(), '0130040Y', settings({window: '24:00-06:00'}), pw)).rejects.toMatchObject({
      code: 'PGI_OFFSITE_FAILED',
      message: expect.stringMatching(/0130040Y.*window/),
    })
    const err = await configureGuestOffsite(target(), '0130040Y', settings({window: '24:00-06:00'}), pw).catch((e: Error) => e)
    expect(JSON.stringify({m: (err as Error).message, e: err})).not.toContain('autre-clé')
    expect(await readFile(join(tmp, 'data', '.pgi', 'offsite.json'), 'utf8')).toBe(before)
  })

})
