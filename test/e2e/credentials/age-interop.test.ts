/**
 * Interoperability with the real `age` tool (Debian package `age`): what pgi writes, age reads,
 * and the other way round. This is what the AMI and the technicians will actually run.
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {issueHandoff, openHandoff, parseHandoff} from '../../../src/fleet/handoff.js'
import {ensureEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import {ErrorCode, UserError} from '../../../src/errors.js'
import {requireTools, run} from '../../../src/exec.js'
import type {Establishment} from '../../../src/inventory/types.js'
import {Secret} from '../../../src/secret.js'
import {localIdentity} from '../../../src/secrets/identity.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {establishment} from '../../unit/credentials/fixtures.js'

let tmp: string
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  await requireTools(['age', 'age-keygen'])
  tmp = await mkdtemp(join(tmpdir(), 'pgi-age-e2e-'))
  env = {PGI_STATE_DIR: join(tmp, 'state')}
})
afterAll(async () => {
  await rm(tmp, {recursive: true, force: true})
})

/** A key made by the real age-keygen, as an AMI would. */
async function ageKeygen(name: string): Promise<{file: string; recipient: string}> {
  const file = join(tmp, `${name}.key`)
  await run('age-keygen', ['-o', file])
  const {stdout} = await run('age-keygen', ['-y', file])
  return {file, recipient: stdout.trim()}
}

/** An establishment of the test (the fixtures' one, in another place, with another AMI). */
function est(uai: string, recipient: string): Establishment {
  const source = {file: 'establishments.yaml', line: 1, column: 1}
  return establishment(uai, recipient, {
    name: 'Lycée Frédéric Mistral',
    hypervisor: 'hv-avignon',
    node: 'pve-avi',
    network: {address: '198.51.100.101/24', gateway: '198.51.100.1', dns: ['198.51.100.53']},
    ami: {name: 'Paul Roux', ageRecipient: recipient, login: 'ami'},
    ring: 'pilot',
    databases: [{name: 'pgi', company: 'Lycée', chart: 'fr', currency: 'EUR', source}],
    source,
  })
}

describe('age interoperability', () => {
  it('the AMI decrypts the handoff with `age -d -i`; a wrong key cannot', async () => {
    const ami = await ageKeygen('ami')
    const stranger = await ageKeygen('stranger')
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    const {secrets} = await ensureEstablishmentSecrets(store, '0840004Y')
    const issued = await issueHandoff(est('0840004Y', ami.recipient), {store, outDir: join(tmp, 'out')})

    const {stdout: text} = await run('age', ['-d', '-i', ami.file, issued.file])
    expect(text).toContain("Codes d'accès")
    expect(text).toContain('198.51.100.101')
    for (const s of Object.values(secrets)) expect(text).toContain(s.reveal())
    const doc = parseHandoff(text)
    expect(doc.postgresql.password.reveal()).toBe(secrets.sqlAdmin.reveal())
    expect(doc.ssh.login).toBe('ami')
    // pgi's own reader agrees with age
    expect((await openHandoff(issued.file, [ami.file])).text.trim()).toBe(text.trim())

    const wrong = await run('age', ['-d', '-i', stranger.file, issued.file], {allowFailure: true})
    expect(wrong.exitCode).not.toBe(0)
    expect(wrong.stderr).toMatch(/no identity matched/i)
    expect(wrong.stdout).toBe('')
    const err = await openHandoff(issued.file, [stranger.file]).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as UserError).code).toBe(ErrorCode.SECRET_DECRYPT)
  })

  it('store files are plain age files: age decrypts them, and pgi reads files age wrote', async () => {
    const tech = await ageKeygen('tech')
    const dir = join(tmp, 'store2')
    const store = await SecretStore.open({dir, recipients: [tech.recipient], env})
    await store.put('hypervisors/hv-avignon/token', new Secret('2f1c7a0e-5b7d-4c1e-9a3b-6d8e0f4a2b19'))
    const file = join(dir, 'hypervisors', 'hv-avignon', 'token.age')
    // the technician's key and the local identity both decrypt it with the real tool
    expect((await run('age', ['-d', '-i', tech.file, file])).stdout).toBe('2f1c7a0e-5b7d-4c1e-9a3b-6d8e0f4a2b19')
    expect((await run('age', ['-d', '-i', (await localIdentity(env)).identityFile, file])).stdout).toBe('2f1c7a0e-5b7d-4c1e-9a3b-6d8e0f4a2b19')

    // a secret added by hand with age (armored and binary) is read by the store
    const me = (await localIdentity(env)).recipient
    await mkdir(join(dir, 'image-signing'), {mode: 0o700})
    await run('age', ['-r', me, '-a', '-o', join(dir, 'image-signing', 'ed25519.age')], {input: 'PEM-ARMORED'})
    expect((await store.get('image-signing/ed25519')).reveal()).toBe('PEM-ARMORED')
    await writeFile(join(tmp, 'plain.txt'), 'BINARY-FORM')
    await run('age', ['-r', me, '-o', join(dir, 'hypervisors', 'hv-avignon', 'other.age'), join(tmp, 'plain.txt')])
    expect((await store.get('hypervisors/hv-avignon/other')).reveal()).toBe('BINARY-FORM')
    expect(await store.list('hypervisors/')).toEqual(['hypervisors/hv-avignon/other', 'hypervisors/hv-avignon/token'])

    // the local identity file is in age-keygen's format: age-keygen -y reads it
    const {stdout: pub} = await run('age-keygen', ['-y', (await localIdentity(env)).identityFile])
    expect(pub.trim()).toBe(me)
    expect((await readFile((await localIdentity(env)).identityFile, 'utf8'))).toMatch(/^# created: .*\n# public key: age1/)
  })
})
