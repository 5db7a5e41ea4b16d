/**
 * `pgi deploy` with an `offsite:` section and `pgi backup restore`'s refusals, through the
 * bundled CLI (bin/run.js) against a simulated lab started with `pgi lab start` (the real PVE
 * client over HTTPS, the simulated guest's pgi-offsite --configure), with the real restic on the
 * Région's side (a repository in a temporary folder, opened with the key deploy stored).
 *
 * Each bad input is a clear error with its place and the README's exit code, and changes nothing:
 * no write request reaches the lab. The restore itself (restic in the guest, pg_restore, the
 * checks) is tested natively on the image's pgi-offsite (test/unit/image-tools/test_offsite.py)
 * and on qemu (test/e2e/backup/offsite.test.ts).
 */
import {spawnSync} from 'node:child_process'
import {existsSync} from 'node:fs'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {offsitePasswordKey} from '../../../src/fleet/offsite.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, runPgi, type PgiRun} from '../../helpers/cli.js'
import {labWriteRequests} from '../../helpers/lab-log.js'
import {signedTestImage} from '../../helpers/signed-image.js'

const hasRestic = spawnSync('restic', ['version']).status === 0
const A = '9900001W'
const B = '9900002X'
let base: string
let env: NodeJS.ProcessEnv
let labDir: string
let inv: string
let bare: string
let secrets: string
let images: string
let key: string

async function pgi(args: string[], timeoutMs = 120_000): Promise<PgiRun> {
  return runPgi([...args, '--json'], {env, timeoutMs})
}

function restic(repo: string, args: string[]) {
  const r = spawnSync('restic', ['-r', repo, ...args], {env: {...process.env, RESTIC_PASSWORD: key, RESTIC_CACHE_DIR: join(base, 'cache')}, encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`restic ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

const writeRequests = () => labWriteRequests(labDir)

describe.skipIf(!hasRestic)('pgi deploy with offsite: and pgi backup restore, through the CLI on a simulated lab', () => {
  beforeAll(async () => {
    assertBuilt()
    base = await mkdtemp(join(tmpdir(), 'pgi-restore-cli-'))
    env = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true'}
    labDir = join(base, 'state', 'lab')
    const started = await pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '1', '--sites', '2', '--time-scale', '0.01', '--auth-fail-delay', '10'])
    expect(started.exitCode, started.stderr).toBe(0)
    bare = join(labDir, 'inventory', 'lab.yaml')
    secrets = join(labDir, 'secrets')
    inv = join(base, 'with-offsite.yaml')
    await writeFile(inv, `${await readFile(bare, 'utf8')}\noffsite:\n  repository: "rest:http://10.0.2.100:8000/{uai}/"\n  region_repository: "${base}/repos/{uai}"\n  bandwidth: 2M\n`)
    images = join(base, 'images')
    await signedTestImage(images, 'pgi-tryton', '2026.11.0')
    const dep = await pgi(['deploy', '--all', '--image', '2026.11.0', '--yes', '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--handoff-dir', join(base, 'handoffs'), '--agent-timeout', '60', '--health-timeout', '60'], 300_000)
    expect(dep.exitCode, dep.stderr).toBe(0)
    expect(dep.json!.result.result.outcomes.map((o: {outcome: string; detail: string}) => o.outcome)).toEqual(['created', 'created'])
    const store = await SecretStore.open({dir: secrets, recipients: [], env})
    key = (await store.get(offsitePasswordKey(A))).reveal()
    // the Région's side of A's repository: created as the VM's first push does, one nightly snapshot
    const repo = join(base, 'repos', A)
    restic(repo, ['init'])
    const data = join(base, 'data', 'nightly')
    spawnSync('mkdir', ['-p', data])
    await writeFile(join(data, 'manifest.json'), '{"databases": []}')
    restic(repo, ['backup', '--host', A, '--tag', 'pgi-nightly', '--tag', 'set=20261204T023000Z', join(base, 'data')])
  }, 600_000)
  afterAll(async () => {
    if (labDir && existsSync(join(labDir, 'lab.json'))) await runPgi(['lab', 'stop'], {env})
    if (base) await rm(base, {recursive: true, force: true})
  }, 60_000)

  it('deploy gave each VM its own key (in the store, never in the output) and the journal records it', async () => {
    const store = await SecretStore.open({dir: secrets, recipients: [], env})
    const keyB = (await store.get(offsitePasswordKey(B))).reveal()
    expect(keyB).not.toBe(key)
    const journal = await readFile(join(base, 'state', 'journal', 'deploy', `${A}.json`), 'utf8')
    expect(JSON.parse(journal).steps.offsite).toBeTruthy()
    for (const k of [key, keyB]) {
      expect(journal).not.toContain(k)
      expect(await readFile(join(labDir, 'requests.jsonl'), 'utf8')).not.toContain(k)
    }
    // a second deploy: up to date, nothing sent
    const before = await writeRequests()
    const again = await pgi(['deploy', '--all', '--image', '2026.11.0', '--yes', '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--handoff-dir', join(base, 'handoffs')])
    expect(again.exitCode, again.stderr).toBe(0)
    expect(again.json!.result.result.outcomes.map((o: {outcome: string}) => o.outcome)).toEqual(['up-to-date', 'up-to-date'])
    expect(await writeRequests()).toBe(before)
  })

  it('pgi status shows the off-site copy the servers report, judged against the inventory\'s threshold; Prometheus has no age before a first copy', async () => {
    const st = await pgi(['status', '--all', '-i', inv, '--secrets-dir', secrets])
    expect(st.exitCode, st.stderr).toBe(0)
    for (const e of st.json!.result.establishments) {
      expect(e.offsite).toEqual({configured: true, state: 'pending', lastSuccess: null, ageS: null, errorClass: null})
      expect(e.verdict).toBe('healthy')
      expect(e.notes).toContain('no off-site copy yet')
    }
    const prom = await runPgi(['status', '--all', '-i', inv, '--secrets-dir', secrets, '--format', 'prometheus'], {env})
    expect(prom.exitCode, prom.stderr).toBe(0)
    expect(prom.stdout).toContain('pgi_up{')
    expect(prom.stdout).not.toContain('pgi_offsite_backup_age_seconds{')
  })

  const bad: [string, () => string[], number, string, RegExp, Record<string, unknown>?][] = [
    ['an unknown source UAI', () => ['backup', 'restore', '0130099K', '--to', B, '-i', inv], 2, 'PGI_UNKNOWN_ESTABLISHMENT', /0130099K/],
    ['an unknown target UAI', () => ['backup', 'restore', A, '--to', '0130099K', '-i', inv], 2, 'PGI_UNKNOWN_ESTABLISHMENT', /0130099K/],
    ['--to the same UAI', () => ['backup', 'restore', A, '--to', A, '-i', inv], 2, 'PGI_USAGE', /names the establishment being restored/, {flag: 'to'}],
    ['a malformed --snapshot', () => ['backup', 'restore', A, '--to', B, '--snapshot', 'last;rm', '-i', inv], 2, 'PGI_USAGE', /not a snapshot id/, {flag: 'snapshot'}],
    ['no offsite: section', () => ['backup', 'restore', A, '--to', B, '-i', bare, '--secrets-dir', secrets], 3, 'PGI_BACKUP_NOT_CONFIGURED', /no offsite: section/],
    ['a snapshot that is not there', () => ['backup', 'restore', A, '--to', B, '--snapshot', 'deadbeef', '-i', inv, '--secrets-dir', secrets], 3, 'PGI_OFFSITE_SNAPSHOT_NOT_FOUND', /no off-site snapshot deadbeef/, {flag: 'snapshot'}],
    ['a source whose repository has no snapshot', () => ['backup', 'restore', B, '--to', A, '-i', inv, '--secrets-dir', secrets], 1, 'PGI_OFFSITE_FAILED', /no_repository/],
    ['--replace without confirmation in a script', () => ['backup', 'restore', A, '--to', B, '--replace', '-i', inv, '--secrets-dir', secrets], 2, 'PGI_FLAG_REQUIRED', /--yes/],
    ['--to missing', () => ['backup', 'restore', A, '-i', inv], 2, 'PGI_USAGE', /missing required flag --to/],
  ]
  it.each(bad)('refuses %s: clear error, exit code of the README, nothing sent to the lab', async (_what, args, exit, code, message, where) => {
    const before = await writeRequests()
    const r = await pgi(args())
    expect(r.exitCode, r.stderr).toBe(exit)
    expect(r.json!.error!.code).toBe(code)
    expect(r.json!.error!.message).toMatch(message)
    if (where) expect(r.json!.error!.where).toMatchObject(where)
    expect(r.json!.error!.suggestions.length).toBeGreaterThan(0)
    expect(r.stdout + r.stderr).not.toContain(key)
    expect(await writeRequests()).toBe(before)
  })
})
