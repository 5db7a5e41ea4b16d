/**
 * The `pgi credentials` commands run in-process (oclif), their stdout/stderr captured: results,
 * exit codes, and — above all — that no secret ever reaches the output of handoff/reencrypt
 * (open is the one command that shows them, to the key's owner).
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {Config} from '@oclif/core'
import {afterAll, afterEach, beforeAll, beforeEach, describe, expect, it} from 'vitest'

import {runCommand, type CommandClass} from '../../helpers/cli.js'

import CredentialsHandoff from '../../../commands/credentials/handoff.js'
import CredentialsList from '../../../commands/credentials/list.js'
import CredentialsOpen from '../../../commands/credentials/open.js'
import CredentialsReencrypt from '../../../commands/credentials/reencrypt.js'
import CredentialsRotate from '../../../commands/credentials/rotate.js'
import {ensureEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {ageKey, twoEstablishmentsInventory} from './fixtures.js'

let config: Config
let tmp: string
const savedEnv = {...process.env}

beforeAll(async () => {
  config = await Config.load({root: process.cwd()})
})
afterAll(() => {
  process.env = savedEnv
})

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-cred-cmd-'))
  process.env = {...savedEnv, PGI_STATE_DIR: join(tmp, 'state'), CI: 'true'}
  delete process.env.PGI_SECRETS_DIR
  delete process.env.PGI_INVENTORY
  delete process.env.PGI_HANDOFF_DIR
  process.exitCode = undefined
})
afterEach(async () => {
  process.exitCode = undefined
  await rm(tmp, {recursive: true, force: true})
})

/** Runs a command in-process and captures everything it writes. */
const runCli = (cmd: CommandClass, argv: string[]) => runCommand(cmd, argv, config)

async function setup() {
  const tech = await ageKey(tmp, 'tech')
  const ci = await ageKey(tmp, 'ci')
  const amiA = await ageKey(tmp, 'ami-a')
  const amiB = await ageKey(tmp, 'ami-b')
  const inv = join(tmp, 'inventory.yaml')
  await writeFile(
    inv,
    twoEstablishmentsInventory({recipients: [{name: 'tech', key: tech.recipient}, {name: 'ci', key: ci.recipient}], amiA: amiA.recipient, amiB: amiB.recipient}),
  )
  const secretsDir = join(tmp, 'secrets')
  const store = await SecretStore.open({dir: secretsDir, recipients: [tech.recipient, ci.recipient]})
  const {secrets} = await ensureEstablishmentSecrets(store, '0130040Y')
  const values = Object.values(secrets).map((s) => s.reveal())
  return {tech, ci, amiA, amiB, inv, secretsDir, store, values, out: join(tmp, 'handoffs')}
}

function expectNoSecret(text: string, values: string[]) {
  for (const v of values) expect(text).not.toContain(v)
}

describe('pgi credentials handoff / open / reencrypt / rotate', () => {
  it('handoff writes what it can, names what is missing, prints no secret; open shows them to the AMI', async () => {
    const s = await setup()
    const common = ['-i', s.inv, '--secrets-dir', s.secretsDir, '--out', s.out]
    const json = await runCli(CredentialsHandoff, ['0130040Y', '0130041Z', ...common, '--json'])
    expect(json.exitCode).toBe(4) // partial: 0130041Z was never deployed
    const env = JSON.parse(json.stdout) as {status: number; result: {written: number; failed: number; establishments: {ok: boolean; uai: string; error?: {code: string; message: string}}[]}}
    expect(env.status).toBe(4)
    expect(env.result.written).toBe(1)
    expect(env.result.establishments[1]).toMatchObject({ok: false, uai: '0130041Z', error: {code: 'PGI_SECRET_MISSING'}})
    expect(env.result.establishments[1].error!.message).toContain('establishments/0130041Z/sql-admin')
    expectNoSecret(json.stdout + json.stderr, s.values)

    const human = await runCli(CredentialsHandoff, ['0130040Y', ...common])
    expect(human.exitCode).toBe(0)
    expect(human.stdout).toContain('0130040Y')
    expect(human.stdout).toContain('age -d -i')
    expectNoSecret(human.stdout + human.stderr, s.values)

    // one establishment, failing: its own error and exit code, not a wrapper
    const one = await runCli(CredentialsHandoff, ['0130041Z', ...common])
    expect(one.exitCode).toBe(1)
    expect(one.stderr).toContain('PGI_SECRET_MISSING')
    expect(one.stderr).toContain('pgi deploy 0130041Z')

    const file = join(s.out, '0130040Y.handoff.age')
    const opened = await runCli(CredentialsOpen, [file, '--identity', s.amiA.file, '--json'])
    expect(opened.exitCode).toBe(0)
    const h = JSON.parse(opened.stdout).result
    expect([h.postgresql.password, h.tryton_admin.password, h.ssh.password].sort()).toEqual([...s.values].sort())
    const table = await runCli(CredentialsOpen, [file, '-k', s.amiA.file])
    expect(table.stdout).toContain('pgi_admin')
    expect(table.stdout).toContain('http://192.0.2.101/')
    const letter = await runCli(CredentialsOpen, [file, '-k', s.amiA.file, '--text'])
    expect(letter.stdout).toContain("Codes d'accès")
    expect(letter.stdout).not.toContain('BEGIN PGI HANDOFF DATA')

    // connection overrides (a lab's loopback forwards): one establishment only
    const both = await runCli(CredentialsHandoff, ['0130040Y', '0130041Z', ...common, '--host', '127.0.0.1'])
    expect(both.exitCode).toBe(2)
    const lab = await runCli(CredentialsHandoff, ['0130040Y', ...common, '--host', '127.0.0.1', '--ssh-port', '10022', '--postgresql-port', '15432', '--jsonrpc-port', '18000', '--web-url', 'http://127.0.0.1:10080/'])
    expect(lab.exitCode).toBe(0)
    const viaLab = JSON.parse((await runCli(CredentialsOpen, [file, '-k', s.amiA.file, '--json'])).stdout).result
    expect(viaLab.ssh).toMatchObject({host: '127.0.0.1', port: 10022})
    expect(viaLab.postgresql).toMatchObject({host: '127.0.0.1', port: 15432})
    expect(viaLab.desktop_client).toMatchObject({host: '127.0.0.1', port: 18000})
    expect(viaLab.web_client.url).toBe('http://127.0.0.1:10080/')
    expect(viaLab.vm.address).toBe('192.0.2.101')

    // list: what exists, what is next — from file names only
    const list = await runCli(CredentialsList, ['-i', s.inv, '--secrets-dir', s.secretsDir, '--out', s.out, '--json'])
    expect(list.exitCode).toBe(0)
    const rows = JSON.parse(list.stdout).result as {uai: string; missing: string[]; handoff?: unknown; next?: string}[]
    expect(rows.map((r) => [r.uai, r.missing.length, Boolean(r.handoff), r.next])).toEqual([
      ['0130040Y', 0, true, undefined],
      ['0130041Z', 3, false, 'pgi deploy 0130041Z'],
    ])
    expectNoSecret(list.stdout + list.stderr, s.values)

    const wrong = await runCli(CredentialsOpen, [file, '-k', s.amiB.file])
    expect(wrong.exitCode).toBe(1)
    expect(wrong.stderr).toContain('PGI_SECRET_DECRYPT')
    expectNoSecret(wrong.stdout + wrong.stderr, s.values)
  })

  it('reencrypt after a technician leaves: the new recipient set can read, the old one cannot', async () => {
    const s = await setup()
    const newTech = await ageKey(tmp, 'new-tech')
    const inv = (await readFile(s.inv, 'utf8')).replace(s.tech.recipient, newTech.recipient)
    await writeFile(s.inv, inv)
    const r = await runCli(CredentialsReencrypt, ['-i', s.inv, '--secrets-dir', s.secretsDir, '--json'])
    expect(r.exitCode).toBe(0)
    const res = JSON.parse(r.stdout).result
    expect(res.reencrypted).toHaveLength(3)
    expect(res.recipients).toBe(3) // new tech, CI, the local identity
    expectNoSecret(r.stdout + r.stderr, s.values)
    const asNew = await SecretStore.open({dir: s.secretsDir, recipients: [], identityFiles: [newTech.file]})
    expect((await asNew.get('establishments/0130040Y/sql-admin')).reveal()).toMatch(/^[A-Za-z2-9]{24}$/)
    const asOld = await SecretStore.open({dir: s.secretsDir, recipients: [], identityFiles: [s.tech.file]})
    await expect(asOld.get('establishments/0130040Y/sql-admin')).rejects.toThrow(/not encrypted to your age key/)
  })

  it('rotate without --yes in CI asks for the flag and changes nothing', async () => {
    const s = await setup()
    const r = await runCli(CredentialsRotate, ['0130040Y', '-i', s.inv, '--secrets-dir', s.secretsDir, '--out', s.out])
    expect(r.exitCode).toBe(2)
    expect(r.stderr).toContain('--yes')
    expect(await s.store.list('establishments/0130040Y/pending/')).toEqual([])
  })

  it('rotate with an unreachable hypervisor fails clearly, leaves nothing pending, prints no secret', async () => {
    const s = await setup()
    // nothing listens on 127.0.0.1:1
    await writeFile(s.inv, (await readFile(s.inv, 'utf8')).replace('https://127.0.0.1:8006', 'https://127.0.0.1:1'))
    const token = '2f1c7a0e-5b7d-4c1e-9a3b-6d8e0f4a2b19'
    process.env.PGI_TOKEN_HV_TEST = token
    const r = await runCli(CredentialsRotate, ['0130040Y', '-i', s.inv, '--secrets-dir', s.secretsDir, '--out', s.out, '--yes', '--json'])
    expect(r.exitCode).not.toBe(0)
    const env = JSON.parse(r.stdout)
    expect(env.error.code).toBe('PGI_UNREACHABLE')
    expect(r.exitCode).toBe(8)
    expect(await s.store.list('establishments/0130040Y/pending/')).toEqual([])
    expectNoSecret(r.stdout + r.stderr, [...s.values, token])
  }, 60_000) // the client retries a refused connection for a while
})
