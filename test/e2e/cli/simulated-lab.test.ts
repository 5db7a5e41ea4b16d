/**
 * Names and verdicts through the built CLI (bin/run.js) on a simulated lab (`pgi lab start
 * --backend simulated`, its daemon in its own process, real HTTPS): an image named NAME@VERSION
 * is the one deployed, planned and staged (not the reference image of that version); a deploy
 * with --lab-dir hands over on a lab that forwards no ports; a deploy run again with everything up
 * to date rewrites no handoff and writes none to the default folder; a rollout refused by the lock
 * names no journal it did not create; `pgi status` is degraded when the server runs another image
 * than the one its VM records, and exits 8 when no hypervisor could be trusted. The images are
 * test images (signed, never booted: the simulated guest reads the version from the staged file's
 * name). Needs `npm run build`.
 */
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {hostname, tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Establishment, Inventory} from '../../../src/inventory/types.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, runPgi, type PgiRun} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'

let base: string
let labDir: string
let images: string
let env: NodeJS.ProcessEnv
let inventory: Inventory
/** Deployed with the reference image, through a plain deploy (status tests). */
let plain: Establishment
/** Deployed with NAME@VERSION and --lab-dir (name and handoff tests). */
let named: Establishment[]

const pgi = (args: string[], timeoutMs = 120_000): Promise<PgiRun> => runPgi(args, {env, cwd: base, timeoutMs})
const ok = (r: PgiRun) => expect(r.exitCode, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`).toBe(0)

async function digestOf(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex')
}

beforeAll(async () => {
  assertBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-cli-sim-'))
  labDir = join(base, 'lab')
  images = join(base, 'images')
  await signedTestImage(images, 'pgi-tryton', '2026.11.0')
  await signedTestImage(images, 'pgi-tryton', '1.0.0')
  await signedTestImage(images, 'pgi-custom', '2026.12.0')
  await signedTestImage(images, 'pgi-custom', '2026.12.1')
  env = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
  for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR']) delete env[k]
  ok(await pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '2', '--sites', '3', '--dir', labDir, '--time-scale', '0.01', '--auth-fail-delay', '10', '--json']))
  env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
  env.PGI_SECRETS_DIR = join(labDir, 'secrets')
  inventory = await loadValidInventory(env.PGI_INVENTORY)
  ;[plain, ...named] = inventory.establishments as [Establishment, ...Establishment[]]
  expect(named).toHaveLength(2)
}, 120_000)

afterAll(async () => {
  if (labDir && existsSync(join(labDir, 'lab.json'))) await pgi(['lab', 'stop', '--dir', labDir, '--json'])
  if (base) await rm(base, {recursive: true, force: true})
}, 60_000)

const deployFlags = ['--yes', '--json', '--images-dir', () => images, '--agent-timeout', '60', '--health-timeout', '60'] as const
const flags = () => deployFlags.map((f) => (typeof f === 'function' ? f() : f))

describe('handoffs of a deploy run again', () => {
  it('with everything up to date: none rewritten, none written to the default folder', async () => {
    const h0 = join(base, 'h0')
    ok(await pgi(['deploy', plain.uai, ...flags(), '--image', '1.0.0', '--handoff-dir', h0]))
    const file = join(h0, `${plain.uai}.handoff.age`)
    const [before, mtime] = [await digestOf(file), (await stat(file)).mtimeMs]
    const r = await pgi(['deploy', plain.uai, ...flags(), '--image', '1.0.0'])
    ok(r)
    expect(r.json!.result.result.outcomes[0]).toMatchObject({outcome: 'up-to-date', handoff: file})
    expect([await digestOf(file), (await stat(file)).mtimeMs]).toEqual([before, mtime])
    expect(existsSync(join(base, 'state', 'handoffs'))).toBe(false)
  })
})

describe('pgi deploy and rollout keep the image name (NAME@VERSION)', () => {
  it('deploys pgi-custom@2026.12.0 on a simulated lab with --lab-dir, handoffs naming the address the lab gave each VM', async () => {
    const r = await pgi(['deploy', ...named.map((e) => e.uai), ...flags(), '--image', 'pgi-custom@2026.12.0', '--lab-dir', labDir, '--handoff-dir', join(base, 'h1')])
    ok(r)
    const res = r.json!.result
    expect(res.plan.map((p: {action: string}) => p.action)).toEqual(['create', 'create'])
    for (const p of res.plan) expect(p.detail).toContain('import/pgi-custom-2026.12.0.qcow2')
    expect(res.result.counts).toMatchObject({created: 2, failed: 0, blocked: 0})
    expect(r.stderr).toMatch(/forwards no ports to VM \d+ .*: the handoff names the address the lab gave it, 10\./)
    for (const [i, e] of named.entries()) {
      const o = res.result.outcomes[i]
      expect(o.handoff).toBe(join(base, 'h1', `${e.uai}.handoff.age`))
      const opened = await pgi(['credentials', 'open', o.handoff, '--identity', join(labDir, 'ami-identity.txt'), '--json'])
      ok(opened)
      const h = opened.json!.result
      expect(h.ssh.host).toBe(e.network.address.split('/')[0])
      expect(h.vm.note).toMatch(/laboratoire pgi sans réseau/)
    }
  })

  it('run again with everything up to date: no handoff rewritten, none written to the default folder', async () => {
    const before = await Promise.all(named.map((e) => digestOf(join(base, 'h1', `${e.uai}.handoff.age`))))
    const mtimes = await Promise.all(named.map(async (e) => (await stat(join(base, 'h1', `${e.uai}.handoff.age`))).mtimeMs))
    const r = await pgi(['deploy', ...named.map((e) => e.uai), ...flags(), '--image', 'pgi-custom@2026.12.0', '--lab-dir', labDir])
    ok(r)
    expect(r.json!.result.result.counts).toMatchObject({'up-to-date': 2})
    expect(r.json!.result.result.outcomes.map((o: {handoff: string}) => o.handoff)).toEqual(named.map((e) => join(base, 'h1', `${e.uai}.handoff.age`)))
    expect(await Promise.all(named.map((e) => digestOf(join(base, 'h1', `${e.uai}.handoff.age`))))).toEqual(before)
    expect(await Promise.all(named.map(async (e) => (await stat(join(base, 'h1', `${e.uai}.handoff.age`))).mtimeMs))).toEqual(mtimes)
    expect(existsSync(join(base, 'state', 'handoffs'))).toBe(false)
    expect(r.stderr).toMatch(/handoffs in .*h1/)
  })

  it('a folder named with --handoff-dir gets the handoffs it lacks', async () => {
    const r = await pgi(['deploy', named[0]!.uai, ...flags(), '--image', 'pgi-custom@2026.12.0', '--lab-dir', labDir, '--handoff-dir', join(base, 'h2')])
    ok(r)
    expect(await readdir(join(base, 'h2'))).toEqual([`${named[0]!.uai}.handoff.age`])
  })

  it('rollout plan and stage use pgi-custom@2026.12.1, not pgi-tryton 2026.12.1', async () => {
    const plan = await pgi(['rollout', 'plan', 'pgi-custom@2026.12.1', ...named.map((e) => e.uai), '--images-dir', images, '--json'])
    ok(plan)
    for (const row of plan.json!.result.rows) {
      expect(row.target).toBe('2026.12.1')
      expect(row.blockers.filter((b: string) => /image/i.test(b))).toEqual([])
      expect(row.action).toBe('update')
    }
    const staged = await pgi(['rollout', 'stage', 'pgi-custom@2026.12.1', ...named.map((e) => e.uai), '--images-dir', images, '--json'])
    ok(staged)
    expect(staged.json!.result.version).toBe('2026.12.1')
    for (const row of staged.json!.result.rows) expect(row.detail).toMatch(/^pgi-custom-2026\.12\.1\.qcow2 uploaded/)
  })
})

describe('a refused second rollout', () => {
  it('names no journal it did not create', async () => {
    // another rollout of this inventory holds the lock (a live process on this host: this one)
    const lock = join(base, 'state', 'locks', `rollout-${createHash('sha256').update(inventory.path).digest('hex').slice(0, 16)}.lock`)
    await mkdir(join(base, 'state', 'locks'), {recursive: true})
    await writeFile(lock, JSON.stringify({pid: process.pid, host: hostname(), since: new Date().toISOString(), what: 'rollout held by the test'}))
    try {
      const r = await pgi(['rollout', 'start', '2026.11.0', '--all', '--yes', '--json', '--images-dir', images])
      expect(r.exitCode, r.stderr).toBe(7)
      expect(r.json!.error!.code).toBe('PGI_LOCKED')
      for (const m of r.stderr.matchAll(/journal (\S+)/g)) expect(existsSync(m[1]!), `${m[1]} is named but does not exist`).toBe(true)
      expect(existsSync(join(base, 'state', 'journal', 'rollout'))).toBe(false)
    } finally {
      await rm(lock, {force: true})
    }
  })
})

describe('pgi status', () => {
  it('is degraded (exit 5) when the server runs another image than the one its VM records', async () => {
    // deployed by the first test (idempotent here)
    ok(await pgi(['deploy', plain.uai, ...flags(), '--image', '1.0.0']))
    // the simulated guest runs the version of the image its OS disk was imported from (1.0.0, not "0.0.0")
    const healthy = await pgi(['status', plain.uai, '--json'])
    ok(healthy)
    expect(healthy.json!.result.establishments[0]).toMatchObject({verdict: 'healthy', image: {recorded: '1.0.0', running: '1.0.0'}})

    // the OS disk changed outside pgi: the guest now says it runs 1.0.9
    const store = await SecretStore.open({dir: env.PGI_SECRETS_DIR!, recipients: [], env})
    const hv = inventory.hypervisors.get(plain.hypervisor)!
    const api = connectHypervisor(hv, {tokenSecret: await store.get((hv.token.secret as {store: string}).store)})
    try {
      await api.agentFileWrite(plain.node, plain.vmid, '/etc/pgi/image.json', JSON.stringify({name: 'pgi-tryton', version: '1.0.9'}))
    } finally {
      await (api as {close?: () => Promise<void>}).close?.()
    }
    const r = await pgi(['status', plain.uai, '--json'])
    expect(r.exitCode, r.stderr).toBe(5)
    const e = r.json!.result.establishments[0]
    expect(e.verdict).toBe('degraded')
    expect(e.image).toMatchObject({recorded: '1.0.0', running: '1.0.9'})
    expect(e.reasons).toContain('the VM metadata says image 1.0.0 but the server runs 1.0.9')
    const human = await pgi(['status', plain.uai])
    expect(human.exitCode).toBe(5)
    expect(human.stdout).toContain('the VM metadata says image 1.0.0 but the server runs 1.0.9')
  })

  it('exits 8 when no hypervisor can be trusted (TLS pin mismatch), 5 when only some cannot', async () => {
    const yaml = await readFile(env.PGI_INVENTORY!, 'utf8')
    const wrong = 'AA:'.repeat(31) + 'AA'
    const pins = [...yaml.matchAll(/fingerprint: (\S+)/g)].map((m) => m[1]!)
    expect(pins).toHaveLength(2)
    const bothBad = join(base, 'both-bad.yaml')
    await writeFile(bothBad, yaml.replaceAll(pins[0]!, wrong).replaceAll(pins[1]!, wrong))
    const r = await pgi(['status', '-i', bothBad, '--json'])
    expect(r.exitCode, r.stderr).toBe(8)
    expect(r.json!.status).toBe(8)
    expect(r.json!.result.establishments.every((e: {verdict: string; reason: string}) => e.verdict === 'unknown' && /TLS certificate does not match/.test(e.reason))).toBe(true)

    const oneBad = join(base, 'one-bad.yaml')
    await writeFile(oneBad, yaml.replaceAll(pins[1]!, wrong))
    const some = await pgi(['status', '-i', oneBad, '--json'])
    expect(some.exitCode, some.stderr).toBe(5)
  })
})
