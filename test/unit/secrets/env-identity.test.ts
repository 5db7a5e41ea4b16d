/**
 * PGI_AGE_SECRET_KEY: the secret store's identity from a (masked) CI variable holding the key
 * itself. Read into memory, never written to a file (no identity file is created), removed from
 * the process environment (programs pgi starts do not inherit it), never in an error.
 */
import {existsSync} from 'node:fs'
import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {inspect} from 'node:util'

import {generateIdentity, identityToRecipient} from 'age-encryption'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {PgiError} from '../../../src/errors.js'
import {Secret} from '../../../src/secret.js'
import {environmentIdentities, IDENTITY_VARIABLE} from '../../../src/secrets/identity.js'
import {SecretStore} from '../../../src/secrets/store.js'

let tmp: string
beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-envid-'))
})
afterEach(async () => {
  delete process.env[IDENTITY_VARIABLE]
  await rm(tmp, {recursive: true, force: true})
})

describe('PGI_AGE_SECRET_KEY', () => {
  it('decrypts the store with the key from the variable and writes no identity file', async () => {
    const key = await generateIdentity()
    const recipient = await identityToRecipient(key)
    const env: NodeJS.ProcessEnv = {PGI_STATE_DIR: join(tmp, 'state'), [IDENTITY_VARIABLE]: `# created by age-keygen\r\n${key}\r\n`}
    const store = await SecretStore.open({dir: join(tmp, 'secrets'), recipients: [], env})
    expect(store.ownRecipients).toEqual([recipient])
    await store.put('a/b', new Secret('s3cret-value'))
    const again = await SecretStore.open({dir: join(tmp, 'secrets'), recipients: [], env: {PGI_STATE_DIR: join(tmp, 'state'), [IDENTITY_VARIABLE]: key}})
    expect((await again.get('a/b')).reveal()).toBe('s3cret-value')
    // the local identity file was neither read nor created
    expect(existsSync(join(tmp, 'state'))).toBe(false)
    expect(await readdir(tmp)).toEqual(['secrets'])
  })

  it('is removed from process.env once read (children of pgi do not inherit it), and kept in memory', async () => {
    const key = await generateIdentity()
    process.env[IDENTITY_VARIABLE] = key
    const ids = await environmentIdentities(process.env)
    expect(process.env[IDENTITY_VARIABLE]).toBeUndefined()
    expect(ids![0]!.recipient).toBe(await identityToRecipient(key))
    expect(await environmentIdentities(process.env)).toBe(ids)
    expect(inspect(ids)).not.toContain(key)
    expect(JSON.stringify(ids)).not.toContain(key)
  })

  it('a bad value is an error naming the variable and the line, never the value', async () => {
    const key = await generateIdentity()
    const bad = key.slice(0, -3) + 'QQQ'
    for (const value of [`AGE-SECRET-KEY-1${'Z'.repeat(10)}`, bad, `/path/to/key.txt`]) {
      const err = await environmentIdentities({[IDENTITY_VARIABLE]: `# comment\n${value}`}).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(err).toBeInstanceOf(PgiError)
      const e = err as PgiError
      expect(e.where).toEqual({variable: IDENTITY_VARIABLE, line: 2})
      const shown = JSON.stringify(e.toJSON()) + e.message + e.suggestions.join(' ')
      expect(shown).not.toContain(value)
      expect(PgiError.formatWhere(e.where)).toBe(`$${IDENTITY_VARIABLE} line 2`)
    }
  })

  it('unset or empty: the local identity file is used as before', async () => {
    expect(await environmentIdentities({[IDENTITY_VARIABLE]: '  '})).toBeUndefined()
    const env = {PGI_STATE_DIR: join(tmp, 'state')}
    await SecretStore.open({dir: join(tmp, 'secrets'), recipients: [], env})
    expect(existsSync(join(tmp, 'state', 'age-identity.txt'))).toBe(true)
  })
})
