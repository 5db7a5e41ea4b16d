import {spawn, type ChildProcess} from 'node:child_process'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {createServer} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {openInventoryStore} from '../../../src/fleet/open.js'
import {offsitePasswordKey} from '../../../src/fleet/offsite.js'
import {Hypervisors} from '../../../src/hypervisors.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import type {Establishment, Inventory} from '../../../src/inventory/types.js'
import {StderrIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {runPgi, type PgiRun} from '../../helpers/cli.js'
import {cachedPgiImage} from '../../helpers/e2e-image.js'
import {POST_INVOICE, proteusFor, type PostedInvoice} from '../../helpers/proteus.js'
import {openLabHandoff, qemuDeployArgs} from '../../helpers/qemu-lab.js'

/** Another address of a guest network than `cidr`'s own (its host part + 100): a scratch VM's. */
function neighbourOf(cidr: string): string {
  const [ip, prefix] = cidr.split('/')
  const o = ip!.split('.').map(Number)
  o[3] = (o[3]! + 100) % 250 || 10
  return `${o.join('.')}/${prefix}`
}


/**
 * Off-site backups end to end on a qemu lab (opt-in: PGI_E2E_OFFSITE=1; the image must carry the
 * pgi-offsite of this tree: PGI_E2E_IMAGES_DIR of an image built from it, or the cached build):
 * a Région REST server (`rclone serve restic --append-only` on 127.0.0.1) reached by the guests
 * through their uplink address and the lab's link simulator at 2 Mbit/s (link-sim.yaml: guest
 * port 8000 → the server); `pgi deploy` gives the VM its repository and key; a teacher's invoice
 * posted with proteus; the nightly backup; its push cut mid-way by the link and finished; the VM
 * and its data disk destroyed; a second establishment deployed, `pgi backup restore --to` refused
 * while its databases exist, then with --replace brings every database back with the same row
 * counts, the invoice and a working Tryton login; `pgi status` shows the off-site copy; last,
 * `pgi backup drill` of the lost establishment passes in a scratch VM that is then removed, and
 * `pgi status` (JSON and Prometheus) shows the drill's age.
 * One VM at a time: the first is destroyed before the second is deployed.
 */

const RUN = process.env.PGI_E2E_OFFSITE === '1'
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const T0 = Date.now()
const note = (s: string) => process.stderr.write(`[offsite e2e ${Math.round((Date.now() - T0) / 1000)} s] ${s}\n`)

let base: string
let labDir: string
let env: NodeJS.ProcessEnv
let images: {root: string; version: string}
let inv: Inventory
let api: PveApi
let rclone: ChildProcess | undefined
let A: Establishment
let B: Establishment
const CALLER_VARIABLES = ['PGI_INVENTORY', 'PGI_SECRETS_DIR', 'PGI_IMAGES_DIR', 'PGI_HANDOFF_DIR', 'PGI_IMAGE', 'PGI_LAB_DIR', 'PGI_TOKEN_ID']
const KEY_TABLES = ['party_party', 'account_invoice', 'account_move', 'account_move_line', 'res_user', 'product_template']

async function pgi(args: string[], timeoutMs = 60 * 60_000): Promise<PgiRun> {
  const t = Date.now()
  const r = await runPgi(args, {env, cwd: base, timeoutMs})
  note(`pgi ${args.slice(0, 3).join(' ')}: exit ${r.exitCode} in ${Math.round((Date.now() - t) / 1000)} s`)
  return r
}

function ok(r: PgiRun): PgiRun {
  expect(r.exitCode, `${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`).toBe(0)
  return r
}

async function guest(e: Establishment, command: string[], timeoutMs = 20 * 60_000): Promise<{exitcode: number; stdout: string; stderr: string}> {
  return api.agentExec(e.node, e.vmid, command, {timeoutMs})
}

async function counts(e: Establishment): Promise<Record<string, number>> {
  const q = KEY_TABLES.map((t) => `(SELECT count(*) FROM ${t})`).join(" || ',' || ")
  const r = await guest(e, ['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-d', 'pgi', '-tAc', `SELECT ${q}`])
  expect(r.exitcode, r.stderr).toBe(0)
  const v = r.stdout.trim().split(',').map(Number)
  return Object.fromEntries(KEY_TABLES.map((t, i) => [t, v[i]!]))
}

async function offsiteStatus(e: Establishment): Promise<{state?: string; error_class?: string | null; bytes_sent?: number; snapshot?: string; last_set?: string}> {
  const r = await guest(e, ['/usr/local/sbin/pgi-offsite', '--status'])
  return JSON.parse(r.stdout.trim() || '{}') as {state?: string}
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => (typeof a === 'object' && a ? res(a.port) : rej(new Error('no port'))))
    })
  })
}

/** The uplink address of a guest network (src/lab/qemu-uplink.ts): its third-last address. */
function uplinkOf(cidr: string): string {
  const [ip, prefix] = cidr.split('/')
  const n = ip!.split('.').reduce((a, o) => a * 256 + Number(o), 0)
  const size = 2 ** (32 - Number(prefix))
  const last = Math.floor(n / size) * size + size - 3
  return [24, 16, 8, 0].map((sh) => Math.floor(last / 2 ** sh) % 256).join('.')
}

async function linkSim(port: number, site?: string): Promise<void> {
  await writeFile(join(labDir, 'link-sim.yaml'), `uplink:\n  ports:\n    8000: 127.0.0.1:${port}\ndefault:\n  bandwidth: 2M\n  latency_ms: 20\n${site ? `sites:\n  ${A.uai}: ${site}\n` : ''}`)
  await new Promise((r) => setTimeout(r, 1500))
}

describe.skipIf(!RUN)('off-site backups on a qemu lab: deploy, push over a 2 Mbit/s link, cut and resume, lose the server, restore elsewhere', () => {
  let port: number
  beforeAll(async () => {
    images = await cachedPgiImage(io)
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-offsite-'))
    labDir = join(base, 'lab')
    env = {...process.env, PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
    for (const k of CALLER_VARIABLES) delete env[k]
    ok(await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '2', '--dir', labDir, '--json'], 10 * 60_000))
    // the Région's REST server, append-only for the VMs; the Région's own access is the folder
    port = await freePort()
    await mkdir(join(base, 'repos'))
    rclone = spawn('rclone', ['serve', 'restic', '--append-only', '--addr', `127.0.0.1:${port}`, join(base, 'repos')], {stdio: 'ignore', detached: true})
    const lab = await loadValidInventory(join(labDir, 'inventory', 'lab.yaml'))
    A = lab.establishments[0]!
    B = lab.establishments[1]!
    await linkSim(port)
    const text = await readFile(join(labDir, 'inventory', 'lab.yaml'), 'utf8')
    const invFile = join(base, 'inventory.yaml')
    // the drill's scratch VMs (last step) on A's hypervisor, in A's guest network (its uplink reaches the repository)
    const drill = `  drill:\n    hypervisor: ${A.hypervisor}\n    vmids: [9900, 9909]\n    network: {address: ${neighbourOf(A.network.address)}, gateway: ${A.network.gateway}, dns: [${A.network.dns.join(', ')}]}\n`
    await writeFile(invFile, `${text}\noffsite:\n  repository: "rest:http://${uplinkOf(A.network.address)}:8000/{uai}/"\n  region_repository: "${join(base, 'repos')}/{uai}"\n  max_age_hours: 30\n${drill}`)
    env.PGI_INVENTORY = invFile
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    inv = await loadValidInventory(invFile)
    const store = await openInventoryStore(inv, env.PGI_SECRETS_DIR, env)
    api = await new Hypervisors(inv, {store, io, env}).get(A.hypervisor)
  }, 20 * 60_000)

  afterAll(async () => {
    if (rclone?.pid) process.kill(-rclone.pid, 'SIGTERM')
    if (labDir) await runPgi(['lab', 'stop', '--dir', labDir], {env, timeoutMs: 5 * 60_000}).catch(() => undefined)
    if (base && !process.env.PGI_E2E_KEEP) await rm(base, {recursive: true, force: true})
  }, 10 * 60_000)

  const before: {counts?: Record<string, number>; invoice?: PostedInvoice; snapshot?: string} = {}

  it('deploy configures the push; a teacher posts an invoice; the nightly backup goes off-site through the link, cut mid-way and finished', async () => {
    ok(await pgi(qemuDeployArgs([A.uai], {images, labDir, handoffDir: join(base, 'handoffs')})))
    const conf = await guest(A, ['stat', '-c', '%a %U', '/srv/pgi/.pgi/offsite.json'])
    expect(conf.stdout.trim()).toBe('600 root')
    const d = await openLabHandoff(labDir, join(base, 'handoffs'), A.uai)
    const url = `http://${d.desktopClient.host}:${d.desktopClient.port}/`
    const proteus = await proteusFor('6.0')
    const out = await proteus.python(POST_INVOICE, {url, database: 'pgi', login: d.trytonAdmin.login, password: d.trytonAdmin.password.reveal()}, 15 * 60_000)
    before.invoice = JSON.parse(out.trim().split('\n').slice(-1)[0]!) as PostedInvoice
    expect(before.invoice.state).toBe('posted')
    before.counts = await counts(A)
    note(`data on ${A.uai}: ${JSON.stringify(before.counts)}`)

    // the nightly backup (pgi-backup's OnSuccess= starts a push: wait for it or start it ourselves)
    const b = await guest(A, ['/usr/local/sbin/pgi-backup'])
    expect(b.exitcode, b.stderr).toBe(0)
    // the link is cut after 400 kB (both directions), then restored: the push finishes
    await linkSim(port, '{cut_at_byte: 400000}')
    const t0 = Date.now()
    const first = await guest(A, ['env', 'PGI_OFFSITE_STALL_S=60', '/usr/local/sbin/pgi-offsite', '--now'])
    note(`push with the link cut: exit ${first.exitcode} in ${Math.round((Date.now() - t0) / 1000)} s: ${first.stdout.trim().slice(-300)}`)
    const cut = JSON.parse(first.stdout.trim().split('\n').at(-1) || '{}') as {state?: string}
    expect(cut.state).not.toBe('ok')
    const stats1 = JSON.parse(await readFile(join(labDir, 'run', 'link-sim.json'), 'utf8')) as {sites: Record<string, {cuts: number; bytesUp: number}>}
    const site = Object.values(stats1.sites).find((s) => s.cuts > 0)
    expect(site, JSON.stringify(stats1)).toBeDefined()
    await linkSim(port)
    let st = await offsiteStatus(A)
    for (let i = 0; i < 3 && st.state !== 'ok'; i++) {
      const again = await guest(A, ['env', 'PGI_OFFSITE_STALL_S=120', '/usr/local/sbin/pgi-offsite', '--now'])
      note(`push after the link came back: exit ${again.exitcode}: ${again.stdout.trim().slice(-300)}`)
      st = await offsiteStatus(A)
    }
    expect(st.state, JSON.stringify(st)).toBe('ok')
    before.snapshot = st.snapshot
    note(`pushed set ${st.last_set}: snapshot ${st.snapshot}, ${st.bytes_sent} bytes new in the last run; ${Math.round((Date.now() - t0) / 1000)} s from the first attempt`)
    // the Région sees it; pgi status shows the copy's age
    const list = ok(await pgi(['backup', 'list', A.uai, '--no-local', '--json']))
    expect(list.json!.result.backups.length).toBeGreaterThanOrEqual(1)
    const status = await pgi(['status', A.uai, '--json'])
    const e = status.json!.result.establishments[0]
    expect(e.offsite).toMatchObject({configured: true, state: 'ok', errorClass: null})
    expect(e.offsite.ageS).toBeLessThan(3600)
  }, 90 * 60_000)

  it("the server and its data disk are lost; the copy comes back on another establishment's new server, every database with the same rows and a working login", async () => {
    ok(await pgi(['destroy', A.uai, '--destroy-data', '--yes', '--json', '--backup-dir', join(base, 'final-backups')]))
    ok(await pgi(qemuDeployArgs([B.uai], {images, labDir, handoffDir: join(base, 'handoffs')})))
    // B has its own database pgi: never overwritten without --replace and its confirmation
    const refused = await pgi(['backup', 'restore', A.uai, '--to', B.uai, '--json'])
    expect(refused.exitCode, refused.stderr).toBe(7)
    expect(refused.json!.error!.code).toBe('PGI_DB_EXISTS')
    const t0 = Date.now()
    const r = ok(await pgi(['backup', 'restore', A.uai, '--to', B.uai, '--replace', '--yes', '--json', '--handoff-dir', join(base, 'restored-handoffs')]))
    note(`restore onto ${B.uai}: ${Math.round((Date.now() - t0) / 1000)} s: ${JSON.stringify(r.json!.result.databases)}`)
    const res = r.json!.result
    expect(res).toMatchObject({from: A.uai, to: B.uai, loginOk: true})
    const pgiDb = res.databases.find((x: {name: string}) => x.name === 'pgi')
    expect(pgiDb).toMatchObject({row_counts_match: true, figures_checked: true, login: true, replaced: true})
    expect(await counts(B)).toEqual(before.counts)
    // B's own admin logs in to the restored database and finds the invoice the teacher posted on A
    const d = await openLabHandoff(labDir, join(base, 'handoffs'), B.uai)
    const url = `http://${d.desktopClient.host}:${d.desktopClient.port}/`
    const proteus = await proteusFor('6.0')
    const who = await proteus.login(url, 'pgi', d.trytonAdmin.login, d.trytonAdmin.password.reveal())
    expect(who.user.login).toBe('admin')
    const invoices = await guest(B, ['psql', '-h', '/var/run/postgresql', '-U', 'postgres', '-d', 'pgi', '-tAc', "SELECT number || ' ' || state FROM account_invoice WHERE type = 'out'"])
    note(`invoices on ${B.uai}: ${invoices.stdout.trim()}`)
    expect(invoices.stdout).toContain(`${before.invoice!.number} posted`)
    // the key of A never reached a log or an output
    const key = (await (await openInventoryStore(await loadValidInventory(env.PGI_INVENTORY!), env.PGI_SECRETS_DIR!, env)).get(offsitePasswordKey(A.uai))).reveal()
    expect(r.stdout + r.stderr + refused.stdout + refused.stderr).not.toContain(key)
    expect(await readFile(join(labDir, 'requests.jsonl'), 'utf8')).not.toContain(key)
  }, 90 * 60_000)
  it('a restore drill of the lost establishment: its latest copy in a scratch VM on the drill hypervisor, checked, recorded, removed', async () => {
    const t0 = Date.now()
    const r = ok(await pgi(['backup', 'drill', A.uai, '--json', '--image', images.version, '--images-dir', images.root, '--health-timeout', '1800', '--agent-timeout', '900'], 90 * 60_000))
    note(`drill of ${A.uai}: ${Math.round((Date.now() - t0) / 1000)} s: ${JSON.stringify(r.json!.result.drills)}`)
    const d = r.json!.result.drills[0]
    expect(d).toMatchObject({uai: A.uai, ok: true, scratch: {removed: true}})
    expect(d.databases.find((x: {name: string}) => x.name === 'pgi')).toMatchObject({rowCountsMatch: true, login: true})
    expect((await api.clusterResources('vm')).filter((v) => (v.vmid ?? 0) >= 9900 && (v.vmid ?? 0) <= 9909)).toEqual([])
    const record = JSON.parse(await readFile(join(base, 'state', 'drills', `${A.uai}.json`), 'utf8'))
    expect(record.lastGood.snapshot).toBe(d.snapshot)
    // pgi status shows the drill's age (B's too: never drilled is a note, not a problem), and the
    // Prometheus textfile carries it; A's server is gone (destroyed above), so its status exits
    // non-zero: the drill is reported all the same
    const st = await pgi(['status', A.uai, B.uai, '--json'])
    expect(st.json, st.stderr.slice(-2000)).toBeDefined()
    const byUai = Object.fromEntries(st.json!.result.establishments.map((x: {uai: string}) => [x.uai, x]))
    expect(byUai[A.uai].drill).toMatchObject({lastOk: true, lastGoodAt: d.at})
    expect(byUai[A.uai].drill.ageS).toBeLessThan(3600)
    expect(byUai[B.uai].drill).toBeNull()
    expect(byUai[B.uai].notes).toContain('no restore drill yet')
    const prom = await pgi(['status', A.uai, B.uai, '--format', 'prometheus'])
    expect(prom.stdout, prom.stderr.slice(-2000)).toMatch(new RegExp(`pgi_restore_drill_age_seconds\\{[^}]*uai="${A.uai}"[^}]*\\} \\d+`))
    expect(prom.stdout).not.toMatch(new RegExp(`pgi_restore_drill_age_seconds\\{[^}]*uai="${B.uai}"`))
  }, 120 * 60_000)
})
