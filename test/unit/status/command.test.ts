import {existsSync} from 'node:fs'
import {readdir, readFile, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {format} from 'node:util'

import {Config} from '@oclif/core'
import {generateIdentity, identityToRecipient} from 'age-encryption'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import Status from '../../../commands/status.js'
import {openInventoryStore} from '../../../src/credentials/service.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import {labInventoryYaml} from '../../../src/lab/inventory-gen.js'
import {Secret} from '../../../src/secret.js'
import {localIdentity} from '../../../src/secrets/identity.js'
import {startSimLab, TOKEN_ENV, type SimLab} from './sim-lab.js'

/** `pgi status` as a command (flags, envelope, exit codes, files) on a simulated lab. */
let lab: SimLab
let invFile: string
let secretsDir: string
let config: Config
const savedEnv = {...process.env}

beforeAll(async () => {
  lab = await startSimLab({nodes: 2, sites: 4})
  process.env = {...savedEnv, PGI_STATE_DIR: join(lab.dir, 'state'), CI: 'true'}
  delete process.env.PGI_AGE_IDENTITY
  delete process.env.PGI_TOKEN_SECRET
  delete process.env.PGI_TOKEN_ID
  delete process.env.PGI_STATUS_FORMAT
  const me = await localIdentity(process.env)
  invFile = join(lab.dir, 'inventory', 'lab.yaml')
  const nodes = [...lab.inventory.hypervisors.values()].map((h) => ({name: h.name, url: h.url, fingerprint: h.tls.fingerprint!}))
  const {mkdir} = await import('node:fs/promises')
  await mkdir(dirname(invFile), {recursive: true})
  await writeFile(invFile, labInventoryYaml({nodes, sites: 4, pveVersion: '9.1', tokenId: 'pgi@pve!status', recipients: [{name: 'technicien', key: me.recipient}], amiRecipient: await identityToRecipient(await generateIdentity())}))
  const inv = await loadValidInventory(invFile)
  expect(inv.establishments.map((e) => e.uai)).toEqual(lab.establishments.map((e) => e.uai))
  secretsDir = join(lab.dir, 'secrets')
  const store = await openInventoryStore(inv, secretsDir, process.env)
  for (const n of nodes) await store.put(`hypervisors/${n.name}/token`, new Secret(lab.env[TOKEN_ENV]!))
  config = await Config.load({root: process.cwd()})
}, 60_000)

afterAll(async () => {
  process.env = savedEnv
  await lab?.close()
})

async function runCli(argv: string[], env: Record<string, string> = {}) {
  let stdout = ''
  let stderr = ''
  const ow = process.stdout.write.bind(process.stdout)
  const ew = process.stderr.write.bind(process.stderr)
  const {log, error} = console
  const saved = {...process.env}
  Object.assign(process.env, env)
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write
  process.stderr.write = ((c: string | Uint8Array) => ((stderr += String(c)), true)) as typeof process.stderr.write
  console.log = (...a: unknown[]) => void (stdout += format(...a) + '\n')
  console.error = (...a: unknown[]) => void (stderr += format(...a) + '\n')
  try {
    await Status.run(argv, config)
  } catch (err) {
    stderr += `[thrown] ${(err as Error).message}\n`
    process.exitCode ??= 1
  } finally {
    process.stdout.write = ow
    process.stderr.write = ew
    console.log = log
    console.error = error
    process.env = saved
  }
  const exitCode = Number(process.exitCode ?? 0)
  process.exitCode = undefined
  return {stdout, stderr, exitCode}
}

const common = () => ['-i', invFile, '--secrets-dir', secretsDir, '--timeout', '5']

describe('pgi status (command)', () => {
  it('--json: the envelope with every establishment, exit 0 when all are healthy', async () => {
    const r = await runCli(['--all', '--json', ...common()])
    expect(r.exitCode).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.status).toBe(0)
    expect(out.result.summary).toMatchObject({healthy: 4, total: 4})
    expect(out.warnings).toEqual([])
  })

  it('a table for people without colour when not on a TTY; one UAI shows its details', async () => {
    const uai = lab.establishments[0]!.uai
    const r = await runCli([uai, ...common()])
    expect(r.exitCode).toBe(0)
    expect(r.stdout).not.toMatch(/\u001b\[/)
    expect(r.stdout).toContain(uai)
    expect(r.stdout).toMatch(/1 establishment: 1 healthy/)
    expect(r.stdout).toMatch(/checks: postgresql ok, trytond ok, web ok, data_disk ok/)
  })

  it('--format json is --json; a stopped VM gives exit 5 (unhealthy) in the envelope too', async () => {
    const e = lab.establishments[1]!
    const cl = lab.client(e.node)
    await cl.stopVm(e.node, e.vmid)
    try {
      const r = await runCli(['--format', 'json', lab.establishments[0]!.uai, e.uai, ...common()])
      expect(r.exitCode).toBe(5)
      const out = JSON.parse(r.stdout)
      expect(out.status).toBe(5)
      expect(out.result.establishments[0]).toMatchObject({uai: e.uai, verdict: 'down', reason: 'VM is stopped'})
    } finally {
      await cl.startVm(e.node, e.vmid)
    }
  })

  it('--format prometheus --output writes the textfile atomically', async () => {
    const file = join(lab.dir, 'textfile', 'pgi.prom')
    const {mkdir} = await import('node:fs/promises')
    await mkdir(dirname(file), {recursive: true})
    const r = await runCli(['--all', '--format', 'prometheus', '--output', file, ...common()])
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toBe('')
    const text = await readFile(file, 'utf8')
    expect(text).toMatch(/^# HELP pgi_up /)
    expect(text.match(/^pgi_up\{/gm)).toHaveLength(4)
    expect(await readdir(dirname(file))).toEqual(['pgi.prom'])
  })

  it('--token-id without PGI_TOKEN_SECRET is a usage error (the secret is never a flag)', async () => {
    const r = await runCli(['--all', '--token-id', 'ami@pve!status', ...common()])
    expect(r.exitCode).toBe(2)
    expect(r.stderr).toContain('PGI_TOKEN_SECRET')
  })

  it("an AMI's token: exit 5, the missing privilege named on stderr, no stack trace", async () => {
    const r = await runCli([lab.ami.uai, '--token-id', lab.ami.id, ...common()], {PGI_TOKEN_SECRET: lab.ami.secret.reveal()})
    expect(r.exitCode).toBe(5)
    expect(r.stdout).toMatch(/PGI health not checked: this token lacks the privilege/)
    expect(r.stderr).toMatch(/this API token lacks VM\.GuestAgent\.Unrestricted on \/vms\/1001/)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    expect(r.stdout + r.stderr).not.toContain(lab.ami.secret.reveal())
    expect(existsSync(secretsDir)).toBe(true)
  })
})
