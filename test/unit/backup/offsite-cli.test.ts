/**
 * `pgi backup list` (off-site part) and `pgi backup prune` through the bundled CLI (bin/run.js),
 * with the real restic on a repository in a temporary folder (the Région's side of
 * docs/backups.md), the inventory's `offsite:` section and its validation, and the repository key
 * in the real secret store (age). The VM's side (pgi-offsite) has its own native suite
 * (test/unit/image-tools/test_offsite.py).
 */
import {spawnSync} from 'node:child_process'
import {cp, mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureOffsitePassword, offsitePasswordKey} from '../../../src/backup/offsite.js'
import {Secret} from '../../../src/secret.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, runPgi} from '../../helpers/cli.js'
import {ageKey, twoEstablishmentsInventory} from '../credentials/fixtures.js'

const hasRestic = spawnSync('restic', ['version']).status === 0
let tmp: string
let env: NodeJS.ProcessEnv
let inv: string
let store: SecretStore
let password: string

function inventory(offsite: string): string {
  const key = env.PGI_TEST_RECIPIENT!
  return twoEstablishmentsInventory({recipients: [{name: 'tech', key}], amiA: key, amiB: key, extra: offsite})
}

function restic(repo: string, pw: string, args: string[]) {
  const r = spawnSync('restic', ['-r', repo, ...args], {env: {...process.env, RESTIC_PASSWORD: pw, RESTIC_CACHE_DIR: join(tmp, 'cache')}, encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`restic ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

describe.skipIf(!hasRestic)('pgi backup list / prune (off-site, restic)', () => {
  beforeAll(async () => {
    assertBuilt()
    tmp = await mkdtemp(join(tmpdir(), 'pgi-backup-'))
    const tech = await ageKey(tmp, 'tech')
    env = {...process.env, PGI_STATE_DIR: join(tmp, 'state'), PGI_AGE_IDENTITY: tech.file, PGI_SECRETS_DIR: join(tmp, 'secrets'), PGI_TEST_RECIPIENT: tech.recipient}
    inv = join(tmp, 'inventory.yaml')
    await writeFile(
      inv,
      inventory(`offsite:
  repository: "rest:http://10.0.2.100:8000/{uai}/"
  region_repository: "${tmp}/repos/{uai}"
  retention: {daily: 2, weekly: 0, monthly: 0}
  bandwidth: 2M
  window: "01:00-06:00"
`),
    )
    store = await SecretStore.open({dir: join(tmp, 'secrets'), recipients: [tech.recipient]})
    password = (await ensureOffsitePassword(store, '0130040Y')).password.reveal()
    // what the VM's pushes leave: three nights, the set tag pgi-offsite gives
    const repo = join(tmp, 'repos', '0130040Y')
    await mkdir(join(tmp, 'data', 'nightly'), {recursive: true})
    restic(repo, password, ['init'])
    for (const [day, fill] of [['2026-12-01', 'a'], ['2026-12-02', 'b'], ['2026-12-03', 'c']] as const) {
      await writeFile(join(tmp, 'data', 'nightly', 'pgi.dump'), fill.repeat(300_000))
      const stamp = `${day.replace(/-/g, '')}T023000Z`
      restic(repo, password, ['backup', '--host', '0130040Y', '--tag', 'pgi-nightly', '--tag', `set=${stamp}`, '--time', `${day} 02:30:00`, join(tmp, 'data')])
    }
  }, 120_000)
  afterAll(async () => {
    if (tmp) await rm(tmp, {recursive: true, force: true})
  })

  it('lists the off-site snapshots, newest first, with their set and size; the key is never shown', async () => {
    const r = await runPgi(['backup', 'list', '0130040Y', '--no-local', '-i', inv, '--json'], {env})
    expect(r.exitCode, r.stderr).toBe(0)
    const rows = r.json!.result.backups as {where: string; kind: string; set: string; size: number; date: string}[]
    expect(rows.map((b) => [b.where, b.kind, b.set])).toEqual([
      ['offsite', 'snapshot', '20261203T023000Z'],
      ['offsite', 'snapshot', '20261202T023000Z'],
      ['offsite', 'snapshot', '20261201T023000Z'],
    ])
    expect(rows.every((b) => b.size === 300_000)).toBe(true)
    expect(r.json!.result.repository).toBe(join(tmp, 'repos', '0130040Y'))
    expect(r.stdout + r.stderr).not.toContain(password)
    // the server cannot be asked (no hypervisor answers here): the off-site part is still listed, exit 4
    const both = await runPgi(['backup', 'list', '0130040Y', '-i', inv, '--json'], {env: {...env, PGI_TOKEN_HV_TEST: 'pgi@pve!deploy=00000000-0000-0000-0000-000000000000'}, timeoutMs: 120_000})
    expect(both.exitCode, both.stderr).toBe(4)
    expect(both.json!.result.localError).toMatch(/127\.0\.0\.1|hv-test|reach|connect/i)
    expect(both.json!.result.backups).toHaveLength(3)
    const table = await runPgi(['backup', 'list', '0130040Y', '--no-local', '-i', inv], {env})
    expect(table.exitCode, table.stderr).toBe(0)
    expect(table.stdout).toMatch(/offsite[ │]+[0-9a-f]{8}[ │]+snapshot of 20261203T023000Z[ │]+2026-12-03T02:30:00Z[ │]+300 KB/)
  }, 120_000)

  it('an establishment without a key, or with a wrong one, is told (exit 4), naming it', async () => {
    const none = await runPgi(['backup', 'list', '0130041Z', '--no-local', '-i', inv, '--json'], {env})
    expect(none.exitCode).toBe(4)
    expect(none.json!.result.offsiteError).toContain('establishments/0130041Z/offsite-password')
    await store.put(offsitePasswordKey('0130041Z'), new Secret('not-the-key-of-0130040Y'))
    const wrong = await runPgi(['backup', 'list', '0130041Z', '--no-local', '-i', inv, '--json'], {env})
    expect(wrong.exitCode).toBe(4)
    expect(wrong.json!.result.offsiteErrorClass).toBe('no_repository')
    // a repository its key does not open (another establishment's, copied where its own would be)
    await cp(join(tmp, 'repos', '0130040Y'), join(tmp, 'repos', '0130041Z'), {recursive: true})
    const wrongKey = await runPgi(['backup', 'list', '0130041Z', '--no-local', '-i', inv, '--json'], {env})
    expect(wrongKey.exitCode).toBe(4)
    expect(wrongKey.json!.result.offsiteErrorClass).toBe('wrong_key')
    expect(wrongKey.stdout + wrongKey.stderr).not.toContain('not-the-key-of-0130040Y')
  }, 120_000)

  it('prune: --dry-run says what would go; without --yes nothing is removed in CI; --yes applies the retention', async () => {
    const dry = await runPgi(['backup', 'prune', '0130040Y', '--dry-run', '-i', inv, '--json'], {env})
    expect(dry.exitCode, dry.stderr).toBe(0)
    expect(dry.json!.result[0]).toMatchObject({uai: '0130040Y', ok: true, dryRun: true})
    expect(dry.json!.result[0].kept).toHaveLength(2)
    expect(dry.json!.result[0].removed).toHaveLength(1)
    const refused = await runPgi(['backup', 'prune', '0130040Y', '-i', inv, '--json'], {env})
    expect(refused.exitCode).toBe(2)
    expect(JSON.parse(restic(join(tmp, 'repos', '0130040Y'), password, ['snapshots', '--json']))).toHaveLength(3)
    const done = await runPgi(['backup', 'prune', '0130040Y', '--yes', '-i', inv, '--json'], {env})
    expect(done.exitCode, done.stderr).toBe(0)
    expect(done.json!.result[0].removed).toEqual(dry.json!.result[0].removed)
    const left = JSON.parse(restic(join(tmp, 'repos', '0130040Y'), password, ['snapshots', '--json'])) as {tags: string[]}[]
    expect(left.map((s) => s.tags.find((t) => t.startsWith('set='))).sort()).toEqual(['set=20261202T023000Z', 'set=20261203T023000Z'])
    expect(spawnSync('restic', ['-r', join(tmp, 'repos', '0130040Y'), 'check'], {env: {...process.env, RESTIC_PASSWORD: password, RESTIC_CACHE_DIR: join(tmp, 'cache')}}).status).toBe(0)
    // one establishment failing does not stop the others: exit 4
    const both = await runPgi(['backup', 'prune', '--all', '--yes', '-i', inv, '--json'], {env})
    expect(both.exitCode).toBe(4)
    expect(both.json!.result.map((r: {uai: string; ok: boolean}) => [r.uai, r.ok])).toEqual([['0130040Y', true], ['0130041Z', false]])
  }, 180_000)

  it('the offsite: section is validated with places: a repository shared by every establishment, a bad bandwidth', async () => {
    const bad = join(tmp, 'bad.yaml')
    await writeFile(bad, inventory(`offsite:\n  repository: "rest:https://sauvegardes.example:8000/commun/"\n  bandwidth: 2G\n`))
    const r = await runPgi(['inventory', 'validate', '-i', bad, '--json'], {env})
    expect(r.exitCode).toBe(3)
    const text = JSON.stringify(r.json)
    expect(text).toContain('offsite-shared-repository')
    expect(text).toMatch(/bandwidth/)
    expect(r.json!.error!.details!.problems).toMatchObject([
      {rule: 'offsite-shared-repository', line: 30, column: 15},
      {rule: 'offsite-bandwidth', line: 31, column: 14},
    ])
    const none = join(tmp, 'none.yaml')
    await writeFile(none, inventory(''))
    const n = await runPgi(['backup', 'prune', '--all', '--yes', '-i', none, '--json'], {env})
    expect(n.exitCode).toBe(3)
    expect(n.json!.error!.code).toBe('PGI_BACKUP_NOT_CONFIGURED')
  }, 120_000)
})
