import {mkdtemp, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {
  buildHandoff,
  handoffDatabases,
  handoffToJson,
  issueHandoff,
  openHandoff,
  parseHandoff,
  readTrytonSeries,
  recordHostKeyFingerprints,
  recordTrytonSeries,
  renderHandoff,
} from '../../../src/fleet/handoff.js'
import {
  ensureEstablishmentSecrets,
  establishmentSecretKey,
  guestConfigureInput,
  readEstablishmentSecrets,
} from '../../../src/fleet/secrets.js'
import {ErrorCode, UserError} from '../../../src/errors.js'
import {Secret} from '../../../src/secret.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {ageKey, establishment} from './fixtures.js'

let tmp: string
let env: NodeJS.ProcessEnv

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-handoff-'))
  env = {PGI_STATE_DIR: join(tmp, 'state')}
})
afterEach(async () => {
  await rm(tmp, {recursive: true, force: true})
})

async function rejection(p: Promise<unknown>): Promise<UserError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  )
  expect(e).toBeInstanceOf(UserError)
  return e as UserError
}

describe('establishment secrets', () => {
  it('ensureEstablishmentSecrets generates the missing ones once, never replaces existing ones', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await store.put(establishmentSecretKey('0130040Y', 'tryton-admin'), new Secret('kept-tryton-password-xyz'))
    const a = await ensureEstablishmentSecrets(store, '0130040Y')
    expect(a.generated).toEqual(['sql-admin', 'ami-password'])
    expect(a.secrets.trytonAdmin.reveal()).toBe('kept-tryton-password-xyz')
    expect(a.secrets.sqlAdmin.reveal()).toHaveLength(24)
    const b = await ensureEstablishmentSecrets(store, '0130040Y')
    expect(b.generated).toEqual([])
    expect(b.secrets.sqlAdmin.reveal()).toBe(a.secrets.sqlAdmin.reveal())
    expect(await store.list()).toEqual([
      'establishments/0130040Y/ami-password',
      'establishments/0130040Y/sql-admin',
      'establishments/0130040Y/tryton-admin',
    ])
  })

  it('readEstablishmentSecrets names the missing secret and suggests pgi deploy', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await store.put(establishmentSecretKey('0130040Y', 'sql-admin'), new Secret('x'.repeat(24)))
    const err = await rejection(readEstablishmentSecrets(store, '0130040Y'))
    expect(err.code).toBe(ErrorCode.SECRET_MISSING)
    expect(err.message).toContain('establishments/0130040Y/tryton-admin')
    expect(err.suggestions[0]).toContain('pgi deploy 0130040Y')
  })

  it('guestConfigureInput follows the guest contract', () => {
    const input = JSON.parse(guestConfigureInput({sqlAdmin: new Secret('s'), trytonAdmin: new Secret('t'), amiPassword: new Secret('a')}, 'ami'))
    expect(input).toEqual({
      sql_admin: {login: 'pgi_admin', password: 's'},
      tryton_admin: {login: 'admin', password: 't'},
      ami: {login: 'ami', password: 'a'},
    })
    expect(JSON.parse(guestConfigureInput({amiPassword: new Secret('a')}, 'jpetit'))).toEqual({ami: {login: 'jpetit', password: 'a'}})
  })
})

describe('handoff document', () => {
  const secrets = {sqlAdmin: new Secret('SqlPw2345abcdefghijkmnpq'), trytonAdmin: new Secret('TrytonPw345abcdefghijkmn'), amiPassword: new Secret('AmiPw2345abcdefghijkmnpq')}

  it('holds every access, in French, and round-trips through its data block', () => {
    const est = establishment('0130040Y', 'age1unused')
    const doc = buildHandoff(est, secrets, {sshHostKeyFingerprints: ['ED25519 SHA256:abc'], now: new Date('2026-11-22T07:00:00Z'), issuedBy: 'pgi 0.1.0'})
    const text = renderHandoff(doc)
    for (const s of [
      'Lycée Georges Colomb (UAI 0130040Y)',
      'Adresse IP            : 192.0.2.101',
      'ssh ami@192.0.2.101',
      'Mot de passe          : AmiPw2345abcdefghijkmnpq',
      'ED25519 SHA256:abc',
      'Identifiant           : pgi_admin',
      'Mot de passe          : SqlPw2345abcdefghijkmnpq',
      'port 5432',
      'Identifiant           : admin',
      'TrytonPw345abcdefghijkmn',
      'http://192.0.2.101/',
      'Serveur               : 192.0.2.101:8000',
      'host = 192.0.2.101:8000',
      'Changer le mot de passe',
      'À quoi ça sert',
      '2026-11-22 07:00:00 UTC',
    ]) {
      expect(text).toContain(s)
    }
    const back = parseHandoff(text)
    expect(handoffToJson(back)).toEqual(handoffToJson(doc))
    expect(handoffToJson(doc).desktop_client).toEqual({client: 'Tryton 6.0', host: '192.0.2.101', port: 8000, database: 'pgi', username: 'admin'})
    // the document object itself never prints a password
    expect(JSON.stringify(doc)).not.toContain('SqlPw')
  })

  it('uses the connection overrides (a lab forwarding ports on loopback)', () => {
    const est = establishment('0130040Y', 'age1unused')
    const doc = buildHandoff(est, secrets, {connection: {host: '127.0.0.1', sshPort: 22001, postgresqlPort: 54001, jsonrpcPort: 18001, webPort: 8081, database: 'lycee'}})
    const j = handoffToJson(doc)
    expect(j.vm.address).toBe('192.0.2.101')
    expect(j.ssh).toMatchObject({host: '127.0.0.1', port: 22001})
    expect(j.postgresql).toMatchObject({host: '127.0.0.1', port: 54001})
    expect(j.web_client.url).toBe('http://127.0.0.1:8081/')
    expect(j.desktop_client).toMatchObject({host: '127.0.0.1', port: 18001, database: 'lycee'})
    expect(renderHandoff(doc)).toContain('ssh -p 22001 ami@127.0.0.1')
  })

  it('lists the databases the VM has (read from it), with their company; names the desktop profile\'s database after them', () => {
    const est = establishment('0130040Y', 'age1unused')
    const doc = buildHandoff(est, secrets, {databases: [{name: 'bts_cg', company: 'Colomb SARL'}, {name: 'pgi', company: 'Lycée Georges Colomb'}]})
    const text = renderHandoff(doc)
    expect(text).toContain('Bases de données      : « bts_cg » (société Colomb SARL)\n                           « pgi » (société Lycée Georges Colomb)')
    expect(doc.desktopClient.database).toBe('pgi')
    const back = parseHandoff(text)
    expect(back.databases).toEqual([{name: 'bts_cg', company: 'Colomb SARL'}, {name: 'pgi', company: 'Lycée Georges Colomb'}])
    expect(handoffToJson(back)).toEqual(handoffToJson(doc))
    // a server without pgi: the profile names a database it has
    expect(buildHandoff(est, secrets, {databases: [{name: 'cours', company: null}]}).desktopClient.database).toBe('cours')
    // none at all: said so, not a database that does not exist
    const none = renderHandoff(buildHandoff(est, secrets, {databases: []}))
    expect(none).toContain('Bases de données      : aucune sur le serveur')
    // not read (the VM could not be asked): the default name, no list claimed
    const unknown = buildHandoff(est, secrets)
    expect(unknown.databases).toBeUndefined()
    expect(renderHandoff(unknown)).toContain('Base de données       : pgi')
  })

  it('takes the databases from pgi-db list: Tryton ones, class databases left out', () => {
    const list = [
      {name: 'pgi', size: 1, tryton: true, modules: [], kind: 'create', class: null, company: 'Lycée', last_backup: null},
      {name: 'bts1_jean_dupont', size: 1, tryton: true, modules: [], kind: 'class-student', class: 'BTS1', company: 'Lycée', last_backup: null},
      {name: 'bts1', size: 1, tryton: true, modules: [], kind: 'class-shared', class: 'BTS1', company: 'Lycée', last_backup: null},
      {name: 'autre', size: 1, tryton: false, modules: [], kind: null, class: null, last_backup: null},
      {name: 'ancienne', size: 1, tryton: true, modules: [], kind: null, class: null, company: null, last_backup: null},
    ]
    expect(handoffDatabases(list)).toEqual([
      {name: 'pgi', company: 'Lycée'},
      {name: 'ancienne', company: null},
    ])
  })

  it('rejects text that is not a handoff', () => {
    expect(() => parseHandoff('hello')).toThrow(UserError)
    expect(() => parseHandoff('-----BEGIN PGI HANDOFF DATA-----\n{"format":"other"}\n-----END PGI HANDOFF DATA-----')).toThrow(/unknown format/)
  })
})

describe('issueHandoff / openHandoff', () => {
  it('only the AMI key opens it; technicians and a wrong AMI key cannot', async () => {
    const ami = await ageKey(tmp, 'ami')
    const other = await ageKey(tmp, 'other-ami')
    const tech = await ageKey(tmp, 'tech')
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [tech.recipient], env})
    const {secrets} = await ensureEstablishmentSecrets(store, '0130040Y')
    await recordHostKeyFingerprints(store, '0130040Y', ['ED25519 SHA256:recorded'])
    const est = establishment('0130040Y', ami.recipient)
    const out = join(tmp, 'handoffs')
    const issued = await issueHandoff(est, {store, outDir: out})
    expect(issued).toMatchObject({uai: '0130040Y', file: join(out, '0130040Y.handoff.age'), recipient: ami.recipient, ami: 'Jeanne Petit', address: '192.0.2.101'})
    expect((await stat(issued.file)).mode & 0o777).toBe(0o600)
    const raw = await readFile(issued.file, 'utf8')
    expect(raw.startsWith('-----BEGIN AGE ENCRYPTED FILE-----')).toBe(true)
    for (const s of Object.values(secrets)) expect(raw).not.toContain(s.reveal())
    expect(JSON.stringify(issued)).not.toMatch(new RegExp(Object.values(secrets).map((s) => s.reveal()).join('|')))

    const {document, text} = await openHandoff(issued.file, [ami.file])
    expect(document.postgresql.password.reveal()).toBe(secrets.sqlAdmin.reveal())
    expect(document.trytonAdmin.password.reveal()).toBe(secrets.trytonAdmin.reveal())
    expect(document.ssh.password.reveal()).toBe(secrets.amiPassword.reveal())
    expect(document.ssh.hostKeyFingerprints).toEqual(['ED25519 SHA256:recorded'])
    expect(text).toContain('Codes d\'accès')

    const localKey = {file: join(tmp, 'state', 'age-identity.txt')} // the store's own identity, created by open()
    for (const wrong of [other, tech, localKey]) {
      const err = await rejection(openHandoff(issued.file, [wrong.file]))
      expect(err.code).toBe(ErrorCode.SECRET_DECRYPT)
      expect(err.message).toContain('not encrypted to the given key')
    }
  })

  it('names the desktop client of the Tryton series recorded for the VM (7.0 on the 2.x image line; 6.0 when none was)', async () => {
    const ami = await ageKey(tmp, 'ami')
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await ensureEstablishmentSecrets(store, '0130040Y')
    const est = establishment('0130040Y', ami.recipient)
    const out = join(tmp, 'handoffs')
    const before = await openHandoff((await issueHandoff(est, {store, outDir: out})).file, [ami.file])
    expect(before.document.desktopClient.client).toBe('Tryton 6.0')
    expect(before.text).toContain('~/.config/tryton/6.0/profiles.cfg')
    await recordTrytonSeries(store, '0130040Y', '7.0')
    expect(await readTrytonSeries(store, '0130040Y')).toBe('7.0')
    const after = await openHandoff((await issueHandoff(est, {store, outDir: out})).file, [ami.file])
    expect(after.document.desktopClient.client).toBe('Tryton 7.0')
    expect(after.text).toContain('Installez le client Tryton en version 7.0')
    expect(after.text).toContain('~/.config/tryton/7.0/profiles.cfg')
    expect(after.text).not.toContain('6.0')
    await expect(recordTrytonSeries(store, '0130040Y', '7.0.30-1')).rejects.toThrow(/not a Tryton series/)
  })

  it('fails clearly when a secret is missing, the AMI key is invalid, or a rotation is pending', async () => {
    const ami = await ageKey(tmp, 'ami')
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    const out = join(tmp, 'handoffs')
    let err = await rejection(issueHandoff(establishment('0130040Y', ami.recipient), {store, outDir: out}))
    expect(err.code).toBe(ErrorCode.SECRET_MISSING)
    expect(err.suggestions.join(' ')).toContain('pgi deploy 0130040Y')
    await ensureEstablishmentSecrets(store, '0130040Y')
    err = await rejection(issueHandoff(establishment('0130040Y', 'age1bogus'), {store, outDir: out}))
    expect(err.code).toBe(ErrorCode.INVENTORY_INVALID)
    expect(err.where).toMatchObject({file: 'inventory/establishments.yaml', line: 3, uai: '0130040Y'})
    await store.put(establishmentSecretKey('0130040Y', 'sql-admin', {pending: true}), new Secret('p'.repeat(24)))
    err = await rejection(issueHandoff(establishment('0130040Y', ami.recipient), {store, outDir: out}))
    expect(err.code).toBe(ErrorCode.ROTATION_PENDING)
    expect(err.suggestions[0]).toContain('pgi credentials rotate 0130040Y')
  })

  it('open reports a damaged or foreign file', async () => {
    const ami = await ageKey(tmp, 'ami')
    const f = join(tmp, 'x.handoff.age')
    await writeFile(f, 'garbage')
    expect((await rejection(openHandoff(f, [ami.file]))).code).toBe(ErrorCode.SECRET_DECRYPT)
    expect((await rejection(openHandoff(join(tmp, 'absent.age'), [ami.file]))).code).toBe(ErrorCode.HANDOFF_INVALID)
  })
})

describe('ensureEstablishmentSecrets during a rotation', () => {
  it('refuses while pending secrets exist (it would undo half a rotation)', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await ensureEstablishmentSecrets(store, '0130040Y')
    await store.put(establishmentSecretKey('0130040Y', 'ami-password', {pending: true}), new Secret('p'.repeat(24)))
    const err = await rejection(ensureEstablishmentSecrets(store, '0130040Y'))
    expect(err.code).toBe(ErrorCode.ROTATION_PENDING)
    expect(err.suggestions[0]).toContain('pgi credentials rotate 0130040Y')
  })
})

describe('openInventoryStore', () => {
  it('warns when nobody is listed, or when this machine key is not', async () => {
    const {openInventoryStore} = await import('../../../src/fleet/open.js')
    const {MemoryIo} = await import('../../../src/io.js')
    const other = await ageKey(tmp, 'other')
    let io = new MemoryIo()
    await openInventoryStore({recipients: []}, join(tmp, 'store'), env, io)
    expect(io.warnings.join('\n')).toContain('lists no recipients')
    io = new MemoryIo()
    await openInventoryStore({recipients: [{name: 'other', key: other.recipient}]}, join(tmp, 'store'), env, io)
    expect(io.warnings.join('\n')).toContain('is not in the inventory')
    io = new MemoryIo()
    const {localIdentity} = await import('../../../src/secrets/identity.js')
    await openInventoryStore({recipients: [{name: 'me', key: (await localIdentity(env)).recipient}]}, join(tmp, 'store'), env, io)
    expect(io.warnings).toEqual([])
  })
})
