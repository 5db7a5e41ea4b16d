import {execFileSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync, statSync} from 'node:fs'
import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadValidInventory} from '../../../src/inventory/load.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {SecretStore} from '../../../src/secrets/store.js'

/**
 * `pgi lab start|status|stop` through the real CLI with the simulated backend: the daemon runs in
 * the background, the generated inventory is valid, pgi's client reaches every node with the token
 * from the secret store (TLS pinned), and stop leaves no process and nothing outside the lab dir
 * (besides the local age identity under the test's own state dir).
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')

/** Builds dist/ when it is missing or older than the lab sources (CI runs on a fresh clone). */
function ensureBuilt(): void {
  const daemon = join(ROOT, 'dist', 'src', 'lab', 'daemon.js')
  const newest = Math.max(...['src/lab', 'src/lab/routes', 'commands/lab'].flatMap((d) => readdirSync(join(ROOT, d)).filter((f) => f.endsWith('.ts')).map((f) => statSync(join(ROOT, d, f)).mtimeMs)))
  if (existsSync(daemon) && statSync(daemon).mtimeMs >= newest && existsSync(join(ROOT, 'dist', 'cli', 'commands.js')) && existsSync(join(ROOT, 'oclif.manifest.json'))) return
  execFileSync('npm', ['run', 'build'], {cwd: ROOT, stdio: 'inherit', timeout: 10 * 60_000})
}

let base: string
let dir: string
let env: NodeJS.ProcessEnv

function pgi(args: string[]): {status: number; result?: any; error?: any} {
  try {
    return JSON.parse(execFileSync(process.execPath, [CLI, ...args, '--json'], {env, encoding: 'utf8', timeout: 180_000, cwd: base}))
  } catch (e) {
    const out = (e as {stdout?: string}).stdout
    if (out) return JSON.parse(out)
    throw e
  }
}

function processesMentioning(d: string): string[] {
  const out: string[] = []
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').replaceAll('\0', ' ')
      if (cmd.includes(d)) out.push(`${e} ${cmd}`)
    } catch {
      // exited meanwhile
    }
  }
  return out
}

describe('pgi lab (simulated) from start to stop', () => {
  beforeAll(async () => {
    ensureBuilt()
    base = await mkdtemp(join(tmpdir(), 'pgi-lab-cli-'))
    dir = join(base, 'lab')
    env = {...process.env, PGI_STATE_DIR: join(base, 'state'), PGI_LAB_DIR: dir, PGI_LOG_LEVEL: 'warn'}
  }, 15 * 60_000)

  afterAll(async () => {
    if (existsSync(join(dir, 'lab.json'))) pgi(['lab', 'stop'])
    await rm(base, {recursive: true, force: true})
  })

  it('starts, serves the API with the generated inventory and token, and stops cleanly', async () => {
    const started = pgi(['lab', 'start', '--backend', 'simulated', '--nodes', '2', '--sites', '4', '--pve-version', '8.4', '--auth-fail-delay', '10', '--time-scale', '0.01'])
    expect(started.status, JSON.stringify(started.error)).toBe(0)
    expect(started.result).toMatchObject({lab: true, running: true, backend: 'simulated', pveVersion: '8.4'})
    expect(started.result.nodes).toHaveLength(2)
    const again = pgi(['lab', 'start', '--backend', 'simulated'])
    expect(again.error.code).toBe('PGI_LAB_ALREADY_RUNNING')

    const inv = await loadValidInventory(join(dir, 'inventory', 'lab.yaml'))
    expect(inv.establishments).toHaveLength(4)
    const store = await SecretStore.open({dir: join(dir, 'secrets'), recipients: [], env})
    for (const hv of inv.hypervisors.values()) {
      const api = connectHypervisor(hv, {tokenSecret: await store.get((hv.token.secret as {store: string}).store), poll: {initialMs: 10, maxMs: 50}})
      try {
        expect((await api.version()).release).toBe('8.4')
        const site = inv.establishments.find((e) => e.hypervisor === hv.name)!
        await api.createVm(site.node, site.vmid, {name: `pgi-${site.uai.toLowerCase()}`, agent: 1, virtio0: 'local-vm:1', virtio1: 'local-vm:1,serial=pgi-data'})
        await api.startVm(site.node, site.vmid)
        // The simulated guest agent answers once the guest has "booted" (15 s × time-scale 0.01).
        let up = false
        for (let i = 0; i < 100 && !up; i++) up = await api.agentPing(site.node, site.vmid) || (await new Promise((r) => setTimeout(r, 50)), false)
        expect(up).toBe(true)
      } finally {
        await api.close()
      }
    }
    const status = pgi(['lab', 'status'])
    expect(status.result.running).toBe(true)
    await new Promise((r) => setTimeout(r, 700)) // vms.json is refreshed at most every 500 ms
    expect(pgi(['lab', 'status']).result.nodes.map((n: {vms: number}) => n.vms)).toEqual([1, 1])

    const stopped = pgi(['lab', 'stop'])
    expect(stopped.result.stopped).toBe(true)
    expect(processesMentioning(dir)).toEqual([])
    expect(pgi(['lab', 'status']).result.running).toBe(false)
    expect((await readdir(base)).sort()).toEqual(['lab', 'state'])
    expect(await readdir(join(base, 'state'))).toEqual(['age-identity.txt'])
  })
})
