/**
 * The `-cpu` argument PVE gives a VM, from its config's `cpu` option (qemu-server's
 * PVE::QemuServer::CPUConfig::get_cpu_options, for x86_64 and the models the lab knows: the
 * built-in ones and QEMU's named ones; custom models are refused when the config is written,
 * src/lab/validate.ts). The lab's QEMU backend starts each VM with it, as PVE would, instead of
 * a CPU of its own: what the guest sees (vendor, instruction sets, hence which code paths its
 * kernel, glibc, OpenSSL and PostgreSQL take) is what it would see on the hypervisor.
 *
 * Written here rather than taken from a library: there is no PVE code to run in Node; this is
 * the part of qemu-server's logic that decides the model and flags, kept to its rules.
 */
import {readFileSync} from 'node:fs'

import {parsePropertyString} from './validate.js'
import {NAMED_PROPERTY_FORMATS} from './pve-formats.js'
import type {Accel} from '../qemu/accel.js'

/** PVE's built-in models: reported to the guest as another model, with flags added. */
const BUILTIN_MODELS: Record<string, {reported: string; flags: string[]}> = {
  'x86-64-v2': {reported: 'qemu64', flags: ['+popcnt', '+pni', '+sse4.1', '+sse4.2', '+ssse3']},
  'x86-64-v2-AES': {reported: 'qemu64', flags: ['+aes', '+popcnt', '+pni', '+sse4.1', '+sse4.2', '+ssse3']},
  'x86-64-v3': {
    reported: 'qemu64',
    flags: ['+aes', '+popcnt', '+pni', '+sse4.1', '+sse4.2', '+ssse3', '+avx', '+avx2', '+bmi1', '+bmi2', '+f16c', '+fma', '+abm', '+movbe', '+xsave'],
  },
  'x86-64-v4': {
    reported: 'qemu64',
    flags: ['+aes', '+popcnt', '+pni', '+sse4.1', '+sse4.2', '+ssse3', '+avx', '+avx2', '+bmi1', '+bmi2', '+f16c', '+fma', '+abm', '+movbe', '+xsave',
      '+avx512f', '+avx512bw', '+avx512cd', '+avx512dq', '+avx512vl'],
  },
}

/** Models whose vendor PVE leaves to the host (the others get `vendor=` forced). */
const GENERIC = new Set(['host', 'kvm32', 'kvm64', 'qemu32', 'qemu64', 'max'])

/** The vendor PVE forces for a named model: AMD's by name, every other named one Intel's. */
function vendorOf(model: string): string | undefined {
  if (GENERIC.has(model)) return undefined
  return /^(athlon|phenom|Opteron_G\d|EPYC)/.test(model) ? 'AuthenticAMD' : 'GenuineIntel'
}

/**
 * `-cpu`'s value for a VM config's `cpu` option (undefined: not set) under `accel`, as qemu-server
 * builds it: the default model is kvm64 with KVM and qemu64 without; a built-in model is its
 * reported model plus its flags; then PVE's own flags (kvm64: +lahf_lm, +sep; with KVM:
 * +kvm_pv_unhalt, +kvm_pv_eoi), the VM's flags, `enforce` with KVM (a model the host cannot
 * give fails to start rather than run with less), `kvm=off` for `hidden`, the vendor of a
 * named model. A flag set twice keeps its last value and the flags are printed sorted by name,
 * as resolve_cpu_flags does; `nested-virt` becomes the host's svm or vmx (`hostFlags`: the host's
 * /proc/cpuinfo flags), or is left out when the host has neither.
 */
export function pveCpuArg(cpuOption: string | undefined, accel: Accel, hostFlags: readonly string[] = []): string {
  const kvm = accel === 'kvm'
  let model = kvm ? 'kvm64' : 'qemu64'
  let builtinFlags: string[] = []
  let vmFlags: string[] = []
  let hidden = false
  const extra: string[] = []
  if (cpuOption) {
    const c = parsePropertyString(cpuOption, NAMED_PROPERTY_FORMATS['pve-vm-cpu-conf']!, 'cpu', 'pve-vm-cpu-conf')
    model = c.cputype ?? model
    const b = BUILTIN_MODELS[model]
    if (b) {
      model = b.reported
      builtinFlags = b.flags
    }
    vmFlags = c.flags ? c.flags.split(';').filter(Boolean) : []
    hidden = c.hidden === '1'
    if (c['guest-phys-bits']) extra.push(`guest-phys-bits=${c['guest-phys-bits']}`)
    if (c['phys-bits']) extra.push(c['phys-bits'] === 'host' ? 'host-phys-bits=true' : `phys-bits=${c['phys-bits']}`)
  }
  const pveFlags: string[] = []
  if (model === 'kvm64') pveFlags.push('+lahf_lm')
  if (model === 'kvm64' || model === 'kvm32') pveFlags.push('+sep')
  if (/^Opteron/.test(model)) pveFlags.push('-rdtscp')
  if (kvm) pveFlags.push('+kvm_pv_unhalt', '+kvm_pv_eoi')
  const nested = hostFlags.find((f) => f === 'svm' || f === 'vmx')
  const flags = new Map<string, string>()
  for (const f of [...pveFlags, ...builtinFlags, ...vmFlags]) {
    let name = f.slice(1)
    if (name === 'nested-virt') {
      if (!nested) continue
      name = nested
    }
    flags.set(name, `${f[0]}${name}`)
  }
  if (model !== 'host' && kvm) flags.set('enforce', 'enforce')
  if (hidden) flags.set('kvm', 'kvm=off')
  const vendor = vendorOf(model)
  if (vendor) flags.set('vendor', `vendor=${vendor}`)
  const sorted = [...flags.keys()].sort().map((k) => flags.get(k)!)
  return [model, ...sorted, ...extra].join(',')
}

/** The host CPU's flags (/proc/cpuinfo), for PVE's `nested-virt` (svm or vmx). */
function hostCpuFlags(): string[] {
  try {
    return /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/) ?? []
  } catch {
    return []
  }
}

/**
 * The lab's `-cpu` for a VM's `cpu` option on the accelerator the lab has: PVE's (pveCpuArg), and
 * where KVM does not work what PVE gives a VM with `kvm: 0` (no `enforce`, no KVM paravirtual
 * flags, which TCG cannot emulate).
 */
export function labCpuArg(cpuOption: string | undefined, accel: Accel): string {
  return pveCpuArg(cpuOption, accel, hostCpuFlags())
}
