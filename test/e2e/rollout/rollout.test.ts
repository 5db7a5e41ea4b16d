import {existsSync} from 'node:fs'
import {cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {openInventoryStore} from '../../../src/fleet/open.js'
import {run, spawnDetached} from '../../../src/exec.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {Hypervisors} from '../../../src/hypervisors.js'
import {buildImage} from '../../../src/image/build.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Establishment} from '../../../src/inventory/types.js'
import {StderrIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import type {RolloutResult} from '../../../src/rollout/run.js'

import {cachedPgiImage} from '../../helpers/e2e-image.js'

/**
 * `pgi rollout` end to end on a qemu-backed lab (real QEMU VMs of the real pgi-tryton image):
 *
 * 1. v1 (the cached e2e image) deployed to two establishments, a student database made in each
 *    (`pgi-db create`, from the image's BTS template) with its own number of extra parties;
 * 2. v2 (1.1.0: same packages, one more file under /etc/pgi) staged and rolled out: both run v2
 *    (the new file is there), the data disk records the databases upgraded to 1.1.0, every row is
 *    still there, the old OS disk is gone, the SSH host keys are the same (kept on the data disk);
 * 3. a broken v3 (1.2.0: trytond can never start) rolled out: the gate fails, both are rolled
 *    back to v2 — healthy, data disk back at 1.1.0 (the databases the new OS had marked upgraded
 *    were restored from the backup), same rows — and the output says why (exit 4);
 * 4. v4 (1.2.1, fixed) rolled out, pgi killed with SIGKILL at a random step of the rollout
 *    (PGI_E2E_KILL_STEP picks it), then `pgi rollout resume`: both on v4, healthy, same rows.
 *
 * v2, v3 and v4 are built from copies of images/pgi-tryton (its image.lock too: same packages,
 * warm apt cache) into the test's own images folder, next to a copy of v1, one after the other
 * while the VMs work. Timing of a run is in docs/rollout.md.
 *
 * It takes ~55 min on a 2-core machine (three image builds, six OS-disk swaps under software
 * emulation): more than the CI budget left by the rest of the suite. It runs when
 * PGI_E2E_ROLLOUT=1 (`PGI_E2E_ROLLOUT=1 bash scripts/test.sh test/e2e/rollout`); otherwise vitest
 * reports it skipped.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const T0 = Date.now()
const elapsed = () => `${Math.round((Date.now() - T0) / 1000)} s`
const note = (s: string) => process.stderr.write(`[rollout e2e ${elapsed()}] ${s}\n`)

const V2 = '1.1.0'
const V3 = '1.2.0'
const V4 = '1.2.1'
/** Seconds: a VM boots healthy in ~2-3 min under TCG, slower with two at once and other VMs on the host. */
const HEALTH_TIMEOUT = 600
/** The broken v3's gate can only time out: as small as a healthy boot safely allows. */
const BROKEN_HEALTH_TIMEOUT = 420
const FORWARD_STEPS = ['claimed', 'checked', 'backed-up', 'stopped', 'swapped', 'started', 'gated'] as const

let base: string
let labDir: string
let imagesRoot: string
let env: Record<string, string>
let v1: string
let sites: Establishment[] = []
let api: PveApi
const extraParties = new Map<string, number>()
/** Each VM's SSH host key fingerprint at deploy: kept on the data disk, the same on every OS disk. */
const hostKeys = new Map<string, string>()
const DB = 'bts_e2e'
let builds: Promise<Map<string, string>> | undefined

async function pgi(args: string[], opts: {allowFailure?: boolean} = {}) {
  const t = Date.now()
  const r = await run('node', [CLI, ...args], {env, allowFailure: true, timeoutMs: 60 * 60_000})
  note(`pgi ${args.slice(0, 3).join(' ')}: exit ${r.exitCode} in ${Math.round((Date.now() - t) / 1000)} s`)
  if (r.exitCode !== 0 && !opts.allowFailure) throw new Error(`pgi ${args.join(' ')} exited ${r.exitCode}:\n${r.stderr.slice(-4000)}\n${r.stdout.slice(-2000)}`)
  return r
}

function rolloutArgs(cmd: 'start' | 'resume', version: string | undefined, healthTimeout = HEALTH_TIMEOUT): string[] {
  return ['rollout', cmd, ...(version ? [version, '--all'] : []), '--yes', '--json', '--images-dir', imagesRoot, '--health-timeout', String(healthTimeout), '--agent-timeout', '600', '--shutdown-timeout', '120', ...(cmd === 'start' ? ['--max-failures', '2'] : [])]
}

function parseRollout(stdout: string): {status: number; result: RolloutResult} {
  return JSON.parse(stdout) as {status: number; result: RolloutResult}
}

async function guest(e: Establishment, command: string[], input?: string): Promise<string> {
  const r = await api.agentExec(e.node, e.vmid, command, {timeoutMs: 20 * 60_000, ...(input ? {inputData: input} : {})})
  if (r.exitcode !== 0) throw new Error(`${command.join(' ')} in VM ${e.vmid} exited ${r.exitcode}: ${r.stderr || r.stdout}`)
  return r.stdout
}

async function sql(e: Establishment, query: string): Promise<string> {
  return (await guest(e, ['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-d', DB, '-v', 'ON_ERROR_STOP=1', '-tAc', query])).trim()
}

const parties = async (e: Establishment) => Number(await sql(e, 'SELECT count(*) FROM party_party'))
const hostKey = async (e: Establishment) => (await guest(e, ['ssh-keygen', '-lf', '/etc/ssh/ssh_host_ed25519_key.pub'])).trim()
const studentParties = async (e: Establishment) => Number(await sql(e, "SELECT count(*) FROM party_party WHERE code LIKE 'E2E-%'"))

async function health(e: Establishment): Promise<{healthy: boolean; image: {version?: string}; problems?: string[]}> {
  const r = await api.agentExec(e.node, e.vmid, ['/usr/local/sbin/pgi-health'], {timeoutMs: 10 * 60_000})
  return JSON.parse(r.stdout) as {healthy: boolean; image: {version?: string}; problems?: string[]}
}

async function dataDisk(e: Establishment): Promise<{image?: {version?: string}; history?: {to?: string; restored_from?: string}[]}> {
  return JSON.parse(await guest(e, ['cat', '/srv/pgi/.pgi/state.json'])) as {image?: {version?: string}; history?: {to?: string; restored_from?: string}[]}
}

async function vm(e: Establishment) {
  const cfg = (await api.vmConfig(e.node, e.vmid))!
  const meta = parseDescription(typeof cfg.description === 'string' ? cfg.description : undefined)
  return {cfg, meta, unused: Object.keys(cfg).filter((k) => /^unused\d+$/.test(k))}
}

/** Every establishment: healthy on `version`, recorded on its VM as `version`, its data intact. */
async function expectOn(version: string) {
  for (const e of sites) {
    const h = await health(e)
    expect(h, `${e.uai}: ${JSON.stringify(h.problems)}`).toMatchObject({healthy: true, image: {version}})
    const {meta, cfg} = await vm(e)
    expect(meta?.image).toBe(version)
    expect(String(cfg.virtio1)).toContain('serial=pgi-data')
    expect((await dataDisk(e)).image?.version).toBe(version)
    expect(await studentParties(e)).toBe(extraParties.get(e.uai))
    // the AMI's SSH client and handoff still know this server
    expect(await hostKey(e)).toBe(hostKeys.get(e.uai))
  }
}

/** A recipe: a copy of images/pgi-tryton (lock included), changed by `change`. */
async function recipe(version: string, change: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(base, 'recipes', version)
  await cp(join(ROOT, 'images', 'pgi-tryton'), dir, {recursive: true})
  const yaml = join(dir, 'image.yaml')
  await writeFile(yaml, (await readFile(yaml, 'utf8')).replace(/^version: .*$/m, `version: ${version}`))
  await change(dir)
  return yaml
}

async function build(version: string, change: (dir: string) => Promise<void>): Promise<string> {
  const t = Date.now()
  const r = await buildImage({recipe: await recipe(version, change), version, out: imagesRoot, io, allowLockDrift: true, env: {...process.env, SOURCE_DATE_EPOCH: '1767225600'}})
  note(`image ${r.version} built in ${Math.round((Date.now() - t) / 1000)} s`)
  return r.version
}

/** v2, v3, v4 one after the other (the host has 2 cores and VMs to run); each awaited when needed. */
function buildAll(): {v2: Promise<string>; v3: Promise<string>; v4: Promise<string>} {
  const marker = (text: string) => async (dir: string) => {
    await mkdir(join(dir, 'files', 'etc', 'pgi'), {recursive: true})
    await writeFile(join(dir, 'files', 'etc', 'pgi', 'e2e-release'), text)
  }
  const v2 = build(V2, marker(`${V2}\n`))
  const v3 = v2.then(() =>
    build(V3, async (dir) => {
      await marker(`${V3}\n`)(dir)
      // trytond can never start: its unit fails before it runs (pgi-upgrade still runs first)
      await mkdir(join(dir, 'files', 'etc', 'systemd', 'system', 'tryton-server.service.d'), {recursive: true})
      await writeFile(join(dir, 'files', 'etc', 'systemd', 'system', 'tryton-server.service.d', 'zz-e2e-broken.conf'), '[Service]\nExecStartPre=/bin/false\n')
    }),
  )
  const v4 = v3.then(() => build(V4, marker(`${V4}\n`)))
  // a failed build is reported by the test that needs it
  for (const p of [v2, v3, v4]) p.catch(() => undefined)
  return {v2, v3, v4}
}

let versions: ReturnType<typeof buildAll>

describe.skipIf(process.env.PGI_E2E_ROLLOUT !== '1')('pgi rollout on a qemu-backed lab', () => {
  beforeAll(async () => {
    const cached = await cachedPgiImage(io)
    v1 = cached.version
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-rollout-'))
    labDir = join(base, 'lab')
    imagesRoot = join(base, 'images')
    // the cache is shared: the versions of this test go to its own images folder, beside a copy of v1
    await mkdir(join(imagesRoot, 'pgi-tryton'), {recursive: true})
    await cp(join(cached.root, 'pgi-tryton', v1), join(imagesRoot, 'pgi-tryton', v1), {recursive: true})
    await cp(join(cached.root, 'trusted-keys'), join(imagesRoot, 'trusted-keys'), {recursive: true})
    versions = buildAll()
    env = {...(process.env as Record<string, string>), PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
    delete env.PGI_INVENTORY
    delete env.PGI_IMAGES_DIR
    await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '2', '--dir', labDir, '--json'])
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    // one wave: both establishments are updated at once (the lab puts the second one in "pilot")
    const inv = await readFile(env.PGI_INVENTORY, 'utf8')
    await writeFile(env.PGI_INVENTORY, inv.replace(/ring: pilot/g, 'ring: canary'))
    const inventory = await loadValidInventory(env.PGI_INVENTORY)
    sites = inventory.establishments
    expect(sites.map((e) => e.ring)).toEqual(['canary', 'canary'])
    const store = await openInventoryStore(inventory, env.PGI_SECRETS_DIR, env)
    api = await new Hypervisors(inventory, {store, io, env}).get(sites[0]!.hypervisor)
    await pgi(['deploy', '--all', '--yes', '--json', '--image', v1, '--images-dir', imagesRoot, '--lab-dir', labDir, '--handoff-dir', join(base, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900'])
    // a class database in each, with students' parties (a different number in each)
    for (const [i, e] of sites.entries()) {
      const made = JSON.parse(await guest(e, ['/usr/local/sbin/pgi-db', 'create', DB])) as {database: string; from?: string}
      expect(made.database).toBe(DB)
      const n = 7 + 5 * i
      await sql(e, `INSERT INTO party_party (name, code, active, create_uid, create_date) SELECT 'Élève ' || g, 'E2E-' || g, true, 0, now() FROM generate_series(1, ${n}) g`)
      extraParties.set(e.uai, n)
      hostKeys.set(e.uai, await hostKey(e))
      expect(await studentParties(e)).toBe(n)
    }
    note(`v1 ${v1} deployed, databases made`)
  }, 90 * 60_000)

  afterAll(async () => {
    await (api as (PveApi & {close?: () => Promise<void>}) | undefined)?.close?.()
    if (labDir) await pgi(['lab', 'stop', '--dir', labDir], {allowFailure: true})
    await versions?.v4.catch(() => undefined)
    if (base && !process.env.PGI_E2E_KEEP) await rm(base, {recursive: true, force: true})
    note('done')
  }, 30 * 60_000)

  it('rolls v2 out: both on v2, databases upgraded, every row kept, old OS disk removed', async () => {
    const v2 = await versions.v2
    const before = new Map<string, number>()
    for (const e of sites) before.set(e.uai, await parties(e))
    const staged = await pgi(['rollout', 'stage', v2, '--all', '--json', '--images-dir', imagesRoot])
    expect((JSON.parse(staged.stdout) as {status: number}).status).toBe(0)
    const plan = await pgi(['rollout', 'plan', v2, '--all', '--json', '--images-dir', imagesRoot])
    const rows = (JSON.parse(plan.stdout) as {result: {rows: {uai: string; current?: string; staged: boolean; action: string}[]}}).result.rows
    expect(rows.map((r) => [r.current, r.staged, r.action])).toEqual([[v1, true, 'update'], [v1, true, 'update']])

    const r = await pgi(rolloutArgs('start', v2))
    const out = parseRollout(r.stdout)
    expect(out.result.establishments.map((e) => [e.outcome, e.step, e.reason]), r.stderr.slice(-3000)).toEqual([['updated', 'committed', undefined], ['updated', 'committed', undefined]])
    expect(out.status).toBe(0)
    expect(r.exitCode).toBe(0)
    await expectOn(v2)
    for (const e of sites) {
      expect(await guest(e, ['cat', '/etc/pgi/e2e-release'])).toBe(`${v2}\n`)
      expect(await parties(e)).toBe(before.get(e.uai))
      const d = await dataDisk(e)
      expect(d.history?.slice(-1)[0]).toMatchObject({to: v2})
      const {meta, unused} = await vm(e)
      expect(meta?.rollout).toMatchObject({step: 'committed', from: v1, to: v2})
      expect(unused).toEqual([])
      // the backup the rollout took is in the local journal
      const manifest = out.result.establishments.find((x) => x.uai === e.uai)!.manifest!
      const m = JSON.parse(await readFile(manifest, 'utf8')) as {databases: {name: string; row_counts: Record<string, number>}[]}
      expect(m.databases.find((d) => d.name === DB)?.row_counts.party_party).toBe(before.get(e.uai))
    }
  }, 45 * 60_000)

  it('rolls a broken v3 out: the gate fails, both are rolled back to v2, healthy, data intact, and it says why', async () => {
    const v3 = await versions.v3
    await pgi(['rollout', 'stage', v3, '--all', '--json', '--images-dir', imagesRoot])
    const r = await pgi(rolloutArgs('start', v3, BROKEN_HEALTH_TIMEOUT), {allowFailure: true})
    const out = parseRollout(r.stdout)
    expect(r.exitCode, r.stderr.slice(-3000)).toBe(4)
    for (const e of out.result.establishments) {
      expect(e.outcome, e.reason).toBe('rolled-back')
      expect(e.step).toBe('rolled-back')
      // why: the gate, what pgi-health said last, and that the databases came back from the backup
      expect(e.reason).toMatch(/^gate: VM \d+ did not become healthy within \d+ s \(last: /)
      expect(e.reason).toMatch(/tryton/i)
      expect(e.reason).toMatch(/databases restored from \/srv\/pgi\/backups\/.*bts_e2e/)
    }
    expect(r.stderr).toMatch(/rolling back to 1\.1\.0: gate:/)
    await expectOn(V2)
    for (const e of sites) {
      expect(await guest(e, ['cat', '/etc/pgi/e2e-release'])).toBe(`${V2}\n`)
      const {meta, unused} = await vm(e)
      expect(meta?.rollout).toMatchObject({step: 'rolled-back', from: V2, to: v3})
      expect(unused).toEqual([])
      expect((await dataDisk(e)).history?.slice(-1)[0]).toMatchObject({to: V2})
    }
  }, 60 * 60_000)

  it('finishes a v4 rollout killed with SIGKILL at a random step with `pgi rollout resume`', async () => {
    const v4 = await versions.v4
    await pgi(['rollout', 'stage', v4, '--all', '--json', '--images-dir', imagesRoot])
    const step = process.env.PGI_E2E_KILL_STEP ?? FORWARD_STEPS[Math.floor(Math.random() * FORWARD_STEPS.length)]!
    note(`killing the v4 rollout once an establishment reached step ${step}`)
    const child = spawnDetached('node', [CLI, ...rolloutArgs('start', v4)], {env, logFile: join(base, 'killed-rollout.log')})
    const journal = join(base, 'state', 'journal', 'rollout')
    const deadline = Date.now() + 40 * 60_000
    let reached: string | undefined
    while (!reached) {
      for (const id of existsSync(journal) ? await readdir(journal) : []) {
        const rec = JSON.parse(await readFile(join(journal, id, 'rollout.json'), 'utf8').catch(() => '{}')) as {version?: string}
        if (rec.version !== v4) continue
        for (const e of sites) {
          const j = JSON.parse(await readFile(join(journal, id, `${e.uai}.json`), 'utf8').catch(() => '{}')) as {step?: string}
          if (j.step === step) reached = `${e.uai} at ${step}`
        }
      }
      if (reached) break
      let alive = true
      try {
        process.kill(child.pid!, 0)
      } catch {
        alive = false
      }
      if (!alive) throw new Error(`the rollout ended before step ${step}:\n${await readFile(join(base, 'killed-rollout.log'), 'utf8')}`)
      if (Date.now() > deadline) throw new Error(`the rollout never reached step ${step}`)
      await new Promise((r) => setTimeout(r, 300))
    }
    process.kill(child.pid!, 'SIGKILL')
    note(`killed: ${reached}`)

    const r = await pgi(rolloutArgs('resume', undefined), {allowFailure: true})
    const out = parseRollout(r.stdout)
    expect(out.result.version).toBe(v4)
    expect(out.result.establishments.map((e) => [e.uai, e.outcome, e.reason]), r.stderr.slice(-3000)).toEqual(sites.map((e) => [e.uai, 'updated', undefined]))
    expect(r.exitCode).toBe(0)
    await expectOn(v4)
    for (const e of sites) {
      expect(await guest(e, ['cat', '/etc/pgi/e2e-release'])).toBe(`${v4}\n`)
      const {meta, unused} = await vm(e)
      expect(meta?.rollout).toMatchObject({step: 'committed', from: V2, to: v4})
      expect(unused).toEqual([])
    }
  }, 60 * 60_000)
})
