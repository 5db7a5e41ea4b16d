import {mkdtemp, readdir, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {inspect} from 'node:util'

import {armor, Encrypter, generateIdentity, identityToRecipient} from 'age-encryption'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {ErrorCode, UserError} from '../../../src/errors.js'
import {Secret} from '../../../src/secret.js'
import {localIdentity, readIdentityFile} from '../../../src/secrets/identity.js'
import {
  generatePassword,
  MIN_PASSWORD_LENGTH,
  PASSWORD_ALPHABET,
  resolveSecretRef,
  SecretStore,
  validateSecretKey,
} from '../../../src/secrets/store.js'

let tmp: string
let env: NodeJS.ProcessEnv

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-secrets-'))
  env = {PGI_STATE_DIR: join(tmp, 'state')}
})
afterEach(async () => {
  await rm(tmp, {recursive: true, force: true})
})

async function keyFile(name: string): Promise<{file: string; recipient: string}> {
  const id = await generateIdentity()
  const file = join(tmp, `${name}.key`)
  await writeFile(file, `# test key ${name}\n${id}\n`, {mode: 0o600})
  return {file, recipient: await identityToRecipient(id)}
}

async function expectCode(p: Promise<unknown>, code: string): Promise<UserError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(UserError)
  expect((err as UserError).code).toBe(code)
  return err as UserError
}

describe('localIdentity', () => {
  it('creates <stateDir>/age-identity.txt with mode 0600 once, then reuses it', async () => {
    const a = await localIdentity(env)
    expect(a.identityFile).toBe(join(tmp, 'state', 'age-identity.txt'))
    expect(a.recipient).toMatch(/^age1[a-z0-9]{58}$/)
    expect((await stat(a.identityFile)).mode & 0o777).toBe(0o600)
    const b = await localIdentity(env)
    expect(b).toEqual(a)
    const [loaded] = await readIdentityFile(a.identityFile)
    expect(loaded.recipient).toBe(a.recipient)
    expect(String(loaded.identity)).toBe('[secret]')
  })

  it('uses PGI_AGE_IDENTITY when set', async () => {
    const k = await keyFile('ci')
    const a = await localIdentity({...env, PGI_AGE_IDENTITY: k.file})
    expect(a).toEqual({identityFile: k.file, recipient: k.recipient})
  })

  it('concurrent first uses agree on one key', async () => {
    const all = await Promise.all(Array.from({length: 8}, () => localIdentity(env)))
    expect(new Set(all.map((x) => x.recipient)).size).toBe(1)
  })

  it('rejects a file that is not an age identity', async () => {
    const f = join(tmp, 'bad.key')
    await writeFile(f, 'ssh-ed25519 AAAA nope\n')
    await expectCode(readIdentityFile(f), ErrorCode.SECRET_DECRYPT)
    await expectCode(readIdentityFile(join(tmp, 'absent.key')), ErrorCode.SECRET_DECRYPT)
  })
})

describe('SecretStore', () => {
  it('round-trips secrets; files are armored age, mode 0600, folders 0700, encrypted to every recipient', async () => {
    const tech = await keyFile('tech')
    const ci = await keyFile('ci')
    const dir = join(tmp, 'store')
    const store = await SecretStore.open({dir, recipients: [tech.recipient, ci.recipient], env})
    const pw = generatePassword()
    await store.put('establishments/0130040Y/sql-admin', pw)
    const file = join(dir, 'establishments', '0130040Y', 'sql-admin.age')
    const raw = await readFile(file, 'utf8')
    expect(raw.startsWith('-----BEGIN AGE ENCRYPTED FILE-----')).toBe(true)
    expect(raw).not.toContain(pw.reveal())
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
    expect((await stat(join(dir, 'establishments'))).mode & 0o777).toBe(0o700)
    expect((await stat(join(dir, 'establishments', '0130040Y'))).mode & 0o777).toBe(0o700)

    expect((await store.get('establishments/0130040Y/sql-admin')).reveal()).toBe(pw.reveal())
    // three recipients: tech, CI and the local identity; each can read the file on its own
    expect(store.recipients).toHaveLength(3)
    for (const k of [tech, ci]) {
      const asThem = await SecretStore.open({dir, recipients: [], identityFiles: [k.file], env})
      expect((await asThem.get('establishments/0130040Y/sql-admin')).reveal()).toBe(pw.reveal())
    }
    expect(await store.has('establishments/0130040Y/sql-admin')).toBe(true)
    expect(await store.has('establishments/0130040Y/tryton-admin')).toBe(false)
    expect(await store.tryGet('establishments/0130040Y/tryton-admin')).toBeUndefined()
  })

  it('overwrites, lists (sorted, by prefix, ignoring foreign files) and deletes', async () => {
    const dir = join(tmp, 'store')
    const store = await SecretStore.open({dir, recipients: [], env})
    await store.put('hypervisors/hv-nord/token', new Secret('t1'))
    await store.put('establishments/0130040Y/sql-admin', new Secret('a'))
    await store.put('establishments/0130040Y/sql-admin', new Secret('b'))
    await store.put('establishments/0130041Z/sql-admin', new Secret('c'))
    await writeFile(join(dir, 'README.md'), 'not a secret')
    await writeFile(join(dir, '.deadbeef.tmp'), 'left by a crash')
    expect(await store.list()).toEqual(['establishments/0130040Y/sql-admin', 'establishments/0130041Z/sql-admin', 'hypervisors/hv-nord/token'])
    expect(await store.list('establishments/0130040Y/')).toEqual(['establishments/0130040Y/sql-admin'])
    // a prefix ending mid-name, a folder that does not exist, a prefix that would leave the store
    expect(await store.list('establishments/0130041')).toEqual(['establishments/0130041Z/sql-admin'])
    expect(await store.list('establishments/0130040Y/pending/')).toEqual([])
    expect(await store.list('../establishments/')).toEqual([])
    expect(await store.list('hypervisors/hv-nord/tok')).toEqual(['hypervisors/hv-nord/token'])
    expect((await store.get('establishments/0130040Y/sql-admin')).reveal()).toBe('b')
    expect(await store.delete('establishments/0130041Z/sql-admin')).toBe(true)
    expect(await store.delete('establishments/0130041Z/sql-admin')).toBe(false)
    expect(await readdir(join(dir, 'establishments'))).toEqual(['0130040Y'])
    expect(await SecretStore.open({dir: join(tmp, 'nowhere'), recipients: [], env}).then((s) => s.list())).toEqual([])
  })

  it('get of a missing key is SECRET_MISSING with a next step', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    const err = await expectCode(store.get('establishments/0130040Y/tryton-admin'), ErrorCode.SECRET_MISSING)
    expect(err.suggestions.join(' ')).toContain('pgi deploy 0130040Y')
  })

  it('a file encrypted to someone else is SECRET_DECRYPT suggesting reencrypt', async () => {
    const other = await keyFile('other')
    const dir = join(tmp, 'store')
    const theirs = await SecretStore.open({dir, recipients: [], identityFiles: [other.file], env})
    await theirs.put('image-signing/ed25519', new Secret('PRIVATE'))
    const mine = await SecretStore.open({dir, recipients: [other.recipient], env})
    const err = await expectCode(mine.get('image-signing/ed25519'), ErrorCode.SECRET_DECRYPT)
    expect(err.message).toContain('not encrypted to your age key')
    expect(err.suggestions.join(' ')).toContain('pgi credentials reencrypt')
    expect(err.suggestions.join(' ')).toContain((await localIdentity(env)).recipient)
    // a damaged file is SECRET_DECRYPT too, with another suggestion
    await writeFile(join(dir, 'image-signing', 'ed25519.age'), '-----BEGIN AGE ENCRYPTED FILE-----\nAAAA\n-----END AGE ENCRYPTED FILE-----\n')
    await expectCode(theirs.get('image-signing/ed25519'), ErrorCode.SECRET_DECRYPT)
  })

  it('reads binary (non-armored) files written by the age tool format', async () => {
    const dir = join(tmp, 'store')
    const store = await SecretStore.open({dir, recipients: [], env})
    const e = new Encrypter()
    e.addRecipient((await localIdentity(env)).recipient)
    await store.put('x/y', new Secret('placeholder'))
    await writeFile(join(dir, 'x', 'y.age'), await e.encrypt('binary-ok'))
    expect((await store.get('x/y')).reveal()).toBe('binary-ok')
    // and armored text decodes with the library's own decoder
    expect(armor.decode(armor.encode(new Uint8Array([1, 2, 3])))).toEqual(new Uint8Array([1, 2, 3]))
  })

  it('reencrypt moves every file to the current recipients (a technician joins, another leaves)', async () => {
    const alice = await keyFile('alice')
    const bob = await keyFile('bob')
    const dir = join(tmp, 'store')
    const before = await SecretStore.open({dir, recipients: [alice.recipient], env})
    await before.put('establishments/0130040Y/sql-admin', new Secret('s1'))
    await before.put('hypervisors/hv-nord/token', new Secret('s2'))
    const asBob = () => SecretStore.open({dir, recipients: [], identityFiles: [bob.file], env})
    await expectCode((await asBob()).get('hypervisors/hv-nord/token'), ErrorCode.SECRET_DECRYPT)

    const after = await SecretStore.open({dir, recipients: [bob.recipient], env}) // alice left, bob joined
    const r = await after.reencrypt()
    expect(r).toEqual({reencrypted: ['establishments/0130040Y/sql-admin', 'hypervisors/hv-nord/token'], failed: [], recipients: 2})
    expect((await (await asBob()).get('hypervisors/hv-nord/token')).reveal()).toBe('s2')
    const asAlice = await SecretStore.open({dir, recipients: [], identityFiles: [alice.file], env})
    await expectCode(asAlice.get('hypervisors/hv-nord/token'), ErrorCode.SECRET_DECRYPT)

    // a file we cannot read is reported and left untouched
    const stranger = await keyFile('stranger')
    const theirs = await SecretStore.open({dir, recipients: [], identityFiles: [stranger.file], env})
    await theirs.put('foreign/key', new Secret('s3'))
    const foreignBefore = await readFile(join(dir, 'foreign', 'key.age'), 'utf8')
    const r2 = await after.reencrypt()
    expect(r2.failed.map((f) => [f.key, f.code])).toEqual([['foreign/key', ErrorCode.SECRET_DECRYPT]])
    expect(r2.reencrypted).toHaveLength(2)
    expect(await readFile(join(dir, 'foreign', 'key.age'), 'utf8')).toBe(foreignBefore)
  })

  it('a crash between writing the temp file and the rename leaves the old value whole', async () => {
    const dir = join(tmp, 'store')
    const store = await SecretStore.open({dir, recipients: [], env})
    await store.put('establishments/0130040Y/sql-admin', new Secret('old'))
    let reached!: () => void
    const atRename = new Promise<void>((r) => (reached = r))
    let tmpSeen = ''
    // The "crashing" store freezes forever just before its rename, as a killed process would.
    const crashing = await SecretStore.open({
      dir,
      recipients: [],
      env,
      beforeRename: (t) => {
        tmpSeen = t
        reached()
        return new Promise<void>(() => undefined)
      },
    })
    void crashing.put('establishments/0130040Y/sql-admin', new Secret('new'))
    void crashing.put('establishments/0130040Y/tryton-admin', new Secret('new'))
    await atRename
    // the temp file is complete on disk, private, hidden from list(); the target is untouched
    expect((await stat(tmpSeen)).mode & 0o777).toBe(0o600)
    const fresh = await SecretStore.open({dir, recipients: [], env}) // "after the restart"
    expect((await fresh.get('establishments/0130040Y/sql-admin')).reveal()).toBe('old')
    expect(await fresh.has('establishments/0130040Y/tryton-admin')).toBe(false)
    expect(await fresh.list()).toEqual(['establishments/0130040Y/sql-admin'])
    await fresh.put('establishments/0130040Y/sql-admin', new Secret('after'))
    expect((await fresh.get('establishments/0130040Y/sql-admin')).reveal()).toBe('after')
  })

  it('a failing write removes its temp file and keeps the old value', async () => {
    const dir = join(tmp, 'store')
    const store = await SecretStore.open({
      dir,
      recipients: [],
      env,
      beforeRename: () => {
        throw new Error('disk full')
      },
    })
    await expect(store.put('a/b', new Secret('v'))).rejects.toThrow('disk full')
    expect(await readdir(join(dir, 'a'))).toEqual([])
  })

  it('validates key names (no "..", no absolute paths)', async () => {
    for (const bad of ['', '/etc/passwd', '../x', 'a/../b', 'a//b', 'a/./b', 'a\\b', '.hidden', 'a/.b', 'C:/x', 'a/b.tmp', 'a b', 'x'.repeat(201)]) {
      expect(() => validateSecretKey(bad), bad).toThrow(UserError)
    }
    for (const ok of ['establishments/0130040Y/sql-admin', 'hypervisors/hv-nord/token', 'image-signing/ed25519', 'establishments/0130040Y/pending/ami-password']) {
      expect(() => validateSecretKey(ok)).not.toThrow()
    }
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await expectCode(store.put('../escape', new Secret('x')), ErrorCode.SECRET_KEY_INVALID)
    await expectCode(store.get('/etc/shadow'), ErrorCode.SECRET_KEY_INVALID)
    await expect(stat(join(tmp, 'escape.age'))).rejects.toThrow()
  })

  it('rejects an invalid recipient', async () => {
    await expectCode(SecretStore.open({dir: join(tmp, 's'), recipients: ['age1notakey'], env}), ErrorCode.SECRET_DECRYPT)
  })
})

describe('resolveSecretRef', () => {
  it('reads an env var, or names the unset variable', async () => {
    const s = await resolveSecretRef({env: 'PVE_TOKEN_HV_NORD'}, undefined, {PVE_TOKEN_HV_NORD: 'tok'})
    expect(s).toBeInstanceOf(Secret)
    expect(s.reveal()).toBe('tok')
    const err = await expectCode(resolveSecretRef({env: 'PVE_TOKEN_HV_SUD'}, undefined, {}), ErrorCode.SECRET_MISSING)
    expect(err.message).toContain('PVE_TOKEN_HV_SUD')
    await expectCode(resolveSecretRef({env: 'EMPTY'}, undefined, {EMPTY: ''}), ErrorCode.SECRET_MISSING)
  })

  it('reads the store, and says when no store is open', async () => {
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    await store.put('hypervisors/hv-nord/token', new Secret('from-store'))
    expect((await resolveSecretRef({store: 'hypervisors/hv-nord/token'}, store, {})).reveal()).toBe('from-store')
    await expectCode(resolveSecretRef({store: 'hypervisors/hv-sud/token'}, store, {}), ErrorCode.SECRET_MISSING)
    await expectCode(resolveSecretRef({store: 'hypervisors/hv-nord/token'}, undefined, {}), ErrorCode.SECRET_MISSING)
  })
})

describe('generatePassword', () => {
  it('gives ≥128 bits from the unambiguous alphabet, never printable by accident', () => {
    expect(MIN_PASSWORD_LENGTH).toBe(23)
    expect(PASSWORD_ALPHABET).not.toMatch(/[0O1lIo]/)
    const seen = new Set<string>()
    const counts = new Map<string, number>()
    for (let i = 0; i < 400; i++) {
      const p = generatePassword()
      expect(String(p)).toBe('[secret]')
      expect(JSON.stringify({p})).toBe('{"p":"[secret]"}')
      expect(inspect(p)).toBe('[secret]')
      const v = p.reveal()
      expect(v).toHaveLength(24)
      expect([...v].every((c) => PASSWORD_ALPHABET.includes(c))).toBe(true)
      seen.add(v)
      for (const c of v) counts.set(c, (counts.get(c) ?? 0) + 1)
    }
    expect(seen.size).toBe(400)
    // 9600 draws over 56 symbols: every symbol appears (expected ~171 each)
    expect(counts.size).toBe(PASSWORD_ALPHABET.length)
    expect(generatePassword(40).reveal()).toHaveLength(40)
    expect(() => generatePassword(16)).toThrow()
  })
})
