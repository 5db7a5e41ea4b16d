import {constants as fsConstants} from 'node:fs'
import {access, mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {UsageError} from '../errors.js'
import {run} from '../exec.js'
import type {Io} from '../io.js'
import {stateDir} from '../paths.js'

/**
 * KVM or TCG?
 *
 * `/dev/kvm` existing is not enough: on some hosts (nested virtualisation without unrestricted
 * guest support) KVM runs protected mode code but dies with "KVM internal error … emulation
 * failure" as soon as a boot loader switches between protected and real mode (SYSLINUX,
 * memdisk). So the decision is made by a real probe boot: QEMU with `-accel kvm` boots
 * SYSLINUX's `memdisk` (the same mode switches as a disk boot loader) with a 512-byte boot
 * sector that writes a marker to the serial port. The marker within a few seconds means KVM
 * works; "emulation failure", an `internal-error` run state or silence means it does not, and
 * pgi falls back to software emulation (`-accel tcg`, with the CPU of TCG_CPU).
 *
 * The result is cached per boot of the machine (keyed by /proc/sys/kernel/random/boot_id) in
 * `<stateDir>/qemu/accel.json`; `PGI_QEMU_ACCEL=kvm|tcg` overrides both probe and cache.
 */

export type Accel = 'kvm' | 'tcg'

export interface AccelDecision {
  accel: Accel
  /** QEMU arguments selecting the accelerator and CPU model. */
  args: string[]
  /** Why, in words (for logs and `lab status`). */
  reason: string
  /** Where the decision came from. */
  source: 'env' | 'probe' | 'cache'
}

/** What a probe boot observed. */
export interface ProbeObservation {
  /** /dev/kvm exists and is readable+writable by this user. */
  kvmDevice: boolean
  /** The probe could not run (missing memdisk/QEMU); `detail` says why. */
  probeUnavailable?: boolean
  /** The boot sector's marker reached the serial port. */
  markerSeen?: boolean
  /** QEMU reported a KVM internal/emulation error. */
  emulationFailure?: boolean
  /** QEMU exited with an error before the marker (e.g. "Could not access KVM kernel module"). */
  qemuError?: string
  detail?: string
}

export const PROBE_MARKER = 'PGI-KVM-PROBE-OK'

/**
 * The CPU of the VMs pgi starts itself under software emulation (image builds, boot tests,
 * benchmarks): PVE's `x86-64-v2` model as qemu-server gives it to QEMU without KVM
 * (src/lab/pve-cpu.ts), the model the lab's inventory asks for, so that the guest takes the code
 * paths it takes on a hypervisor (SSE4.2 for PostgreSQL's and ext4's checksums). Not QEMU's
 * `max`: under TCG it advertises AVX2, ERMS and the rest of what TCG can emulate, and the
 * guest's glibc, kernel and PostgreSQL then take code paths that are slower to emulate —
 * measured on the image's VM: 8 copies of a Tryton database 20.8–23.1 s with `max`, 16.7–17.8 s
 * with this model and AES; a Python loop 2.2–2.5 s against 1.8 s (docs/performance.md). Not
 * x86-64-v2-AES (the inventory's default for hypervisors): TCG enforces that the guest uses only
 * the instructions its CPU advertises, and Debian's aesni_intel runs PCLMULQDQ, which that model
 * does not advertise, in its boot self-test (an oops; udev then waits two minutes).
 */
export const TCG_CPU = 'qemu64,+pni,+popcnt,+sse4.1,+sse4.2,+ssse3'

/** QEMU arguments for one accelerator (KVM: the host's own CPU; TCG: TCG_CPU). */
export function accelArgs(accel: Accel): string[] {
  return accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', TCG_CPU]
}

/** Pure decision from a probe observation (unit-tested). */
export function decideFromProbe(o: ProbeObservation): AccelDecision {
  const tcg = (reason: string): AccelDecision => ({accel: 'tcg', args: accelArgs('tcg'), reason, source: 'probe'})
  if (!o.kvmDevice) return tcg('/dev/kvm is absent or not accessible: software emulation (TCG)')
  if (o.probeUnavailable) return tcg(`KVM could not be verified (${o.detail ?? 'probe unavailable'}): software emulation (TCG)`)
  if (o.emulationFailure) return tcg('KVM probe boot died with "emulation failure": software emulation (TCG)')
  if (o.qemuError) return tcg(`KVM probe boot failed (${o.qemuError}): software emulation (TCG)`)
  if (o.markerSeen) return {accel: 'kvm', args: accelArgs('kvm'), reason: 'KVM probe boot succeeded: hardware acceleration', source: 'probe'}
  return tcg(`KVM probe boot gave no sign of life${o.detail ? ` (${o.detail})` : ''}: software emulation (TCG)`)
}

/** Reads `PGI_QEMU_ACCEL`; throws a usage error for any value other than kvm/tcg. */
export function accelFromEnv(env: NodeJS.ProcessEnv = process.env): AccelDecision | undefined {
  const v = env.PGI_QEMU_ACCEL?.trim().toLowerCase()
  if (!v) return undefined
  if (v !== 'kvm' && v !== 'tcg') {
    throw new UsageError(`PGI_QEMU_ACCEL must be "kvm" or "tcg", not "${env.PGI_QEMU_ACCEL}"`)
  }
  return {accel: v, args: accelArgs(v), reason: `forced by PGI_QEMU_ACCEL=${v}`, source: 'env'}
}

/** A 512-byte boot sector (padded to a 1.44 MB floppy) writing PROBE_MARKER to COM1, then halting. */
export function probeFloppy(): Buffer {
  const msg = Buffer.from(`${PROBE_MARKER}\r\n\0`, 'latin1')
  // mov dx,0x3f8 ; mov si,msg ; cld ; l: cs lodsb ; test al,al ; jz d ; out dx,al ; jmp l ; d: cli ; hlt ; jmp d
  const code = Buffer.from([0xba, 0xf8, 0x03, 0xbe, 0, 0, 0xfc, 0x2e, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf7, 0xfa, 0xf4, 0xeb, 0xfd])
  const msgAddr = 0x7c00 + code.length
  code[4] = msgAddr & 0xff
  code[5] = msgAddr >> 8
  const img = Buffer.alloc(1_474_560)
  code.copy(img, 0)
  msg.copy(img, code.length)
  img[510] = 0x55
  img[511] = 0xaa
  return img
}

const MEMDISK = '/usr/lib/syslinux/memdisk'

export interface ProbeOptions {
  /** Where the probe's temporary files go (default: a fresh dir under `<stateDir>/qemu`). */
  workDir?: string
  /** How long to wait for the marker (default 15 s). */
  timeoutMs?: number
  env?: NodeJS.ProcessEnv
  io?: Io
}

/** Runs the KVM probe boot and reports what happened (never throws for a KVM failure). */
export async function probeKvm(opts: ProbeOptions = {}): Promise<ProbeObservation> {
  const env = opts.env ?? process.env
  try {
    await access('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK)
  } catch {
    return {kvmDevice: false}
  }
  try {
    await access(MEMDISK, fsConstants.R_OK)
  } catch {
    return {kvmDevice: true, probeUnavailable: true, detail: `${MEMDISK} missing (apt-get install syslinux-common)`}
  }
  const base = opts.workDir ?? join(stateDir(env), 'qemu')
  await mkdir(base, {recursive: true})
  const dir = await mkdtemp(join(base, 'kvm-probe-'))
  try {
    const floppy = join(dir, 'probe.img')
    const serial = join(dir, 'serial.log')
    await writeFile(floppy, probeFloppy())
    await writeFile(serial, '')
    const timeoutMs = opts.timeoutMs ?? 15_000
    // A KVM internal error stops the VM (QEMU then idles), so the run is always bounded by an
    // abort: at the deadline, or as soon as the marker shows up in the serial log.
    const ac = new AbortController()
    const deadline = setTimeout(() => ac.abort(), timeoutMs)
    const watch = setInterval(() => {
      readFile(serial, 'latin1').then((t) => t.includes(PROBE_MARKER) && ac.abort(), () => undefined)
    }, 200)
    let r: {stderr: string}
    try {
      r = await run(
        'qemu-system-x86_64',
        [
          ...accelArgs('kvm'),
          '-m', '64', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
          '-serial', `file:${serial}`, '-monitor', 'none',
          '-kernel', MEMDISK, '-initrd', floppy, '-append', 'floppy',
        ],
        {allowFailure: true, signal: ac.signal},
        opts.io,
      )
    } catch (error) {
      r = {stderr: String((error as Error)?.message ?? error)}
    } finally {
      clearTimeout(deadline)
      clearInterval(watch)
    }
    const out = await readFile(serial, 'latin1').catch(() => '')
    const stderr = r.stderr
    if (out.includes(PROBE_MARKER)) return {kvmDevice: true, markerSeen: true}
    if (/emulation failure|KVM internal error/i.test(stderr)) return {kvmDevice: true, emulationFailure: true}
    const err = stderr.split('\n').find((l) => /qemu-system-x86_64: (?!terminating on signal)/.test(l))
    if (err) return {kvmDevice: true, qemuError: err.replace(/^qemu-system-x86_64: /, '').trim()}
    return {kvmDevice: true, markerSeen: false, detail: `no marker within ${timeoutMs} ms`}
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
}

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown')).trim()
}

let memo: Promise<AccelDecision> | undefined

export interface DecideOptions extends ProbeOptions {
  /** Cache file (default `<stateDir>/qemu/accel.json`). */
  cacheFile?: string
  /** Ignore the cache and probe again. */
  refresh?: boolean
}

/**
 * The accelerator to use on this machine: `PGI_QEMU_ACCEL`, else the cached probe result for
 * this boot, else a fresh probe (whose result is cached). Memoised per process.
 */
export function decideAccel(opts: DecideOptions = {}): Promise<AccelDecision> {
  const env = opts.env ?? process.env
  const forced = accelFromEnv(env)
  if (forced) return Promise.resolve(forced)
  if (!memo || opts.refresh) {
    memo = decideUncached(opts).catch((error: unknown) => {
      memo = undefined
      throw error
    })
  }
  return memo
}

interface CacheRecord {
  bootId: string
  accel: Accel
  reason: string
  decidedAt: string
}

async function decideUncached(opts: DecideOptions): Promise<AccelDecision> {
  const env = opts.env ?? process.env
  const cacheFile = opts.cacheFile ?? join(stateDir(env), 'qemu', 'accel.json')
  const id = await bootId()
  if (!opts.refresh) {
    try {
      const c = JSON.parse(await readFile(cacheFile, 'utf8')) as CacheRecord
      if (c.bootId === id && (c.accel === 'kvm' || c.accel === 'tcg')) {
        return {accel: c.accel, args: accelArgs(c.accel), reason: c.reason, source: 'cache'}
      }
    } catch {
      // no cache, or unreadable: probe
    }
  }
  opts.io?.debug('probing KVM with a short boot')
  const decision = decideFromProbe(await probeKvm(opts))
  opts.io?.info(`QEMU accelerator: ${decision.accel} (${decision.reason})`)
  try {
    await mkdir(dirname(cacheFile), {recursive: true})
    const rec: CacheRecord = {bootId: id, accel: decision.accel, reason: decision.reason, decidedAt: new Date().toISOString()}
    await writeFile(cacheFile, JSON.stringify(rec, null, 2) + '\n')
  } catch (error) {
    opts.io?.warn(`could not cache the accelerator decision in ${cacheFile}: ${(error as Error).message}`)
  }
  return decision
}

/** For tests: forget the per-process memo. */
export function resetAccelMemo(): void {
  memo = undefined
}
