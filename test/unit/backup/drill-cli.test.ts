/**
 * `pgi backup drill` and `pgi backup restore --to-lab` through the bundled CLI (bin/run.js) on a
 * simulated lab started with `pgi lab start`: the real PVE client over HTTPS, scratch VMs created
 * from a signed image on the inventory's drill hypervisor, the simulated guest's pgi-offsite
 * (src/lab/simulated-offsite.ts: the real restic on a folder standing for the Région's REST
 * server) pushing a VM's nightly set and restoring it, and `pgi status` reading the drill record.
 *
 * A's copy is pushed by its own VM (pgi-backup, then pgi-offsite) and passes; B's repository
 * holds a set whose manifest does not match its dump (a damaged backup): the drill fails with the
 * reason, exit 5, and its scratch VM is removed all the same. Bad input changes nothing on the lab.
 */
import {spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {offsitePasswordKey} from '../../../src/fleet/offsite.js'
import {formatDescription} from '../../../src/fleet/vm-meta.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {assertBuilt, runPgi, type PgiRun} from '../../helpers/cli.js'
import {labWriteRequests} from '../../helpers/lab-log.js'
import {signedTestImage} from '../../helpers/signed-image.js'

const hasRestic = spawnSync('restic', ['version']).status === 0
const A = '9900001W'
const B = '9900002X'
const FIRST = 9900
const LAST = 9909
let base: string
let env: NodeJS.ProcessEnv
let labDir: string
let inv: string
let noDrill: string
let secrets: string
let images: string
let api: ReturnType<typeof connectHypervisor>
let node: string

async function pgi(args: string[], timeoutMs = 180_000): Promise<PgiRun> {
  return runPgi([...args, '--json'], {env, timeoutMs})
}

const writeRequests = () => labWriteRequests(labDir)

async function vmsInRange(): Promise<number[]> {
  return (await api.clusterResources('vm')).map((r) => r.vmid!).filter((id) => id >= FIRST && id <= LAST).sort()
}

async function guest(vmid: number, command: string[]): Promise<string> {
  const r = await api.agentExec(node, vmid, command, {timeoutMs: 120_000})
  if (r.exitcode !== 0) throw new Error(`${command.join(' ')} in VM ${vmid}: exit ${r.exitcode}: ${r.stderr} ${r.stdout}`)
  return r.stdout
}

describe.skipIf(!hasRestic)('pgi backup drill and restore --to-lab, through the CLI on a simulated lab', () => {
  beforeAll(async () => {
    assertBuilt()
    base = await mkdtemp(join(tmpdir(), 'pgi-drill-cli-'))
    // the folder the simulated lab serves as the Région's restic REST server (read by the lab daemon)
    env = {...process.env, PGI_STATE_DIR: join(base, 'state'), PGI_LAB_OFFSITE_DIR: join(base, 'offsite'), CI: 'true'}
    labDir = join(base, 'state', 'lab')
    const started = await pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '1', '--sites', '2', '--time-scale', '0.01', '--auth-fail-delay', '10'])
    expect(started.exitCode, started.stderr).toBe(0)
    const bare = join(labDir, 'inventory', 'lab.yaml')
    secrets = join(labDir, 'secrets')
    const lab = await loadValidInventory(bare)
    const [hvName, hv] = [...lab.hypervisors][0]!
    node = hv.nodes[0]!
    const offsite = `\noffsite:\n  repository: "rest:http://10.0.2.100:8000/{uai}/"\n  region_repository: "${base}/offsite/{uai}"\n`
    noDrill = join(base, 'no-drill.yaml')
    await writeFile(noDrill, `${await readFile(bare, 'utf8')}${offsite}`)
    inv = join(base, 'with-drill.yaml')
    await writeFile(inv, `${await readFile(bare, 'utf8')}${offsite}  drill:\n    hypervisor: ${hvName}\n    vmids: [${FIRST}, ${LAST}]\n    network: {address: 10.0.9.10/24, gateway: 10.0.9.1}\n    max_age_days: 8\n`)
    images = join(base, 'images')
    await signedTestImage(images, 'pgi-tryton', '2026.11.0')
    const dep = await pgi(['deploy', '--all', '--image', '2026.11.0', '--yes', '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--handoff-dir', join(base, 'handoffs'), '--agent-timeout', '60', '--health-timeout', '60'], 300_000)
    expect(dep.exitCode, dep.stderr).toBe(0)
    const store = await SecretStore.open({dir: secrets, recipients: [], env})
    api = connectHypervisor(hv, {tokenSecret: await store.get(`hypervisors/${hvName}/token`)})
    const vmOf = (uai: string) => lab.establishments.find((e) => e.uai === uai)!.vmid
    // A: its VM's nightly backup, pushed off-site by the VM itself
    await guest(vmOf(A), ['/usr/local/sbin/pgi-backup'])
    expect(JSON.parse(await guest(vmOf(A), ['/usr/local/sbin/pgi-offsite', '--now'])).snapshot).toBeTruthy()
    // B: a set whose manifest says other row counts than its dump holds (a damaged backup)
    const keyB = (await store.get(offsitePasswordKey(B))).reveal()
    const stage = join(base, 'b-stage')
    await mkdir(join(stage, 'nightly'), {recursive: true})
    const dump = Buffer.from(JSON.stringify({format: 'pgi-simulated-dump', modules: {ir: '6.0.0'}, rows: {res_user: 2, party_party: 5}}))
    await writeFile(join(stage, 'nightly', 'pgi.dump'), dump)
    await writeFile(join(stage, 'nightly', 'manifest.json'), JSON.stringify({databases: [{name: 'pgi', file: 'pgi.dump', sha256: createHash('sha256').update(dump).digest('hex'), row_counts: {res_user: 2, party_party: 6}}]}))
    const resticEnv = {...process.env, RESTIC_PASSWORD: keyB, RESTIC_CACHE_DIR: join(base, 'cache')}
    const repoB = join(base, 'offsite', B)
    for (const args of [['init'], ['backup', '--host', B, '--tag', 'pgi-nightly', '--tag', 'set=20261204T023000Z', stage]]) {
      const r = spawnSync('restic', ['-r', repoB, ...args], {env: resticEnv, encoding: 'utf8'})
      if (r.status !== 0) throw new Error(`restic ${args[0]}: ${r.stderr}`)
    }
  }, 600_000)
  afterAll(async () => {
    await api?.close()
    if (labDir && existsSync(join(labDir, 'lab.json'))) await runPgi(['lab', 'stop'], {env})
    if (base) await rm(base, {recursive: true, force: true})
  }, 60_000)

  const bad: [string, () => string[], number, string, RegExp][] = [
    ['an unknown establishment', () => ['backup', 'drill', '0130099K', '-i', inv, '--secrets-dir', secrets, '--images-dir', images], 2, 'PGI_UNKNOWN_ESTABLISHMENT', /0130099K/],
    ['no drill hypervisor in the inventory', () => ['backup', 'drill', A, '-i', noDrill, '--secrets-dir', secrets, '--images-dir', images], 3, 'PGI_BACKUP_NOT_CONFIGURED', /no offsite\.drill/],
    ['--sample 0', () => ['backup', 'drill', '--sample', '0', '-i', inv, '--secrets-dir', secrets, '--images-dir', images], 2, 'PGI_USAGE', /--sample 0/],
    ['--to-lab without a drill hypervisor', () => ['backup', 'restore', A, '--to-lab', '-i', noDrill, '--secrets-dir', secrets, '--images-dir', images], 3, 'PGI_BACKUP_NOT_CONFIGURED', /no offsite\.drill/],
    ['--to-lab with --to', () => ['backup', 'restore', A, '--to-lab', '--to', B, '-i', inv, '--secrets-dir', secrets], 2, 'PGI_USAGE', /--to and --to-lab/],
  ]
  it.each(bad)('refuses %s: clear error, exit code of the README, nothing created', async (_what, args, exit, code, message) => {
    const before = await writeRequests()
    const r = await pgi(args())
    expect(r.exitCode, r.stderr).toBe(exit)
    expect(r.json!.error!.code).toBe(code)
    expect(r.json!.error!.message).toMatch(message)
    expect(r.json!.error!.suggestions.length).toBeGreaterThan(0)
    expect(await writeRequests()).toBe(before)
    expect(await vmsInRange()).toEqual([])
  })

  it("the inventory's rules: a drill range holding an establishment's vmid, an unknown drill hypervisor", async () => {
    const bare = await readFile(join(labDir, 'inventory', 'lab.yaml'), 'utf8')
    const lab = await loadValidInventory(join(labDir, 'inventory', 'lab.yaml'))
    const hvName = [...lab.hypervisors.keys()][0]!
    const cases: [string, string, string][] = [
      [`hypervisor: ${hvName}\n    vmids: [1000, 1010]`, 'drill-vmid-collision', `vmid 1001 of ${A}`],
      ['hypervisor: hv-nowhere\n    vmids: [9900, 9909]', 'unknown-hypervisor', 'hv-nowhere'],
    ]
    for (const [drill, rule, said] of cases) {
      const file = join(base, `bad-${rule}.yaml`)
      await writeFile(file, `${bare}\noffsite:\n  repository: "rest:http://10.0.2.100:8000/{uai}/"\n  drill:\n    ${drill}\n`)
      const r = await pgi(['inventory', 'validate', '-i', file])
      expect(r.exitCode, r.stderr).toBe(3)
      const p = (r.json!.error!.details!.problems as {rule: string; message: string; line: number}[]).find((x) => x.rule === rule)
      expect(p, JSON.stringify(r.json!.error!.details!.problems)).toBeDefined()
      expect(p!.message).toContain(said)
      expect(p!.line).toBeGreaterThan(0)
    }
  })

  it("a drill of A restores its VM's pushed copy in a scratch VM, passes, is recorded, and the scratch VM is gone", async () => {
    const r = await pgi(['backup', 'drill', A, '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--agent-timeout', '60', '--health-timeout', '60'])
    expect(r.exitCode, r.stderr).toBe(0)
    const d = r.json!.result.drills[0]
    expect(d).toMatchObject({uai: A, ok: true, scratch: {removed: true}})
    expect(d.scratch.vmid).toBeGreaterThanOrEqual(FIRST)
    expect(d.scratch.vmid).toBeLessThanOrEqual(LAST)
    expect(d.databases).toEqual([{name: 'pgi', rowCountsMatch: true, login: true}])
    expect(d.snapshot).toMatch(/^[0-9a-f]{8}$/)
    expect(await vmsInRange()).toEqual([])
    const record = JSON.parse(await readFile(join(base, 'state', 'drills', `${A}.json`), 'utf8'))
    expect(record.lastGood.snapshot).toBe(d.snapshot)
    // status: the age of the last good drill, and the metric beside the off-site copy's
    const st = await pgi(['status', A, '-i', inv, '--secrets-dir', secrets])
    expect(st.exitCode, st.stderr).toBe(0)
    const e = st.json!.result.establishments[0]
    expect(e.drill).toMatchObject({lastOk: true, lastReason: null})
    expect(e.drill.ageS).toBeGreaterThanOrEqual(0)
    expect(e.drill.ageS).toBeLessThan(600)
    const prom = await runPgi(['status', A, '-i', inv, '--secrets-dir', secrets, '--format', 'prometheus'], {env})
    expect(prom.stdout).toMatch(new RegExp(`pgi_restore_drill_age_seconds\\{uai="${A}"[^}]*\\} \\d+`))
  })

  it("a drill of B (its copy's row counts differ from the manifest) fails with the reason, exit 5, its scratch VM removed; status is degraded", async () => {
    const r = await pgi(['backup', 'drill', B, '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--agent-timeout', '60', '--health-timeout', '60'])
    expect(r.exitCode, r.stderr).toBe(5)
    const d = r.json!.result.drills[0]
    expect(d).toMatchObject({uai: B, ok: false, scratch: {removed: true}})
    expect(d.reason).toMatch(/row counts .* differ from the manifest/)
    expect(await vmsInRange()).toEqual([])
    const st = await pgi(['status', B, '-i', inv, '--secrets-dir', secrets])
    expect(st.exitCode).toBe(5)
    expect(st.json!.result.establishments[0]).toMatchObject({verdict: 'degraded', reason: expect.stringMatching(/last restore drill failed/)})
  })

  it('a scratch VM left by a killed drill is removed by the next one; --sample picks among --all', async () => {
    const meta = {v: 1 as const, uai: B, image: '2026.11.0', deployedAt: new Date().toISOString(), by: 'pgi/0.1.0', scratch: {kind: 'drill' as const, runner: 'killed:1'}}
    await api.createVm(node, LAST, {name: 'pgi-drill-left', memory: 512, description: formatDescription(meta, 'a killed drill')})
    expect(await vmsInRange()).toEqual([LAST])
    const r = await pgi(['backup', 'drill', '--all', '--sample', '1', '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--agent-timeout', '60', '--health-timeout', '60'])
    expect(r.json!.result.leftoversRemoved).toEqual([LAST])
    expect(r.json!.result.drills).toHaveLength(1)
    expect(await vmsInRange()).toEqual([])
  })

  it('restore --to-lab makes a kept VM on the drill hypervisor with a new handoff; a second one is refused', async () => {
    const r = await pgi(['backup', 'restore', A, '--to-lab', '-i', inv, '--secrets-dir', secrets, '--images-dir', images, '--handoff-dir', join(base, 'lab-handoffs'), '--agent-timeout', '60', '--health-timeout', '60'])
    expect(r.exitCode, r.stderr).toBe(0)
    const res = r.json!.result
    expect(res.lab).toMatchObject({node, address: '10.0.9.10/24'})
    expect(res.databases.map((x: {name: string}) => x.name)).toEqual(['pgi'])
    expect(res.handoff).toBeTruthy()
    expect(existsSync(res.handoff)).toBe(true)
    expect(await vmsInRange()).toEqual([res.lab.vmid])
    const again = await pgi(['backup', 'restore', A, '--to-lab', '-i', inv, '--secrets-dir', secrets, '--images-dir', images])
    expect(again.exitCode).toBe(7)
    expect(again.json!.error!.message).toMatch(/a lab VM of .* already exists/)
    expect(await vmsInRange()).toEqual([res.lab.vmid])
  })
})
