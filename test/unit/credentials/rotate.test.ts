import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {openHandoff} from '../../../src/fleet/handoff.js'
import {establishmentLockFile} from '../../../src/fleet/locks.js'
import {pendingSecrets, rotateEstablishmentSecrets, type RotateOptions, type RotateStep} from '../../../src/credentials/rotate.js'
import {ensureEstablishmentSecrets, establishmentSecretKey, guestConfigureInput, readEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import {ErrorCode, UserError} from '../../../src/errors.js'
import {MemoryIo} from '../../../src/io.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {asPveApi, FakeGuestPveApi} from './fake-guest-pve.js'
import {ageKey, establishment} from './fixtures.js'

let tmp: string
let env: NodeJS.ProcessEnv

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-rotate-'))
  env = {PGI_STATE_DIR: join(tmp, 'state')}
})
afterEach(async () => {
  await rm(tmp, {recursive: true, force: true})
})

class Interrupted extends Error {}

/** Locks live under the test's own state dir. */
const rotate = (o: RotateOptions) => rotateEstablishmentSecrets({env, ...o})

/** A deployed establishment: secrets in the store and the same ones in the (fake) guest. */
async function deployed() {
  const ami = await ageKey(tmp, 'ami')
  const est = establishment('0130040Y', ami.recipient)
  const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
  const fake = new FakeGuestPveApi(est.node, est.vmid)
  const {secrets} = await ensureEstablishmentSecrets(store, est.uai)
  await asPveApi(fake).agentExec(est.node, est.vmid, ['/usr/local/sbin/pgi-configure'], {inputData: guestConfigureInput(secrets, 'ami')})
  fake.calls.length = 0
  return {ami, est, store, fake, api: asPveApi(fake), old: secrets, out: join(tmp, 'handoffs')}
}

/** Store, guest and handoff all agree, and nothing is pending. */
async function expectConsistent(d: Awaited<ReturnType<typeof deployed>>) {
  const cur = await readEstablishmentSecrets(d.store, d.est.uai)
  expect(d.fake.guest).toEqual({sql_admin: cur.sqlAdmin.reveal(), tryton_admin: cur.trytonAdmin.reveal(), ami: cur.amiPassword.reveal()})
  expect(await pendingSecrets(d.store, d.est.uai)).toEqual([])
  const {document} = await openHandoff(join(d.out, `${d.est.uai}.handoff.age`), [d.ami.file])
  expect(document.postgresql.password.reveal()).toBe(cur.sqlAdmin.reveal())
  expect(document.trytonAdmin.password.reveal()).toBe(cur.trytonAdmin.reveal())
  expect(document.ssh.password.reveal()).toBe(cur.amiPassword.reveal())
  return cur
}

describe('rotateEstablishmentSecrets', () => {
  it('changes the secrets in the guest (stdin only), then the store, then reissues the handoff', async () => {
    const d = await deployed()
    const io = new MemoryIo()
    const steps: RotateStep[] = []
    const r = await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out, io, onStep: (s) => void steps.push(s)})
    expect(steps).toEqual(['pending-written', 'guest-applied', 'promoted', 'handoff-reissued', 'pending-cleared'])
    expect(r).toMatchObject({uai: '0130040Y', hypervisor: 'hv-test', node: 'pve1', vmid: 1001, resumed: false, rotated: ['sql-admin', 'tryton-admin', 'ami-password'], guestChanged: ['sql_admin', 'tryton_admin', 'ami']})
    const cur = await expectConsistent(d)
    for (const k of ['sqlAdmin', 'trytonAdmin', 'amiPassword'] as const) expect(cur[k].reveal()).not.toBe(d.old[k].reveal())
    // the secrets went to the guest on stdin, never in argv
    const configure = d.fake.calls.filter((c) => c.command[0] === '/usr/local/sbin/pgi-configure')
    expect(configure).toHaveLength(1)
    for (const c of d.fake.calls) for (const s of Object.values(cur)) expect(c.command.join(' ')).not.toContain(s.reveal())
    expect(configure[0].inputData).toContain(cur.sqlAdmin.reveal())
    // host keys were recorded for the handoff
    const {document} = await openHandoff(r.handoff.file, [d.ami.file])
    expect(document.ssh.hostKeyFingerprints).toEqual(['ED25519 SHA256:q1w2e3r4t5y6u7i8o9p0AbCdEfGhIjKlMnOpQrStUvW'])
    // no secret (old or new) in the result or the log
    const visible = JSON.stringify(r) + io.text() + io.warnings.join('\n')
    for (const s of [...Object.values(cur), ...Object.values(d.old)]) expect(visible).not.toContain(s.reveal())
  })

  it('--only rotates a subset', async () => {
    const d = await deployed()
    const r = await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out, only: ['ami-password']})
    expect(r.rotated).toEqual(['ami-password'])
    expect(r.guestChanged).toEqual(['ami'])
    const cur = await expectConsistent(d)
    expect(cur.sqlAdmin.reveal()).toBe(d.old.sqlAdmin.reveal())
    expect(cur.amiPassword.reveal()).not.toBe(d.old.amiPassword.reveal())
  })

  for (const stopAfter of ['pending-written', 'guest-applied', 'promoted', 'handoff-reissued'] as const) {
    it(`interrupted after "${stopAfter}", a rerun finishes with the same new secrets and ends consistent`, async () => {
      const d = await deployed()
      const err = await rotate({
        api: d.api,
        store: d.store,
        establishment: d.est,
        outDir: d.out,
        onStep: (s) => {
          if (s === stopAfter) throw new Interrupted(s)
        },
      }).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(Interrupted)
      const pending = await pendingSecrets(d.store, d.est.uai)
      expect(pending).toEqual(['sql-admin', 'tryton-admin', 'ami-password'])
      const pendingSql = (await d.store.get(establishmentSecretKey(d.est.uai, 'sql-admin', {pending: true}))).reveal()
      if (stopAfter === 'pending-written') expect(d.fake.guest.sql_admin).toBe(d.old.sqlAdmin.reveal())
      else expect(d.fake.guest.sql_admin).toBe(pendingSql)

      // a fresh process (new store object) resumes
      const store2 = await SecretStore.open({dir: d.store.dir, recipients: [], env})
      const r = await rotate({api: d.api, store: store2, establishment: d.est, outDir: d.out})
      expect(r.resumed).toBe(true)
      expect(r.rotated).toEqual(['sql-admin', 'tryton-admin', 'ami-password'])
      const cur = await expectConsistent({...d, store: store2})
      expect(cur.sqlAdmin.reveal()).toBe(pendingSql)
    })
  }

  it('a guest failure keeps the pending secrets and the old ones current; the rerun applies them', async () => {
    const d = await deployed()
    d.fake.failConfigure = 1
    const io = new MemoryIo()
    const err = (await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out, io}).catch((e: unknown) => e)) as UserError
    expect(err).toBeInstanceOf(UserError)
    expect(err.code).toBe(ErrorCode.GUEST_CONFIGURE)
    expect(err.where).toMatchObject({uai: '0130040Y', hypervisor: 'hv-test', node: 'pve1', vmid: 1001})
    expect(err.message).toContain('postgresql is not running')
    expect(err.suggestions.join(' ')).toContain('pending secrets are kept')
    expect((await readEstablishmentSecrets(d.store, d.est.uai)).sqlAdmin.reveal()).toBe(d.old.sqlAdmin.reveal())
    expect(d.fake.guest.sql_admin).toBe(d.old.sqlAdmin.reveal())
    const pendingVals = await Promise.all((await d.store.list('establishments/0130040Y/pending/')).map(async (k) => (await d.store.get(k)).reveal()))
    expect(JSON.stringify(err.toJSON()) + io.text()).not.toMatch(new RegExp(pendingVals.join('|')))

    const r = await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out})
    expect(r.resumed).toBe(true)
    await expectConsistent(d)
  })

  it('a stopped or missing VM is a clear error, with nothing changed in the guest', async () => {
    const d = await deployed()
    d.fake.vmState = 'stopped'
    let err = (await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out}).catch((e: unknown) => e)) as UserError
    expect(err.code).toBe(ErrorCode.UNHEALTHY)
    expect(d.fake.calls).toEqual([])
    expect(await pendingSecrets(d.store, d.est.uai)).toEqual([]) // nothing left half-done
    d.fake.vmState = 'absent'
    err = (await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out}).catch((e: unknown) => e)) as UserError
    expect(err.code).toBe(ErrorCode.UNKNOWN_ESTABLISHMENT)
    expect(err.suggestions[0]).toContain('pgi deploy 0130040Y')
    d.fake.vmState = 'running'
    await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out})
    await expectConsistent(d)
  })

  it('refuses to rotate an establishment that was never deployed', async () => {
    const ami = await ageKey(tmp, 'ami')
    const est = establishment('0130041Z', ami.recipient)
    const store = await SecretStore.open({dir: join(tmp, 'store'), recipients: [], env})
    const fake = new FakeGuestPveApi(est.node, est.vmid)
    const err = (await rotate({api: asPveApi(fake), store, establishment: est, outDir: join(tmp, 'h')}).catch((e: unknown) => e)) as UserError
    expect(err.code).toBe(ErrorCode.SECRET_MISSING)
    expect(fake.calls).toEqual([])
    expect(await store.list()).toEqual([])
  })

  it('two runs on the same establishment never interleave; a lock left by a dead process is taken over', async () => {
    const d = await deployed()
    let release!: () => void
    const held = new Promise<void>((r) => (release = r))
    let started!: () => void
    const isHeld = new Promise<void>((r) => (started = r))
    const first = rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out, onStep: async (s) => {
      if (s === 'pending-written') {
        started()
        await held
      }
    }})
    await isHeld
    const err = (await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out}).catch((e: unknown) => e)) as UserError
    expect(err.code).toBe(ErrorCode.LOCKED)
    expect(err.exitCode).toBe(7)
    expect(err.message).toContain(`pid ${process.pid}`)
    release()
    await first
    await expectConsistent(d)

    // a lock whose process is gone (same host) does not block
    const file = establishmentLockFile(d.est.uai, env)
    await mkdir(join(tmp, 'state', 'locks'), {recursive: true})
    await writeFile(file, JSON.stringify({pid: 2 ** 22 + 12345, host: (await import('node:os')).hostname(), since: '2026-01-01T00:00:00Z', what: 'rotating its secrets'}))
    await rotate({api: d.api, store: d.store, establishment: d.est, outDir: d.out})
    await expectConsistent(d)
  })
})
