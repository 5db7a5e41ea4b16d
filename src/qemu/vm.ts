import {existsSync, readFileSync} from 'node:fs'
import {mkdir, readFile, rm, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import {ErrorCode, UsageError, UserError} from '../errors.js'
import {requireTools, spawnDetached} from '../exec.js'
import type {Io} from '../io.js'
import {sleep} from '../sleep.js'
import {type AccelDecision, decideAccel} from './accel.js'
import {QgaClient, type QgaClientOptions} from './qga.js'
import {QmpClient, type QmpStatus} from './qmp.js'

/**
 * One QEMU virtual machine run in the background (lab VMs, image boot tests).
 *
 * Layout of the VM's runtime directory `dir` (QEMU runs with its cwd there, so the socket
 * names stay short whatever the depth of `dir`):
 *   qmp.sock    QMP monitor (status, system_powerdown, quit, info usernet)
 *   qga.sock    host side of the qemu-guest-agent virtio-serial port (org.qemu.guest_agent.0)
 *   serial.log  the guest's serial console (ttyS0)
 *   qemu.log    QEMU's own stdout/stderr
 *   qemu.pid    pid file written by QEMU
 *   vm.json     what `attach()` needs to find the VM again (pid, forwards, accel)
 *
 * Networking is QEMU user-mode (slirp): no bridge, no root, no address other than loopback on
 * the host. The guest network (`net`, `host` = gateway) is chosen so that the guest's static
 * address from its inventory works unchanged, DHCP (if the guest asks) hands out that same
 * address, and `restrict=on` keeps the guest from reaching anything on the host or beyond.
 * Only the named guest ports are forwarded, each to 127.0.0.1 on an ephemeral port that QEMU
 * picks (read back from `info usernet`, so there is no port race).
 */

export interface VmDiskSpec {
  /** Image file (absolute, or relative to the caller's cwd). */
  file: string
  format?: 'qcow2' | 'raw'
  /** `virtio` (virtio-blk, default) or `ide` (an IDE cdrom/disk, e.g. PVE's ide2). */
  bus?: 'virtio' | 'ide'
  /** IDE slot 0–3 (ide0…ide3) for bus `ide`. */
  ideIndex?: number
  media?: 'disk' | 'cdrom'
  /** Serial number the guest sees (/dev/disk/by-id/virtio-<serial>). */
  serial?: string
  readonly?: boolean
  /** Device id (e.g. "virtio0"); default derived from the position. */
  id?: string
  /** Lower boots first; the first virtio disk gets 100 when none is given. */
  bootIndex?: number
  /**
   * Host cache mode (QEMU's `cache=`); default `writeback`, the host's page cache (build and test
   * VMs). The lab gives its VMs PVE's choice instead (src/lab/pve-drive.ts: `none`).
   */
  cache?: DiskCache
  /** Host I/O engine (QEMU's `aio=`); default QEMU's (threads). */
  aio?: DiskAio
}

/** QEMU's (and PVE's) drive cache modes. */
export type DiskCache = 'none' | 'writethrough' | 'writeback' | 'directsync' | 'unsafe'
/** QEMU's (and PVE's) drive I/O engines. */
export type DiskAio = 'threads' | 'native' | 'io_uring'

export interface PortForward {
  /** ssh, web, jsonrpc, postgresql… (reported back with the host port). */
  name: string
  guestPort: number
  /** Host port on 127.0.0.1; 0 or absent: an ephemeral port chosen by QEMU. */
  hostPort?: number
}

/**
 * A guest-to-host path through user-mode networking (QEMU's `guestfwd`): each TCP connection the
 * guest opens to `guestAddress:guestPort` is handed to a new `command` process (stdin/stdout =
 * the connection; run by QEMU in its cwd, the VM's runtime directory). `restrict=on` does not
 * block it: it is the one way out of an isolated guest, and only where the host chose.
 */
export interface GuestForward {
  /** An address of the guest network other than the guest's, the gateway's and the DNS's. */
  guestAddress: string
  guestPort: number
  /** Shell-free command line (QEMU splits it on spaces); no commas needed, any are escaped. */
  command: string
}

export interface UserNetSpec {
  /** Guest subnet (CIDR), e.g. 10.1.2.0/24. */
  net: string
  /** The gateway address the guest uses (QEMU's own address inside `net`). */
  host: string
  /** The guest's address: forwards go there, and DHCP hands it out. */
  guestAddress: string
  /** QEMU's DNS address inside `net` (default: a free address of `net`). */
  dns?: string
  mac?: string
  forwards?: PortForward[]
  /** Isolate the guest (no traffic out except replies on forwarded ports). Default true. */
  restrict?: boolean
  /** Guest-to-host paths (guestfwd), allowed even when restricted. */
  guestForwards?: GuestForward[]
}

export interface VmLaunchSpec {
  name: string
  /** Runtime directory (created if absent). */
  dir: string
  memoryMiB: number
  cpus?: number
  disks: VmDiskSpec[]
  /** NoCloud seed image (cloudinit.ts), attached as an IDE cdrom (ide2, like PVE). */
  seedImage?: string
  network?: UserNetSpec
  /** Accelerator; default: `decideAccel()`. */
  accel?: AccelDecision
  /** `-cpu`'s value (the lab: what PVE would give the VM's config); default: the accelerator's. */
  cpu?: string
  /** SMBIOS uuid. */
  uuid?: string
  /** Add the qemu-guest-agent port (default true). */
  guestAgent?: boolean
  /** How long to wait for QEMU's monitor after launch (default 15 s). */
  startTimeoutMs?: number
}

export interface ForwardedPort {
  name: string
  host: '127.0.0.1'
  hostPort: number
  guestPort: number
}

interface VmState {
  name: string
  pid: number
  dir: string
  forwards: ForwardedPort[]
  accel: string
  startedAt: string
}

const QEMU = 'qemu-system-x86_64'

/** Escapes a value for QEMU's comma-separated option syntax. */
function qopt(v: string): string {
  return v.replaceAll(',', ',,')
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((a, o) => a * 256 + Number(o), 0)
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')
}

/**
 * The user-mode network for a guest whose static config is `address/prefix` via `gateway`:
 * net = the address's subnet, host = the gateway (or the first address when none is given).
 * Prefixes longer than /29 cannot hold QEMU's gateway + DNS + guest and are refused.
 */
export function userNetFor(address: string, prefix: number, gateway: string | undefined, forwards: PortForward[] = [], mac?: string): UserNetSpec {
  if (!Number.isInteger(prefix) || prefix < 8 || prefix > 29) throw new UsageError(`prefix /${prefix} of ${address} is not usable for a lab VM (expected /8 to /29)`)
  const size = 2 ** (32 - prefix)
  const base = Math.floor(ipToInt(address) / size) * size
  const inNet = (ip: string) => Math.floor(ipToInt(ip) / size) * size === base
  const host = gateway ?? intToIp(base + 1)
  if (!inNet(host)) throw new UsageError(`gateway ${host} is not in ${intToIp(base)}/${prefix} (the subnet of ${address})`)
  if (host === address) throw new UsageError(`gateway ${host} equals the guest address`)
  const used = new Set([address, host])
  let dns: string | undefined
  for (const cand of [base + 3, base + 2, base + size - 2, base + 4, base + 5]) {
    const ip = intToIp(cand)
    if (!used.has(ip) && cand > base && cand < base + size - 1) {
      dns = ip
      break
    }
  }
  return {net: `${intToIp(base)}/${prefix}`, host, guestAddress: address, dns, forwards, mac, restrict: true}
}

/** Builds QEMU's command line for `spec` (paths relative to `spec.dir`, QEMU's cwd). Pure. */
export function qemuArgs(spec: VmLaunchSpec, accel: AccelDecision): string[] {
  const dir = resolve(spec.dir)
  const a: string[] = [
    '-name', `${qopt(spec.name)},process=pgi-vm-${qopt(spec.name)}`,
    '-nodefaults', '-no-user-config',
    '-machine', 'pc',
    ...accel.args.map((arg, i) => (spec.cpu !== undefined && accel.args[i - 1] === '-cpu' ? spec.cpu : arg)),
    '-smp', String(spec.cpus ?? 1),
    '-m', String(spec.memoryMiB),
    '-display', 'none',
    '-rtc', 'base=utc',
    '-pidfile', join(dir, 'qemu.pid'),
    '-chardev', 'socket,id=qmp,path=qmp.sock,server=on,wait=off',
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', 'file,id=serial0,path=serial.log',
    '-serial', 'chardev:serial0',
  ]
  if (spec.uuid) a.push('-uuid', spec.uuid)
  if (spec.guestAgent ?? true) {
    a.push(
      '-chardev', 'socket,id=qga0,path=qga.sock,server=on,wait=off',
      '-device', 'virtio-serial-pci,id=qga-bus',
      '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
    )
  }
  let virtioN = 0
  let firstBoot = !spec.disks.some((d) => d.bootIndex !== undefined)
  const ideUsed = new Set<number>()
  const addIde = (id: string, idx: number, drive: string, cdrom: boolean) => {
    if (idx < 0 || idx > 3 || ideUsed.has(idx)) throw new UsageError(`IDE slot ide${idx} is invalid or used twice`)
    ideUsed.add(idx)
    a.push('-device', `${cdrom ? 'ide-cd' : 'ide-hd'},bus=ide.${Math.floor(idx / 2)},unit=${idx % 2},drive=${drive},id=${id}`)
  }
  spec.disks.forEach((d, i) => {
    const bus = d.bus ?? 'virtio'
    const id = d.id ?? (bus === 'virtio' ? `virtio${virtioN}` : `ide${d.ideIndex ?? i}`)
    const drive = `drive-${id}`
    const fmt = d.format ?? (d.file.endsWith('.raw') || d.file.endsWith('.iso') ? 'raw' : 'qcow2')
    const ro = d.readonly || d.media === 'cdrom'
    a.push('-drive', `file=${qopt(resolve(d.file))},format=${fmt},if=none,id=${drive},cache=${d.cache ?? 'writeback'}${d.aio ? `,aio=${d.aio}` : ''},discard=unmap${ro ? ',readonly=on' : ''}${d.media === 'cdrom' ? ',media=cdrom' : ''}`)
    if (bus === 'virtio') {
      virtioN++
      let dev = `virtio-blk-pci,drive=${drive},id=${id}`
      if (d.serial) {
        if (!/^[A-Za-z0-9_.-]{1,20}$/.test(d.serial)) throw new UsageError(`disk serial "${d.serial}" must be 1–20 characters [A-Za-z0-9_.-]`)
        dev += `,serial=${d.serial}`
      }
      const bootIndex = d.bootIndex ?? (firstBoot ? 100 : undefined)
      firstBoot = false
      if (bootIndex !== undefined) dev += `,bootindex=${bootIndex}`
      a.push('-device', dev)
    } else {
      addIde(id, d.ideIndex ?? i, drive, d.media === 'cdrom')
    }
  })
  if (spec.seedImage) {
    a.push('-drive', `file=${qopt(resolve(spec.seedImage))},format=raw,if=none,id=drive-ide2,media=cdrom,readonly=on`)
    addIde('ide2', 2, 'drive-ide2', true)
  }
  if (spec.network) {
    const n = spec.network
    let opts = `user,id=net0,net=${n.net},host=${n.host},dhcpstart=${n.guestAddress}`
    if (n.dns) opts += `,dns=${n.dns}`
    if (n.restrict ?? true) opts += ',restrict=on'
    for (const f of n.forwards ?? []) {
      if (!Number.isInteger(f.guestPort) || f.guestPort < 1 || f.guestPort > 65535) throw new UsageError(`forward ${f.name}: bad guest port ${f.guestPort}`)
      opts += `,hostfwd=tcp:127.0.0.1:${f.hostPort ?? 0}-${n.guestAddress}:${f.guestPort}`
    }
    for (const g of n.guestForwards ?? []) {
      if (!Number.isInteger(g.guestPort) || g.guestPort < 1 || g.guestPort > 65535) throw new UsageError(`guest forward: bad guest port ${g.guestPort}`)
      if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(g.guestAddress)) throw new UsageError(`guest forward: bad guest address ${g.guestAddress}`)
      opts += `,guestfwd=tcp:${g.guestAddress}:${g.guestPort}-cmd:${qopt(g.command)}`
    }
    a.push('-netdev', opts)
    a.push('-device', `virtio-net-pci,netdev=net0,id=net0${n.mac ? `,mac=${n.mac}` : ''}`)
  }
  return a
}

/** Parses `info usernet` (HMP): the host-forward table → guest port → host port. */
export function parseUsernet(text: string): {hostAddr: string; hostPort: number; guestAddr: string; guestPort: number}[] {
  const out: {hostAddr: string; hostPort: number; guestAddr: string; guestPort: number}[] = []
  for (const line of text.split('\n')) {
    const m = /TCP\[HOST_FORWARD\]\s+-?\d+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)/.exec(line)
    if (m) out.push({hostAddr: m[1], hostPort: Number(m[2]), guestAddr: m[3], guestPort: Number(m[4])})
  }
  return out
}

/** Is `pid` a live (non-zombie) process? */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

function cmdlineOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
  } catch {
    return ''
  }
}


export class QemuVm {
  private constructor(
    readonly name: string,
    /** Absolute runtime directory. */
    readonly dir: string,
    readonly pid: number,
    readonly forwards: ForwardedPort[],
    readonly accel: string,
    readonly startedAt: Date,
  ) {}

  get paths() {
    return {
      qmp: join(this.dir, 'qmp.sock'),
      qga: join(this.dir, 'qga.sock'),
      serialLog: join(this.dir, 'serial.log'),
      qemuLog: join(this.dir, 'qemu.log'),
      pidFile: join(this.dir, 'qemu.pid'),
      state: join(this.dir, 'vm.json'),
    }
  }

  /**
   * Starts QEMU in the background and returns once its monitor answers and the forwarded ports
   * are known. Throws QEMU_FAILED with QEMU's own message when it does not start.
   */
  static async launch(spec: VmLaunchSpec, io?: Io): Promise<QemuVm> {
    await requireTools([QEMU])
    const dir = resolve(spec.dir)
    await mkdir(dir, {recursive: true})
    const old = await QemuVm.attach(dir)
    if (old?.isRunning()) throw new UserError(ErrorCode.QEMU_FAILED, `VM ${spec.name} is already running (pid ${old.pid}, ${dir})`)
    for (const f of ['qmp.sock', 'qga.sock', 'qemu.pid', 'vm.json']) await rm(join(dir, f), {force: true})
    const accel = spec.accel ?? (await decideAccel({io}))
    const args = qemuArgs(spec, accel)
    const qemuLog = join(dir, 'qemu.log')
    await writeFile(qemuLog, `--- ${new Date().toISOString()} ${QEMU} ${args.join(' ')}\n`, {flag: 'a'})
    io?.debug(`launching ${spec.name}`, {accel: accel.accel, dir})
    const {pid} = spawnDetached(QEMU, args, {cwd: dir, logFile: qemuLog})
    if (!pid) throw new UserError(ErrorCode.QEMU_FAILED, `could not start ${QEMU} for ${spec.name}`)
    const startedAt = new Date()
    const vm = new QemuVm(spec.name, dir, pid, [], accel.accel, startedAt)
    const deadline = Date.now() + (spec.startTimeoutMs ?? 15_000)
    let qmp: QmpClient | undefined
    while (!qmp) {
      if (!processAlive(pid)) throw await vm.startFailure('QEMU exited during start')
      if (Date.now() > deadline) {
        await vm.kill()
        throw await vm.startFailure('QEMU monitor did not come up')
      }
      if (existsSync(vm.paths.qmp)) qmp = await QmpClient.connect(vm.paths.qmp, 2000).catch(() => undefined)
      if (!qmp) await sleep(100)
    }
    try {
      if (spec.network?.forwards?.length) {
        const table = parseUsernet(await qmp.hmp('info usernet'))
        for (const f of spec.network.forwards) {
          const row = table.find((r) => r.guestPort === f.guestPort && r.guestAddr === spec.network?.guestAddress)
          if (!row) {
            await vm.kill()
            throw new UserError(ErrorCode.QEMU_FAILED, `QEMU did not set up the forward for ${f.name} (guest port ${f.guestPort})`)
          }
          if (row.hostAddr !== '127.0.0.1') {
            await vm.kill()
            throw new UserError(ErrorCode.QEMU_FAILED, `forward for ${f.name} listens on ${row.hostAddr}, not loopback`)
          }
          vm.forwards.push({name: f.name, host: '127.0.0.1', hostPort: row.hostPort, guestPort: f.guestPort})
        }
      }
    } finally {
      qmp.close()
    }
    const state: VmState = {name: spec.name, pid, dir, forwards: vm.forwards, accel: accel.accel, startedAt: startedAt.toISOString()}
    await writeFile(vm.paths.state, JSON.stringify(state, null, 2) + '\n')
    io?.debug(`VM ${spec.name} running`, {pid, forwards: vm.forwards.map((f) => `${f.name}=${f.host}:${f.hostPort}`).join(' ')})
    return vm
  }

  /** Finds the VM last launched in `dir` (undefined when there is no record). */
  static async attach(dir: string): Promise<QemuVm | undefined> {
    const abs = resolve(dir)
    let st: VmState
    try {
      st = JSON.parse(await readFile(join(abs, 'vm.json'), 'utf8')) as VmState
    } catch {
      return undefined
    }
    return new QemuVm(st.name, abs, st.pid, st.forwards ?? [], st.accel, new Date(st.startedAt))
  }

  private async startFailure(what: string): Promise<UserError> {
    const log = await readFile(this.paths.qemuLog, 'utf8').catch(() => '')
    const lines = log.split('\n').filter((l) => l && !l.startsWith('--- '))
    const msg = lines.slice(-5).join('\n').trim()
    return new UserError(ErrorCode.QEMU_FAILED, `${what} for ${this.name}${msg ? `: ${msg}` : ''}`, {details: {log: this.paths.qemuLog}})
  }

  /** The process is alive and is this VM's QEMU (guards against pid reuse). */
  isRunning(): boolean {
    return processAlive(this.pid) && cmdlineOf(this.pid).includes(this.paths.pidFile)
  }

  /** Seconds since launch (0 when not running). */
  uptimeS(): number {
    return this.isRunning() ? Math.floor((Date.now() - this.startedAt.getTime()) / 1000) : 0
  }

  /** A fresh QMP connection (close it after use). */
  qmp(timeoutMs = 5000): Promise<QmpClient> {
    return QmpClient.connect(this.paths.qmp, timeoutMs)
  }

  /** A guest-agent client for this VM. */
  qga(opts?: QgaClientOptions): QgaClient {
    return new QgaClient(this.paths.qga, opts)
  }

  /** QMP run state, or `stopped` when the process is gone. */
  async status(timeoutMs = 3000): Promise<QmpStatus> {
    if (!this.isRunning()) return {running: false, status: 'stopped'}
    const q = await this.qmp(timeoutMs)
    try {
      return await q.status(timeoutMs)
    } finally {
      q.close()
    }
  }

  /** Presses the ACPI power button. */
  async powerdown(): Promise<void> {
    const q = await this.qmp()
    try {
      await q.systemPowerdown()
    } finally {
      q.close()
    }
  }

  /** Waits until the process is gone; false when still alive after `timeoutMs`. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (this.isRunning()) {
      if (Date.now() >= deadline) return false
      await sleep(100)
    }
    return true
  }

  /**
   * Stops the VM: a clean ACPI shutdown first when `graceMs` > 0, then QMP quit, then SIGTERM
   * and SIGKILL to QEMU's process group. Resolves when the process is gone. Idempotent.
   */
  async stop(opts: {graceMs?: number} = {}): Promise<void> {
    if (!this.isRunning()) return this.cleanup()
    const grace = opts.graceMs ?? 0
    if (grace > 0) {
      await this.powerdown().catch(() => undefined)
      if (await this.waitExit(grace)) return this.cleanup()
    }
    try {
      const q = await this.qmp(2000)
      await q.quit(2000).catch(() => undefined)
      q.close()
    } catch {
      // monitor unavailable: signals below
    }
    if (await this.waitExit(3000)) return this.cleanup()
    await this.kill()
    return this.cleanup()
  }

  /** SIGTERM, then SIGKILL, to the process group; waits until gone. */
  private async kill(): Promise<void> {
    for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
      if (!processAlive(this.pid)) return
      try {
        process.kill(-this.pid, sig)
      } catch {
        try {
          process.kill(this.pid, sig)
        } catch {
          // already gone
        }
      }
      const deadline = Date.now() + (sig === 'SIGTERM' ? 3000 : 10_000)
      while (processAlive(this.pid) && Date.now() < deadline) await sleep(50)
    }
    if (processAlive(this.pid)) throw new UserError(ErrorCode.QEMU_FAILED, `QEMU pid ${this.pid} (${this.name}) survived SIGKILL`)
  }

  private async cleanup(): Promise<void> {
    for (const f of ['qmp.sock', 'qga.sock', 'qemu.pid']) await rm(join(this.dir, f), {force: true})
  }

  /** The last `lines` lines of the serial console. */
  async serialTail(lines = 40): Promise<string> {
    const t = await readFile(this.paths.serialLog, 'utf8').catch(() => '')
    return t.split('\n').slice(-lines).join('\n')
  }
}
