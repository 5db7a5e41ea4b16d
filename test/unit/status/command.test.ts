import {existsSync} from 'node:fs'
import {readdir, readFile, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {Config} from '@oclif/core'
import {generateIdentity, identityToRecipient} from 'age-encryption'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {runCommand} from '../../helpers/cli.js'

import Status from '../../../commands/status.js'
import {openInventoryStore} from '../../../src/fleet/open.js'
import {run} from '../../../src/exec.js'
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

const runCli = (argv: string[], env: Record<string, string> = {}) => runCommand(Status, argv, config, env)

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

  it("an AMI's token without VM.GuestAgent.FileRead: exit 5, the missing privilege named on stderr, no stack trace", async () => {
    const r = await runCli([lab.ami.uai, '--token-id', lab.amiAuditOnly.id, ...common()], {PGI_TOKEN_SECRET: lab.amiAuditOnly.secret.reveal()})
    expect(r.exitCode).toBe(5)
    expect(r.stdout).toMatch(/PGI health not checked: this token lacks the privilege VM\.GuestAgent\.FileRead or VM\.GuestAgent\.Unrestricted/)
    expect(r.stderr).toMatch(/this API token lacks VM\.GuestAgent\.Unrestricted on \/vms\/1001/)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    expect(r.stdout + r.stderr).not.toContain(lab.amiAuditOnly.secret.reveal())
    expect(existsSync(secretsDir)).toBe(true)
  })

  describe('through ./bin/run.js (the built CLI, as an AMI runs it)', () => {
    const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'run.js')
    /** Runs the CLI in a child process (async: this process serves the lab meanwhile). */
    const pgi = async (args: string[], token: {id: string; secret: Secret}) =>
      run(process.execPath, [CLI, 'status', ...args, '--token-id', token.id, '-i', invFile, '--timeout', '5'], {
        env: {PGI_STATE_DIR: process.env.PGI_STATE_DIR!, CI: 'true', PGI_TOKEN_SECRET: token.secret.reveal()},
        timeoutMs: 60_000,
        allowFailure: true,
      })

    it("the PGI-AMI token (PVE 9, no exec) gets the full verdict from the server's record, its age shown", async () => {
      const t = await pgi([lab.ami.uai], lab.ami)
      expect(t.exitCode).toBe(0)
      expect(t.stdout).toMatch(/1 establishment: 1 healthy/)
      expect(t.stdout).toMatch(/checks: postgresql ok, trytond ok, web ok, data_disk ok, backup ok/)
      expect(t.stdout).toMatch(/health: the server's record of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, \d+ s old \(\/run\/pgi\/health\.json, read through the guest agent\)/)
      expect(t.stderr).not.toMatch(/lacks/)
      const j = await pgi([lab.ami.uai, '--json'], lab.ami)
      expect(j.exitCode).toBe(0)
      const e = (JSON.parse(j.stdout) as {result: {establishments: {verdict: string; healthCheck: unknown}[]}}).result.establishments[0]!
      expect(e).toMatchObject({verdict: 'healthy', healthCheck: {via: 'health-record', stale: false}})
      const p = await pgi([lab.ami.uai, '--format', 'prometheus'], lab.ami)
      expect(p.stdout).toMatch(new RegExp(`^pgi_health_record_age_seconds\\{uai="${lab.ami.uai}",hypervisor="lab1",node="lab1"\\} \\d+$`, 'm'))
      expect(t.stdout + t.stderr + j.stdout + j.stderr).not.toContain(lab.ami.secret.reveal())
    })

    it('a record older than --health-max-age is stale (exit 5); a bad value is a usage error', async () => {
      const at = new Date(Date.now() - 20 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z')
      const e = lab.establishments[0]!
      await lab.client(e.node).agentFileWrite(e.node, e.vmid, '/run/pgi/health.json', JSON.stringify({v: 1, at, exit_code: 0, health: {healthy: true, checks: {postgresql: {ok: true}}, databases: [], problems: []}}))
      try {
        const r = await pgi([lab.ami.uai], lab.ami)
        expect(r.exitCode).toBe(5)
        expect(r.stdout).toMatch(/the server's health record is stale: last written \d{4}-\d\d-\d\d \d\d:\d\d UTC \(over 10 min ago/)
        expect(r.stdout).toMatch(/health: the server's record of \S+, 20 min old \(STALE: not used\)/)
        expect(r.stdout).toMatch(/STALE: not used/)
        const lenient = await pgi([lab.ami.uai, '--health-max-age', '3600'], lab.ami)
        expect(lenient.exitCode).toBe(0)
        const bad = await pgi([lab.ami.uai, '--health-max-age', '0'], lab.ami)
        expect(bad.exitCode).toBe(2)
        expect(bad.stderr).toMatch(/greater than or equal to 1/)
      } finally {
        // the guest's own record again (the simulated timer's), for the other tests
        await lab.client(e.node).agentFileWrite(e.node, e.vmid, '/run/pgi/health.json', JSON.stringify({v: 1, at: new Date().toISOString(), exit_code: 0, health: {healthy: true, checks: {}, databases: [], problems: []}}))
      }
    })
  })
})
