import {randomUUID} from 'node:crypto'
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {openInventoryStore} from '../../../src/fleet/open.js'
import {sha256Hex, type AccessConfig} from '../../../src/lab/access.js'
import {readRequestLog} from '../../../src/lab/server.js'
import {run} from '../../../src/exec.js'
import {Hypervisors} from '../../../src/hypervisors.js'
import {loadValidInventory} from '../../../src/inventory/load.js'
import {findEstablishment} from '../../../src/inventory/select.js'
import type {Establishment} from '../../../src/inventory/types.js'
import {StderrIo} from '../../../src/io.js'
import {AMI_ROLE_PRIVILEGES} from '../../../src/proxmox/role.js'
import type {PveApi} from '../../../src/proxmox/types.js'
import {HEALTH_RECORD_FILE} from '../../../src/status/health-record.js'
import type {EstablishmentStatus, StatusReport} from '../../../src/status/types.js'

import {cachedPgiImage} from '../../helpers/e2e-image.js'

/**
 * `pgi status` end to end on a qemu-backed lab: a really deployed PGI VM (the real pgi-tryton
 * image, `pgi deploy`) is healthy; with its PostgreSQL stopped through the guest agent
 * (`systemctl stop postgresql`) it is degraded with that reason; with the VM stopped through the
 * API it is down; and the establishment of a lab node that accepts connections but never answers
 * (lab fault `dead_nodes`) is unknown, reported within the request timeout while the others come back.
 * An AMI's token with the PGI-AMI role of PVE 9 (VM.Audit, VM.GuestAgent.Audit, VM.GuestAgent.FileRead
 * on their VM only: agent exec refused) gets the full verdict from the health record the image's
 * pgi-health.timer writes in the guest (/run/pgi/health.json) — on the same VM, no extra boot.
 *
 * The image is built once, in the same cache as test/e2e/image and test/e2e/deploy (recipe digest
 * + lock) under <stateDir>/e2e-image-cache/, or taken from PGI_E2E_IMAGES_DIR.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const io = new StderrIo(process.env.PGI_LOG_LEVEL === 'debug' ? 'debug' : 'warn', false)
const TIMEOUT_S = 4


let base: string
let labDir: string
let env: Record<string, string>
let images: {root: string; version: string}
let deployed: Establishment
let deadOne: Establishment
let api: PveApi

async function pgi(args: string[], opts: {allowFailure?: boolean; env?: Record<string, string>} = {}) {
  const r = await run('node', [CLI, ...args], {env: {...env, ...opts.env}, allowFailure: true, timeoutMs: 60 * 60_000})
  if (r.exitCode !== 0 && !opts.allowFailure) throw new Error(`pgi ${args.join(' ')} exited ${r.exitCode}:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`)
  return r
}

async function status(args: string[]): Promise<{exitCode: number; report: StatusReport; ms: number}> {
  const t0 = Date.now()
  const r = await pgi(['status', ...args, '--json', '--timeout', String(TIMEOUT_S)], {allowFailure: true})
  const out = JSON.parse(r.stdout) as {status: number; result: StatusReport}
  expect(out.status).toBe(r.exitCode)
  return {exitCode: r.exitCode, report: out.result, ms: Date.now() - t0}
}

const line = (r: StatusReport, uai: string): EstablishmentStatus => r.establishments.find((e) => e.uai === uai)!

/** Polls `pgi status` until `uai` has `verdict` (a guest needs a few seconds to notice a stopped service). */
async function until(uai: string, verdict: string, timeoutMs = 5 * 60_000): Promise<EstablishmentStatus> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const {report} = await status([uai])
    const e = line(report, uai)
    if (e.verdict === verdict || Date.now() > deadline) return e
    await new Promise((r) => setTimeout(r, 3000))
  }
}

describe('pgi status on a qemu-backed lab', () => {
  beforeAll(async () => {
    images = await cachedPgiImage(io)
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-status-'))
    labDir = join(base, 'lab')
    env = {...(process.env as Record<string, string>), PGI_STATE_DIR: join(base, 'state'), CI: 'true', PGI_LOG_LEVEL: 'info'}
    delete env.PGI_INVENTORY
    // lab2 accepts connections but never answers: its establishment can only be "unknown"
    const faults = join(base, 'faults.yaml')
    await writeFile(faults, 'dead_nodes: [lab2]\n')
    await pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '2', '--sites', '2', '--dir', labDir, '--faults', faults, '--json'])
    env.PGI_INVENTORY = join(labDir, 'inventory', 'lab.yaml')
    env.PGI_SECRETS_DIR = join(labDir, 'secrets')
    const inv = await loadValidInventory(env.PGI_INVENTORY)
    deployed = inv.establishments.find((e) => e.node === 'lab1')!
    deadOne = inv.establishments.find((e) => e.node === 'lab2')!
    await pgi(['deploy', deployed.uai, '--yes', '--json', '--image', images.version, '--images-dir', images.root, '--lab-dir', labDir, '--handoff-dir', join(base, 'handoffs'), '--health-timeout', '1800', '--agent-timeout', '900'])
    const store = await openInventoryStore(inv, env.PGI_SECRETS_DIR, env)
    api = await new Hypervisors(inv, {store, io, env}).get(findEstablishment(inv, deployed.uai).hypervisor)
  }, 90 * 60_000)

  afterAll(async () => {
    await (api as PveApi & {close?: () => Promise<void>} | undefined)?.close?.()
    if (labDir) await pgi(['lab', 'stop', '--dir', labDir], {allowFailure: true})
    if (base) await rm(base, {recursive: true, force: true})
  }, 5 * 60_000)

  it('a freshly deployed establishment is healthy (exit 0), with what its guest reports', async () => {
    const e = await until(deployed.uai, 'healthy')
    expect(e.verdict).toBe('healthy')
    expect(e.vm.state).toBe('running')
    expect(e.agent.answering).toBe(true)
    expect(e.image.running).toBe(images.version)
    expect(e.checks).toMatchObject({postgresql: true, trytond: true, web: true})
    expect(e.dataDisk?.source).toBe('pgi-health')
    const {exitCode} = await status([deployed.uai])
    expect(exitCode).toBe(0)
    // the table for people names it too
    const t = await pgi(['status', deployed.uai])
    expect(t.stdout).toContain(deployed.uai)
    expect(t.stdout).toMatch(/healthy/)
  }, 15 * 60_000)

  it("an AMI's PGI-AMI token (PVE 9, no exec): the full verdict from the record the image's timer writes", async () => {
    const {node, vmid, uai} = deployed
    const sh = async (cmd: string[]) => (await api.agentExec(node, vmid, cmd, {timeoutMs: 5 * 60_000})).stdout.trim()
    // the timer runs, and will run again (a monotonic next elapse is set)
    expect(await sh(['systemctl', 'is-active', 'pgi-health.timer'])).toBe('active')
    // while the service it triggered still runs (a run takes longer on a loaded machine), systemd
    // shows no next elapse ("infinity") until the run ends: asked again until the run is over
    let next = ''
    for (const deadline = Date.now() + 5 * 60_000; ; await new Promise((r) => setTimeout(r, 5000))) {
      next = await sh(['systemctl', 'show', 'pgi-health.timer', '--property=NextElapseUSecMonotonic', '--value'])
      if (!/^(0|infinity|)$/.test(next) || Date.now() > deadline) break
      if (!['active', 'activating'].includes(await sh(['systemctl', 'is-active', 'pgi-health.service']))) break
    }
    expect(next).not.toMatch(/^(0|infinity|)$/)
    // a record saying healthy (under emulation the first run, a minute after boot, may predate trytond)
    let rec: {v: number; at: string; exit_code: number; health: {healthy: boolean; image?: {version?: string}}} | undefined
    for (const deadline = Date.now() + 6 * 60_000; ; await new Promise((r) => setTimeout(r, 10_000))) {
      rec = JSON.parse(await api.agentFileRead(node, vmid, HEALTH_RECORD_FILE)) as typeof rec
      if (rec!.health?.healthy || Date.now() > deadline) break
    }
    expect(rec).toMatchObject({v: 1, exit_code: 0, health: {healthy: true, image: {version: images.version}}})
    expect(Date.now() - Date.parse(rec!.at)).toBeLessThan(10 * 60_000)
    expect(await sh(['stat', '-c', '%a %U', HEALTH_RECORD_FILE])).toBe('644 root')

    // the AMI's user and privilege-separated token, PGI-AMI on their VM only, as docs/proxmox-role.md
    // grants them (the lab's access.json, applied at once on SIGHUP)
    const tokenId = `ami-${uai.toLowerCase()}@pve!status`
    const user = tokenId.split('!')[0]!
    const secret = randomUUID()
    const accessFile = join(labDir, 'access.json')
    const access = JSON.parse(await readFile(accessFile, 'utf8')) as AccessConfig
    access.users[user] = {}
    access.tokens[tokenId] = {secretSha256: sha256Hex(secret), privsep: true}
    access.roles['PGI-AMI'] = [...AMI_ROLE_PRIVILEGES['9']]
    access.acl.push({path: `/vms/${vmid}`, ugid: user, roleid: 'PGI-AMI', propagate: true}, {path: `/vms/${vmid}`, ugid: tokenId, roleid: 'PGI-AMI', propagate: true})
    await writeFile(accessFile, JSON.stringify(access, null, 1), {mode: 0o600})
    const daemon = JSON.parse(await readFile(join(labDir, 'run', 'daemon.json'), 'utf8')) as {pid: number}
    process.kill(daemon.pid, 'SIGHUP')
    await new Promise((r) => setTimeout(r, 1000))

    const amiEnv = {PGI_TOKEN_SECRET: secret}
    const r = await pgi(['status', uai, '--token-id', tokenId, '--json', '--timeout', String(TIMEOUT_S)], {allowFailure: true, env: amiEnv})
    const e = line((JSON.parse(r.stdout) as {result: StatusReport}).result, uai)
    expect(e).toMatchObject({verdict: 'healthy', reason: 'all checks passed', agent: {answering: true}, image: {running: images.version}, healthCheck: {via: 'health-record', stale: false}})
    expect(e.checks).toMatchObject({postgresql: true, trytond: true, web: true, data_disk: true})
    expect(e.dataDisk?.source).toBe('pgi-health')
    expect(e.healthCheck!.ageS).toBeLessThan(10 * 60)
    expect(r.exitCode).toBe(0)
    // the table says how old the record is
    const t = await pgi(['status', uai, '--token-id', tokenId, '--timeout', String(TIMEOUT_S)], {env: amiEnv})
    expect(t.stdout).toMatch(/health: the server's record of \S+, \d+ (s|min) old/)
    expect(t.stdout + t.stderr).not.toContain(secret)
    // PVE 9's answers to that token: exec refused, file-read allowed
    await new Promise((res) => setTimeout(res, 200))
    const mine = (await readRequestLog(join(labDir, 'requests.jsonl'))).filter((l) => l.user === tokenId && l.path.includes('/agent/'))
    expect(mine.filter((l) => l.path.endsWith('/agent/exec')).map((l) => l.status)).toEqual([403, 403])
    expect(mine.filter((l) => l.path.endsWith('/agent/file-read')).map((l) => l.status)).toEqual([200, 200])
  }, 15 * 60_000)

  it('with PostgreSQL stopped in the guest, it is degraded and says why (exit 5)', async () => {
    const stop = await api.agentExec(deployed.node, deployed.vmid, ['systemctl', 'stop', 'postgresql'], {timeoutMs: 5 * 60_000})
    expect(stop.exitcode).toBe(0)
    try {
      const e = await until(deployed.uai, 'degraded')
      expect(e.verdict).toBe('degraded')
      expect(e.reason).toBe('PostgreSQL is not running on the server')
      expect(e.checks.postgresql).toBe(false)
      expect((await status([deployed.uai])).exitCode).toBe(5)
    } finally {
      await api.agentExec(deployed.node, deployed.vmid, ['systemctl', 'start', 'postgresql'], {timeoutMs: 5 * 60_000})
    }
    expect((await until(deployed.uai, 'healthy')).verdict).toBe('healthy')
  }, 30 * 60_000)

  it('with the VM stopped through the API, it is down', async () => {
    await api.stopVm(deployed.node, deployed.vmid)
    const {report, exitCode} = await status([deployed.uai])
    expect(exitCode).toBe(5)
    expect(line(report, deployed.uai)).toMatchObject({verdict: 'down', reason: 'VM is stopped', vm: {state: 'stopped'}})
  }, 10 * 60_000)

  it('the establishment of a node that never answers is unknown, within the request timeout', async () => {
    const {report, exitCode, ms} = await status(['--all'])
    expect(exitCode).toBe(5)
    expect(line(report, deadOne.uai)).toMatchObject({verdict: 'unknown', reason: `hypervisor not reachable (timeout after ${TIMEOUT_S} s)`, hypervisorReachable: false})
    expect(line(report, deployed.uai).verdict).toBe('down')
    // CLI start-up + one request timeout, not one timeout per call
    expect(ms).toBeLessThan(TIMEOUT_S * 1000 + 15_000)
    expect(report.hypervisors.find((h) => h.name === deployed.hypervisor)!.durationMs).toBeLessThan(TIMEOUT_S * 1000)
  }, 10 * 60_000)
})
