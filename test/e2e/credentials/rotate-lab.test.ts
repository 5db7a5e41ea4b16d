/**
 * `pgi credentials rotate` end to end against a simulated lab (src/lab: the PVE-compatible HTTPS
 * API in this process, simulated guests that model the guest contract's pgi-configure), through
 * the real Proxmox client over TLS on 127.0.0.1, the hypervisor token read from the secret store.
 * The guest's state is checked from the outside: re-applying the store's secrets with
 * pgi-configure must change nothing.
 */
import {createHash, randomUUID} from 'node:crypto'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {Config} from '@oclif/core'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {runCommand, type CommandClass} from '../../helpers/cli.js'

import CredentialsOpen from '../../../commands/credentials/open.js'
import CredentialsRotate from '../../../commands/credentials/rotate.js'
import {pendingSecrets, rotateEstablishmentSecrets} from '../../../src/credentials/rotate.js'
import {applyInGuest} from '../../../src/fleet/guest-config.js'
import {ensureEstablishmentSecrets, readEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import {openInventoryStore} from '../../../src/fleet/open.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Establishment, Inventory} from '../../../src/inventory/types.js'
import {MemoryIo} from '../../../src/io.js'
import {labInventoryYaml} from '../../../src/lab/inventory-gen.js'
import {startRuntime, type LabRuntime} from '../../../src/lab/runtime.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {Secret} from '../../../src/secret.js'
import {localIdentity} from '../../../src/secrets/identity.js'
import type {SecretStore} from '../../../src/secrets/store.js'
import {ageKey} from '../../unit/credentials/fixtures.js'

const TOKEN_ID = 'pgi@pve!deploy'
let tmp: string
let rt: LabRuntime
let inventory: Inventory
let invFile: string
let store: SecretStore
let api: PveApi
let est: Establishment
let ami: {file: string; recipient: string}
let config: Config
const savedEnv = {...process.env}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'pgi-rotate-lab-'))
  process.env = {...savedEnv, PGI_STATE_DIR: join(tmp, 'state'), CI: 'true'}
  delete process.env.PGI_AGE_IDENTITY
  const token = randomUUID()
  rt = await startRuntime({
    dir: join(tmp, 'lab'),
    nodes: ['lab1'],
    backend: 'simulated',
    pveVersion: '9.1',
    timeScale: 0.005,
    access: {
      users: {'pgi@pve': {}},
      tokens: {[TOKEN_ID]: {secretSha256: createHash('sha256').update(token).digest('hex'), privsep: false}},
      roles: {},
      acl: [{path: '/', ugid: 'pgi@pve', roleid: 'Administrator', propagate: true}],
    },
    authFailDelayMs: 10,
    requestLog: false,
  })
  ami = await ageKey(tmp, 'ami')
  const me = await localIdentity(process.env)
  invFile = join(tmp, 'lab.yaml')
  await writeFile(
    invFile,
    labInventoryYaml({
      nodes: [{name: 'lab1', url: `https://127.0.0.1:${rt.ports.lab1}`, fingerprint: rt.fingerprints.lab1!}],
      sites: 1,
      pveVersion: '9.1',
      tokenId: TOKEN_ID,
      recipients: [{name: 'technicien', key: me.recipient}],
      amiRecipient: ami.recipient,
    }),
  )
  inventory = await loadValidInventory(invFile)
  est = inventory.establishments[0]!
  store = await openInventoryStore(inventory, join(tmp, 'secrets'))
  await store.put(`hypervisors/${est.hypervisor}/token`, new Secret(token))
  api = connectHypervisor(inventory.hypervisors.get(est.hypervisor)!, {tokenSecret: new Secret(token), poll: {initialMs: 20, maxMs: 100}})

  // "deploy": a running VM with the guest agent, its secrets set through pgi-configure
  // a PGI VM: OS disk, and the data disk its PostgreSQL lives on (pgi-configure needs it)
  await api.createVm(est.node, est.vmid, {name: `pgi-${est.uai.toLowerCase()}`, agent: 1, memory: 1024, cores: 1, virtio0: 'local-vm:1', virtio1: 'local-vm:1,serial=pgi-data', net0: 'virtio,bridge=vmbr0'})
  await api.startVm(est.node, est.vmid)
  for (let i = 0; i < 100 && !(await api.agentPing(est.node, est.vmid).catch(() => false)); i++) await new Promise((r) => setTimeout(r, 50))
  const {secrets} = await ensureEstablishmentSecrets(store, est.uai)
  await applyInGuest(api, est, secrets)
  config = await Config.load({root: process.cwd()})
}, 120_000)

afterAll(async () => {
  process.env = savedEnv
  await rt?.close()
  await rm(tmp, {recursive: true, force: true})
})

const runCli = (cmd: CommandClass, argv: string[]) => runCommand(cmd, argv, config)

/** The guest uses exactly the store's current secrets: re-applying them changes nothing. */
async function expectGuestMatchesStore(): Promise<Secret[]> {
  const cur = await readEstablishmentSecrets(store, est.uai)
  expect(await applyInGuest(api, est, cur)).toEqual([])
  expect(await pendingSecrets(store, est.uai)).toEqual([])
  return Object.values(cur)
}

describe('pgi credentials rotate on a simulated lab', () => {
  it('rotates through the real client; no secret in stdout, stderr or --json', async () => {
    const before = (await expectGuestMatchesStore()).map((s) => s.reveal())
    const out = join(tmp, 'handoffs')
    const r = await runCli(CredentialsRotate, [est.uai, '-i', invFile, '--secrets-dir', store.dir, '--out', out, '--yes', '--json', '--log-level', 'debug'])
    expect(r.exitCode).toBe(0)
    const res = JSON.parse(r.stdout).result
    expect(res.establishments[0]).toMatchObject({ok: true, uai: est.uai, resumed: false, rotated: ['sql-admin', 'tryton-admin', 'ami-password'], guestChanged: ['sql_admin', 'tryton_admin', 'ami']})
    const after = (await expectGuestMatchesStore()).map((s) => s.reveal())
    for (const v of [...before, ...after]) {
      expect(r.stdout).not.toContain(v)
      expect(r.stderr).not.toContain(v)
    }
    expect(after).not.toEqual(before)
    // the AMI's new handoff holds the new secrets
    const opened = JSON.parse((await runCli(CredentialsOpen, [join(out, `${est.uai}.handoff.age`), '-k', ami.file, '--json'])).stdout).result
    expect(opened.postgresql.password).toBe(after[0])
  })

  it('interrupted right after the guest step, `pgi credentials rotate` finishes it and all agree', async () => {
    const out = join(tmp, 'handoffs2')
    const io = new MemoryIo()
    const err = await rotateEstablishmentSecrets({
      api,
      store,
      establishment: est,
      outDir: out,
      io,
      onStep: (s) => {
        if (s === 'guest-applied') throw new Error('killed')
      },
    }).catch((e: unknown) => e)
    expect((err as Error).message).toBe('killed')
    const pending = await pendingSecrets(store, est.uai)
    expect(pending).toEqual(['sql-admin', 'tryton-admin', 'ami-password'])
    const pendingValues = await Promise.all(pending.map(async (n) => (await store.get(`establishments/${est.uai}/pending/${n}`)).reveal()))

    const r = await runCli(CredentialsRotate, [est.uai, '-i', invFile, '--secrets-dir', store.dir, '--out', out, '--yes', '--json'])
    expect(r.exitCode).toBe(0)
    expect(JSON.parse(r.stdout).result.establishments[0]).toMatchObject({ok: true, resumed: true, guestChanged: []})
    const now = (await expectGuestMatchesStore()).map((s) => s.reveal())
    expect(now).toEqual(pendingValues)
    for (const v of pendingValues) expect(r.stdout + r.stderr + io.text()).not.toContain(v)
  })
})
