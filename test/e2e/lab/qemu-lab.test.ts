import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {existsSync, readdirSync, readFileSync, readlinkSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, rename, rm} from 'node:fs/promises'
import {connect} from 'node:net'
import {tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {buildImage} from '../../../src/image/build.js'
import {loadRecipe} from '../../../src/image/recipe.js'
import {loadInventory} from '../../../src/inventory/load.js'
import {StderrIo} from '../../../src/io.js'
import {stateDir} from '../../../src/paths.js'
import {connectHypervisor, type PveClient} from '../../../src/proxmox/client.js'
import {localIdentity} from '../../../src/secrets/identity.js'
import {SecretStore} from '../../../src/secrets/store.js'

/**
 * End to end on real QEMU: `pgi lab start --backend qemu`, a VM created from the lab-test image
 * through the API (upload + import-from), started, its real guest agent answering, the guest's
 * static address read through `agent/network-get-interfaces`, SSH reachable on the loopback
 * forward `pgi lab status` reports, the VM stopped, and `pgi lab stop` leaving no process behind
 * and nothing outside the lab dir.
 *
 * The test disk is built once by `pgi image build` from images/lab-test/image.yaml and cached in
 * <stateDir>/test-cache/lab-test-<digest of recipe + image.lock>/ (CI builds it once per change).
 * PGI_LAB_TEST_DISK=<qcow2> uses another bootable disk with cloud-init and qemu-guest-agent.
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'bin', 'run.js')
const RECIPE = join(ROOT, 'images', 'lab-test', 'image.yaml')
const NODE = 'lab1'
const VMID = 100
const MAC = '52:54:00:5a:00:64'
const GUEST_IP = '10.77.12.10'
// TCG boot of the lab-test image: ~1-3 min on an idle 2-core machine, much more when other VMs
// share the CPUs. PGI_E2E_BOOT_TIMEOUT_S raises the bound on a busy machine.
const BOOT_TIMEOUT_MS = Number(process.env.PGI_E2E_BOOT_TIMEOUT_S ?? 15 * 60) * 1000

async function labTestDisk(): Promise<string> {
  if (process.env.PGI_LAB_TEST_DISK) return resolve(process.env.PGI_LAB_TEST_DISK)
  const recipe = await loadRecipe(RECIPE)
  // keyed by the recipe (and the files it installs) and by its package lock
  const lock = await readFile(join(dirname(RECIPE), 'image.lock'), 'utf8').catch(() => '')
  const key = createHash('sha256').update(recipe.digest).update('\0').update(lock).digest('hex').slice(0, 16)
  const cache = join(stateDir(), 'test-cache', `lab-test-${key}`)
  const disk = join(cache, 'lab-test.qcow2')
  if (existsSync(disk)) return disk
  await rm(cache, {recursive: true, force: true})
  await mkdir(cache, {recursive: true})
  const io = new StderrIo('info', false)
  const r = await buildImage({recipe: RECIPE, out: join(cache, 'images'), io, allowLockDrift: true, env: {...process.env, PGI_STATE_DIR: join(cache, 'build-state')}})
  await rename(r.disk, disk)
  await rm(join(cache, 'images'), {recursive: true, force: true})
  await rm(join(cache, 'build-state', 'build'), {recursive: true, force: true})
  return disk
}

let base: string
let labDir: string
let env: NodeJS.ProcessEnv
let api: PveClient | undefined
const seenPids = new Set<number>()

function pgi(args: string[]): unknown {
  const out = execFileSync(process.execPath, [CLI, ...args, '--json'], {env, encoding: 'utf8', timeout: 180_000, cwd: base})
  const envelope = JSON.parse(out) as {status: number; result: unknown}
  expect(envelope.status).toBe(0)
  return envelope.result
}

/** Pids of processes whose command line or cwd mentions `dir`. */
function processesUsing(dir: string): {pid: number; cmd: string}[] {
  const out: {pid: number; cmd: string}[] = []
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').replaceAll('\0', ' ')
      let cwd = ''
      try {
        cwd = readlinkSync(`/proc/${e}/cwd`)
      } catch {
        // gone or not ours to read
      }
      if (cmd.includes(dir) || cwd.startsWith(dir)) out.push({pid: Number(e), cmd})
    } catch {
      // exited meanwhile
    }
  }
  return out
}

/** Files the process `pid` holds open outside `dir` (regular files only). */
function openFilesOutside(pid: number, dir: string): string[] {
  const out: string[] = []
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`)
    } catch {
      continue
    }
    if (!target.startsWith('/') || target.startsWith(dir) || target.startsWith('/dev/') || target.startsWith('/proc/')) continue
    // program files and libraries opened read-only are not the lab's files
    if (/^\/(usr|lib|lib64|etc|bin|sbin)\//.test(target) || target.startsWith(ROOT)) continue
    out.push(target)
  }
  return out
}

function banner(port: number): Promise<string> {
  return new Promise((resolveP, reject) => {
    const s = connect({host: '127.0.0.1', port})
    let got = ''
    const t = setTimeout(() => {
      s.destroy()
      reject(new Error(`no SSH banner on 127.0.0.1:${port}: "${got}"`))
    }, 15_000)
    s.on('data', (d: Buffer) => {
      got += d.toString()
      if (got.includes('\n')) {
        clearTimeout(t)
        s.destroy()
        resolveP(got.trim())
      }
    })
    s.on('error', (e) => {
      clearTimeout(t)
      reject(e)
    })
  })
}

describe('qemu-backed lab (real VMs)', () => {
  let disk: string

  beforeAll(async () => {
    disk = await labTestDisk()
    base = await mkdtemp(join(tmpdir(), 'pgi-e2e-qemu-lab-'))
    labDir = join(base, 'lab')
    // Everything pgi may write by default points inside `base`: the test then proves the lab
    // itself wrote nothing outside `labDir`.
    env = {...process.env, PGI_STATE_DIR: join(base, 'state'), HOME: join(base, 'home'), TMPDIR: join(base, 'tmp'), XDG_STATE_HOME: join(base, 'xdg'), CI: 'true'}
    delete env.PGI_LAB_DIR
    delete env.PGI_SECRETS_DIR
    delete env.PGI_INVENTORY
    for (const d of ['home', 'tmp']) await mkdir(join(base, d), {recursive: true})
  }, 60 * 60_000)

  afterAll(async () => {
    await api?.close()
    if (labDir && existsSync(join(labDir, 'lab.json'))) {
      try {
        execFileSync(process.execPath, [CLI, 'lab', 'stop', '--dir', labDir], {env, timeout: 120_000, stdio: 'ignore'})
      } catch {
        // already stopped
      }
    }
    for (const p of seenPids) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // gone, as it should be
      }
    }
    if (base) await rm(base, {recursive: true, force: true})
  })

  it('starts, imports, boots, answers through the real guest agent, stops, and leaves nothing behind', async () => {
    // -- pgi lab start --------------------------------------------------------------------------
    const started = pgi(['lab', 'start', '--backend', 'qemu', '--nodes', '1', '--sites', '0', '--dir', labDir]) as {
      running: boolean
      backend: string
      inventory: string
      secretsDir: string
      daemon: {pid: number}
    }
    expect(started).toMatchObject({running: true, backend: 'qemu'})
    seenPids.add(started.daemon.pid)

    // -- the real pgi client, from the generated inventory (TLS pinned to the lab's certificate) --
    const {inventory, problems} = await loadInventory(started.inventory)
    expect(problems.filter((p) => p.severity === 'error')).toEqual([])
    const hv = inventory.hypervisors.get(NODE)!
    expect(hv).toBeDefined()
    const me = await localIdentity(env)
    const store = await SecretStore.open({dir: started.secretsDir, recipients: [me.recipient], identityFiles: [me.identityFile], env})
    api = connectHypervisor(hv, {tokenSecret: await store.get(`hypervisors/${hv.name}/token`)})

    // -- stage the test disk and create a VM from it (import-from) --------------------------------
    await api.uploadFile(NODE, 'local', disk, {filename: 'lab-test.qcow2', content: 'import'})
    const staged = await api.storageContent(NODE, 'local', 'import')
    expect(staged.map((v) => v.volid)).toContain('local:import/lab-test.qcow2')
    await api.createVm(NODE, VMID, {
      name: 'lab-e2e',
      memory: 768,
      cores: 1,
      agent: 1,
      ostype: 'l26',
      virtio0: 'local-vm:0,import-from=local:import/lab-test.qcow2',
      ide2: 'local-vm:cloudinit',
      boot: 'order=virtio0',
      net0: `virtio=${MAC},bridge=vmbr0`,
      ciuser: 'ami',
      // as pgi deploy does: no package upgrade at first boot (PVE's default would run apt at boot)
      ciupgrade: 0,
      sshkeys: encodeURIComponent('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1Xx8d0cn2mN9Vn1oFq2W0o8p1o7y7vXn3bEw8m2rKq ami@lab'),
      ipconfig0: `ip=${GUEST_IP}/24,gw=10.77.12.1`,
      nameserver: '10.77.12.1',
      searchdomain: 'lab.test',
    })
    const diskFile = join(labDir, 'nodes', NODE, 'storage', 'local-vm', 'images', String(VMID), `vm-${VMID}-disk-0.qcow2`)
    expect(existsSync(diskFile)).toBe(true)
    expect(existsSync(join(labDir, 'nodes', NODE, 'storage', 'local-vm', 'images', String(VMID), `vm-${VMID}-cloudinit.qcow2`))).toBe(true)

    // -- start: a real QEMU process inside the lab dir -------------------------------------------
    await api.startVm(NODE, VMID)
    const qemu = processesUsing(labDir).filter((p) => p.cmd.includes('qemu-system-x86_64'))
    expect(qemu).toHaveLength(1)
    for (const p of qemu) seenPids.add(p.pid)
    expect(qemu[0].cmd).toContain(diskFile)
    expect(qemu[0].cmd).toMatch(/-accel (tcg|kvm)/)
    // every listening forward is on loopback
    expect(qemu[0].cmd).toMatch(/hostfwd=tcp:127\.0\.0\.1:0-10\.77\.12\.10:22/)
    expect(qemu[0].cmd).not.toMatch(/hostfwd=tcp::|hostfwd=tcp:0\.0\.0\.0/)

    // -- the real guest agent answers once the guest has booted (TCG: a minute or more) ----------
    const deadline = Date.now() + BOOT_TIMEOUT_MS
    while (!(await api.agentPing(NODE, VMID).catch(() => false))) {
      if (Date.now() > deadline) throw new Error(`guest agent did not answer within ${BOOT_TIMEOUT_MS} ms`)
      await new Promise((r) => setTimeout(r, 3000))
    }
    // cloud-init may still be configuring the network when the agent first answers
    let ifaces = await api.agentNetworkInterfaces(NODE, VMID)
    while (!JSON.stringify(ifaces).includes(GUEST_IP) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 3000))
      ifaces = await api.agentNetworkInterfaces(NODE, VMID)
    }
    const eth = ifaces.find((i) => i['hardware-address']?.toLowerCase() === MAC)
    expect(eth, JSON.stringify(ifaces)).toBeDefined()
    expect(eth!['ip-addresses']).toContainEqual(expect.objectContaining({'ip-address': GUEST_IP, 'ip-address-type': 'ipv4', prefix: 24}))

    // the hostname comes from the VM name (cloud-init), read in the guest through agent exec
    const r = await api.agentExec(NODE, VMID, ['hostname'])
    expect(r.exitcode).toBe(0)
    expect(r.stdout.trim()).toBe('lab-e2e')

    // -- pgi lab status reports how to reach the VM: loopback forwards, and SSH answers there ----
    await new Promise((res) => setTimeout(res, 1200)) // the daemon's VM snapshot is debounced
    const status = pgi(['lab', 'status', '--dir', labDir]) as {vms: {vmid: number; status: string; access?: {endpoints: Record<string, string>}}[]}
    const vm = status.vms.find((v) => v.vmid === VMID)
    expect(vm?.status).toBe('running')
    const ssh = vm?.access?.endpoints.ssh
    expect(ssh).toMatch(/^127\.0\.0\.1:\d+$/)
    // sshd starts after cloud-init has written the host keys: poll until it answers
    let sshBanner = ''
    for (;;) {
      try {
        sshBanner = await banner(Number(ssh!.split(':')[1]))
        break
      } catch (error) {
        if (Date.now() > deadline) throw error
        await new Promise((res) => setTimeout(res, 3000))
      }
    }
    expect(sshBanner).toMatch(/^SSH-2\.0-OpenSSH/)

    // the lab daemon and QEMU hold no regular file open outside the lab dir
    for (const p of [started.daemon.pid, qemu[0].pid]) expect(openFilesOutside(p, labDir)).toEqual([])

    // -- stop the VM: the QEMU process ends --------------------------------------------------------
    await api.stopVm(NODE, VMID)
    expect((await api.vmStatus(NODE, VMID))?.status).toBe('stopped')
    expect(processesUsing(labDir).filter((p) => p.cmd.includes('qemu-system-x86_64'))).toEqual([])

    // start it again and leave it running: `pgi lab stop` must end it too
    await api.startVm(NODE, VMID)
    for (const p of processesUsing(labDir)) seenPids.add(p.pid)
    expect(processesUsing(labDir).filter((p) => p.cmd.includes('qemu-system-x86_64'))).toHaveLength(1)
    await api.close()
    api = undefined

    // -- pgi lab stop: no QEMU, no daemon, nothing outside the dir --------------------------------
    const stopped = pgi(['lab', 'stop', '--dir', labDir]) as {stopped: boolean}
    expect(stopped.stopped).toBe(true)
    expect(processesUsing(labDir)).toEqual([])
    for (const pid of seenPids) expect(existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')).toBe(false)
    // Outside the lab dir pgi wrote only the operator's own age identity (the user's key, created
    // on first use by any pgi command, in the state dir): nothing in $HOME or $TMPDIR.
    expect(readdirSync(join(base, 'state'))).toEqual(['age-identity.txt'])
    expect(readdirSync(join(base, 'home'))).toEqual([])
    expect(readdirSync(join(base, 'tmp'))).toEqual([])
    expect(existsSync(join(base, 'xdg'))).toBe(false)
  })
})
