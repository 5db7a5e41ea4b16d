/**
 * The GitLab pipeline of examples/ci runs as written: each job's `script:` lines, extracted from
 * the YAML (with the `variables:` and `extends:` they get), run by bash in order against a
 * simulated lab (`pgi lab start --backend simulated`, its own process, real HTTPS) — validate →
 * plan (merge request) → stage → canary → pilot cancelled by SIGTERM mid-wave (the job's process
 * group, as a runner cancels it) → the pilot job run again, which resumes → general → the
 * scheduled status. Every establishment ends on the new version; every JUnit file validates
 * against test/schemas/junit.xsd (xmllint) and, together, they list every establishment. The
 * store's identity comes from PGI_AGE_SECRET_KEY only: no key file on the "runner", and the key
 * appears in no output (debug level) and no file. Needs `npm run build`.
 */
import {spawn, spawnSync} from 'node:child_process'
import {existsSync} from 'node:fs'
import {chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {parse, stringify} from 'yaml'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Inventory} from '../../../src/inventory/types.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, CLI, ROOT, runPgi} from '../../helpers/cli.js'
import {signedTestImage} from '../../helpers/signed-image.js'

const XSD = join(ROOT, 'test', 'schemas', 'junit.xsd')
const PIPELINE = join(ROOT, 'examples', 'ci', '.gitlab-ci.yml')
const V1 = '2026.11.0'
const V2 = '2026.12.0'

let base: string
let labDir: string
let repo: string
let images: string
let admin: NodeJS.ProcessEnv
let inventory: Inventory
let key: string
const outputs: string[] = []

type Job = {script: string[]; variables?: Record<string, string>; extends?: string | string[]}
let jobs: Record<string, Job>
let globalVars: Record<string, string>

/** A job with what `extends:` gives it (GitLab merges the hidden jobs' keys, the job's own win). */
function resolveJob(name: string): Job {
  const raw = jobs[name] as Job | undefined
  if (!raw) throw new Error(`no job ${name} in ${PIPELINE}`)
  const parents = raw.extends ? (Array.isArray(raw.extends) ? raw.extends : [raw.extends]) : []
  return Object.assign({}, ...parents.map(resolveJob), raw) as Job
}

interface JobRun {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** ms from the SIGTERM to the last process of the job gone (pipes closed). */
  afterTermMs?: number
}

/**
 * Runs a job as GitLab's shell executor does: one bash, the variables exported, each script line
 * in order, stopping at the first that fails. `cancelWhen` is polled; when it says so, the job's
 * process group gets SIGTERM (what a cancelled job gets).
 */
async function runJob(name: string, ci: Record<string, string>, cancelWhen?: () => Promise<boolean>): Promise<JobRun> {
  const job = resolveJob(name)
  await rm(join(repo, '.pgi-state'), {recursive: true, force: true}) // every job starts on a fresh runner
  const vars = {...globalVars, ...(job.variables ?? {})}
  const lines = ['set -eo pipefail', ...Object.entries(vars).map(([k, v]) => `export ${k}="${v}"`), ...Object.entries(ci).map(([k, v]) => `export ${k}='${v}'`), ...job.script]
  const env: NodeJS.ProcessEnv = {PATH: `${join(base, 'bin')}:${process.env.PATH}`, HOME: join(base, 'home'), CI: 'true', CI_PROJECT_DIR: repo, CI_JOB_NAME: name, CI_COMMIT_BRANCH: 'main', CI_DEFAULT_BRANCH: 'main', PGI_IMAGES_DIR: images, PGI_AGE_SECRET_KEY: key}
  return new Promise((done, fail) => {
    const child = spawn('bash', ['-c', lines.join('\n')], {cwd: repo, env, detached: true, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    let termAt: number | undefined
    let poller: NodeJS.Timeout | undefined
    if (cancelWhen) {
      const tick = async () => {
        if (termAt) return
        if (await cancelWhen().catch(() => false)) {
          termAt = performance.now()
          process.kill(-child.pid!, 'SIGTERM')
          return
        }
        poller = setTimeout(() => void tick(), 40)
      }
      poller = setTimeout(() => void tick(), 40)
    }
    const killer = setTimeout(() => process.kill(-child.pid!, 'SIGKILL'), 240_000)
    child.on('error', fail)
    child.on('close', (code, signal) => {
      clearTimeout(killer)
      clearTimeout(poller)
      outputs.push(stdout, stderr)
      done({code, signal, stdout, stderr, ...(termAt ? {afterTermMs: performance.now() - termAt} : {})})
    })
  })
}

async function vmMeta(uai: string) {
  const e = inventory.establishments.find((x) => x.uai === uai)!
  const store = await SecretStore.open({dir: join(repo, 'secrets'), recipients: [], env: admin})
  const hv = inventory.hypervisors.get(e.hypervisor)!
  const api = connectHypervisor(hv, {tokenSecret: await store.get((hv.token.secret as {store: string}).store)})
  try {
    return parseDescription(String((await api.vmConfig(e.node, e.vmid))!.description))!
  } finally {
    await api.close()
  }
}

async function junit(file: string): Promise<{valid: boolean; why: string; names: string[]; xml: string}> {
  const r = spawnSync('xmllint', ['--noout', '--schema', XSD, file], {encoding: 'utf8'})
  const xml = await readFile(file, 'utf8')
  return {valid: r.status === 0, why: r.stderr, names: [...xml.matchAll(/<testcase [^>]*name="([^"]*)"/g)].map((m) => m[1]!), xml}
}

/** Every report file written so far, by job run (copied after each run: a re-run overwrites). */
const reports: {run: string; file: string}[] = []
async function keepReports(run: string): Promise<void> {
  const dir = join(repo, 'reports')
  if (!existsSync(dir)) return
  const to = join(base, 'artifacts', run)
  await mkdir(to, {recursive: true})
  for (const f of await readdir(dir)) {
    await cp(join(dir, f), join(to, f))
    if (f.endsWith('.xml')) reports.push({run, file: join(to, f)})
  }
  await rm(dir, {recursive: true, force: true})
}

const ok = (r: JobRun) => expect(r.code, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-1500)}`).toBe(0)

beforeAll(async () => {
  assertBuilt()
  base = await mkdtemp(join(tmpdir(), 'pgi-ci-pipeline-'))
  labDir = join(base, 'lab')
  images = join(base, 'images')
  repo = join(base, 'region-repo')
  await signedTestImage(images, 'pgi-tryton', V1)
  await signedTestImage(images, 'pgi-tryton', V2)
  // `pgi` on the runner's PATH: the bundled CLI
  await mkdir(join(base, 'bin'), {recursive: true})
  await writeFile(join(base, 'bin', 'pgi'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`)
  await chmod(join(base, 'bin', 'pgi'), 0o755)
  await mkdir(join(base, 'home'), {recursive: true})

  // the technician's machine: a simulated lab of 2 hypervisors and 8 establishments, deployed with V1
  admin = {...process.env, PGI_STATE_DIR: join(base, 'admin-state'), CI: 'true', PGI_LOG_LEVEL: 'warn'}
  for (const k of ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_AGE_SECRET_KEY', 'PGI_AGE_IDENTITY']) delete admin[k]
  const lab = await runPgi(['lab', 'start', '--backend', 'simulated', '--nodes', '2', '--sites', '8', '--dir', labDir, '--time-scale', '0.05', '--auth-fail-delay', '10', '--json'], {env: admin, timeoutMs: 120_000})
  expect(lab.exitCode, lab.stderr).toBe(0)

  // the Région's repository: the inventory (3 establishments in the pilot ring) and the secret store
  await mkdir(join(repo, 'inventory'), {recursive: true})
  const doc = parse(await readFile(join(labDir, 'inventory', 'lab.yaml'), 'utf8')) as {establishments: {ring: string}[]}
  doc.establishments.forEach((e, i) => (e.ring = i === 0 ? 'canary' : i <= 3 ? 'pilot' : 'general'))
  await writeFile(join(repo, 'inventory', 'region.yaml'), stringify(doc, {lineWidth: 0}))
  await cp(join(labDir, 'secrets'), join(repo, 'secrets'), {recursive: true})
  inventory = await loadValidInventory(join(repo, 'inventory'))
  const dep = await runPgi(['deploy', '--all', '--image', V1, '--yes', '--json', '-i', join(repo, 'inventory'), '--secrets-dir', join(repo, 'secrets'), '--images-dir', images, '--handoff-dir', join(base, 'handoffs'), '--agent-timeout', '60', '--health-timeout', '60'], {env: admin, timeoutMs: 300_000})
  expect(dep.exitCode, dep.stderr.slice(-3000)).toBe(0)

  // the CI variable: the key itself (the store is encrypted to the technician's identity)
  key = (await readFile(join(base, 'admin-state', 'age-identity.txt'), 'utf8')).split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-'))!
  expect(key).toBeTruthy()

  const y = parse(await readFile(PIPELINE, 'utf8')) as Record<string, unknown>
  globalVars = y.variables as Record<string, string>
  jobs = y as Record<string, Job>
}, 600_000)

afterAll(async () => {
  if (labDir && existsSync(join(labDir, 'lab.json'))) await runPgi(['lab', 'stop', '--dir', labDir, '--json'], {env: admin, timeoutMs: 120_000})
  if (base && !process.env.PGI_KEEP_TEST_DIR) await rm(base, {recursive: true, force: true})
}, 180_000)

describe('the GitLab pipeline of examples/ci, job by job, on a simulated lab', () => {
  // project CI/CD variables (they override the file's `variables:`, as in GitLab)
  const ci = (source: string) => ({CI_PIPELINE_SOURCE: source, PGI_VERSION: V2, PGI_MAX_PARALLEL: '1', PGI_LOG_LEVEL: 'debug'})

  it('merge request: validate, then plan', async () => {
    const v = await runJob('validate', ci('merge_request_event'))
    ok(v)
    await keepReports('validate')
    const p = await runJob('plan', ci('merge_request_event'))
    ok(p)
    const md = await readFile(join(repo, 'reports', 'plan.md'), 'utf8')
    for (const e of inventory.establishments) expect(md).toContain(e.uai)
    expect(md).toMatch(/8 to update/)
    await keepReports('plan')
  })

  it('main: stage, then the canary wave', async () => {
    ok(await runJob('stage-image', ci('push')))
    const c = await runJob('canary', ci('push'))
    ok(c)
    expect(c.stderr).toMatch(/nothing to resume/)
    const res = JSON.parse(await readFile(join(repo, 'reports', 'canary.json'), 'utf8'))
    expect(res.result.establishments.map((e: {outcome: string}) => e.outcome)).toEqual(['updated'])
    await keepReports('canary')
  })

  it('the pilot wave, cancelled by SIGTERM mid-wave: stops within seconds, says where each establishment stands', async () => {
    const pilot = inventory.establishments.filter((e) => e.ring === 'pilot')
    expect(pilot).toHaveLength(3)
    // cancelled while the second pilot establishment is mid-way (its mark names V2 at a step before the end)
    const cancel = async () => {
      const m = (await vmMeta(pilot[1]!.uai)).rollout
      return m !== undefined && m.to === V2 && ['checked', 'backed-up', 'stopped', 'swapped', 'started'].includes(m.step)
    }
    const r = await runJob('pilot', ci('push'), cancel)
    expect(r.afterTermMs, 'the job was not cancelled').toBeDefined()
    // well within GitHub's ~10 s grace period
    expect(r.afterTermMs!).toBeLessThan(8000)
    const json = JSON.parse(await readFile(join(repo, 'reports', 'pilot.json'), 'utf8'))
    expect(json.status).toBe(130)
    const outcomes = json.result.establishments.map((e: {uai: string; outcome: string}) => [e.uai, e.outcome])
    expect(outcomes).toEqual([
      [pilot[0]!.uai, 'updated'],
      [pilot[1]!.uai, 'interrupted'],
      [pilot[2]!.uai, 'not-started'],
    ])
    expect(json.result.reason).toBe('stopped by SIGTERM')
    const tail = r.stderr.trimEnd().split('\n').slice(-4).join('\n')
    expect(tail).toMatch(/stopped by SIGTERM: nothing new was started; 1 establishment\(s\) finished, 1 left mid-way, 1 not started/)
    expect(tail).toContain(`${pilot[1]!.uai}: at step `)
    expect(tail).toMatch(/pgi rollout resume --id /)
    // the VM keeps the step it reached (no rollback started, no failure recorded), the lock is released
    const m = (await vmMeta(pilot[1]!.uai)).rollout!
    expect(['checked', 'backed-up', 'stopped', 'swapped', 'started', 'gated']).toContain(m.step)
    for (const e of inventory.establishments) expect((await vmMeta(e.uai)).fleetLock).toBeUndefined()
    const x = await junit(join(repo, 'reports', 'pilot.xml'))
    expect(x.valid, x.why).toBe(true)
    expect(x.xml).toMatch(/<error type="interrupted"/)
    await keepReports('pilot-cancelled')
  })

  it('the pilot job run again: resumes the interrupted establishment, then finishes the wave', async () => {
    const pilot = inventory.establishments.filter((e) => e.ring === 'pilot')
    const r = await runJob('pilot', ci('push'))
    ok(r)
    const resumed = JSON.parse(await readFile(join(repo, 'reports', 'pilot-resume.json'), 'utf8'))
    expect(resumed.result.establishments.map((e: {uai: string; outcome: string}) => [e.uai, e.outcome])).toEqual([[pilot[1]!.uai, 'updated']])
    const wave = JSON.parse(await readFile(join(repo, 'reports', 'pilot.json'), 'utf8'))
    expect(wave.result.establishments.map((e: {outcome: string}) => e.outcome)).toEqual(['already', 'already', 'updated'])
    await keepReports('pilot')
  })

  it('the general wave, then the scheduled status: every establishment on the new version and healthy', async () => {
    ok(await runJob('general', ci('push')))
    await keepReports('general')
    const s = await runJob('status', ci('schedule'))
    ok(s)
    const prom = await readFile(join(repo, 'reports', 'pgi.prom'), 'utf8')
    for (const e of inventory.establishments) expect(prom).toContain(e.uai)
    await keepReports('status')
    for (const e of inventory.establishments) expect((await vmMeta(e.uai)).image, e.uai).toBe(V2)
    const st = await runPgi(['status', '--all', '--json', '-i', join(repo, 'inventory'), '--secrets-dir', join(repo, 'secrets')], {env: admin, timeoutMs: 120_000})
    expect(st.exitCode, st.stderr).toBe(0)
    for (const e of st.json!.result.establishments) expect(e.image.running).toBe(V2)
  })

  it('every JUnit file validates; the waves list every establishment, and so does the status report', async () => {
    expect(reports.length).toBeGreaterThanOrEqual(7)
    const waves = new Set<string>()
    for (const r of reports) {
      const x = await junit(r.file)
      expect(x.valid, `${r.run}/${r.file}: ${x.why}`).toBe(true)
      if (['canary', 'pilot', 'general'].includes(r.run) && !r.file.endsWith('-resume.xml')) for (const n of x.names) waves.add(n.split(' ')[0]!)
    }
    expect([...waves].sort()).toEqual(inventory.establishments.map((e) => e.uai).sort())
    const status = await junit(reports.find((r) => r.run === 'status')!.file)
    expect(status.names.map((n) => n.split(' ')[0]).sort()).toEqual(inventory.establishments.map((e) => e.uai).sort())
    const inv = await junit(reports.find((r) => r.run === 'validate')!.file)
    expect(inv.names.length).toBeGreaterThan(0)
  })

  it('the store identity came from PGI_AGE_SECRET_KEY only: no key file on the runner, the key in no output (debug level) and no file', async () => {
    expect(existsSync(join(base, 'home', '.local', 'state', 'pgi', 'age-identity.txt'))).toBe(false)
    expect(existsSync(join(repo, '.pgi-state', 'age-identity.txt'))).toBe(false)
    expect(outputs.join('\n')).toContain('debug: ') // the jobs did run at debug level
    for (const o of outputs) expect(o.includes(key)).toBe(false)
    const grep = spawnSync('grep', ['-rlF', key, repo, join(base, 'artifacts')], {encoding: 'utf8'})
    expect(grep.stdout).toBe('')
    expect(grep.status).toBe(1) // 1: no file holds it (2 would be an error)
  })
})


