import {describe, expect, it} from 'vitest'

import {pveCpuArg} from '../../../src/lab/pve-cpu.js'
import {TCG_CPU} from '../../../src/qemu/accel.js'
import {qemuArgs} from '../../../src/qemu/vm.js'

// The command lines qemu-server (PVE::QemuServer::CPUConfig::get_cpu_options) gives for these
// configs, on x86_64 with a current machine version: flags sorted by name, + or - before it
// (`enforce`, `kvm=off` and `vendor=` sort among them by their names).
describe('pveCpuArg: the -cpu PVE gives a VM config', () => {
  it('defaults to kvm64 with KVM and qemu64 without, as get_default_cpu_type', () => {
    expect(pveCpuArg(undefined, 'kvm')).toBe('kvm64,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep')
    expect(pveCpuArg(undefined, 'tcg')).toBe('qemu64')
  })

  it('expands the built-in x86-64 models to qemu64 and their flags, sorted by name (as Perl sorts the keys)', () => {
    expect(pveCpuArg('x86-64-v2-AES', 'tcg')).toBe('qemu64,+aes,+pni,+popcnt,+sse4.1,+sse4.2,+ssse3')
    expect(pveCpuArg('cputype=x86-64-v2-AES', 'kvm')).toBe('qemu64,+aes,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+pni,+popcnt,+sse4.1,+sse4.2,+ssse3')
    expect(pveCpuArg('x86-64-v3', 'tcg')).toContain('+avx2')
    expect(pveCpuArg('x86-64-v2', 'tcg')).not.toContain('+aes')
  })

  it("the VMs pgi starts itself under TCG get what the lab's inventory asks PVE for", () => {
    expect(pveCpuArg('x86-64-v2', 'tcg')).toBe(TCG_CPU)
  })

  it('forces the vendor of a named model, not of a generic one; host is never enforced', () => {
    expect(pveCpuArg('EPYC-Rome', 'kvm')).toBe('EPYC-Rome,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,vendor=AuthenticAMD')
    expect(pveCpuArg('Skylake-Server', 'tcg')).toBe('Skylake-Server,vendor=GenuineIntel')
    expect(pveCpuArg('host', 'kvm')).toBe('host,+kvm_pv_eoi,+kvm_pv_unhalt')
    expect(pveCpuArg('Opteron_G3', 'tcg')).toBe('Opteron_G3,-rdtscp,vendor=AuthenticAMD')
  })

  it('adds the VM flags after the model (a later flag wins), hidden, and the physical address bits', () => {
    expect(pveCpuArg('x86-64-v2,flags=+aes;+pdpe1gb', 'tcg')).toBe('qemu64,+aes,+pdpe1gb,+pni,+popcnt,+sse4.1,+sse4.2,+ssse3')
    expect(pveCpuArg('x86-64-v2-AES,flags=-aes', 'tcg')).toBe('qemu64,-aes,+pni,+popcnt,+sse4.1,+sse4.2,+ssse3')
    expect(pveCpuArg('kvm64,hidden=1', 'kvm')).toBe('kvm64,enforce,kvm=off,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep')
    expect(pveCpuArg('host,phys-bits=host', 'kvm')).toBe('host,+kvm_pv_eoi,+kvm_pv_unhalt,host-phys-bits=true')
    expect(pveCpuArg('qemu64,phys-bits=40', 'tcg')).toBe('qemu64,phys-bits=40')
  })

  it("resolves nested-virt to the host's svm or vmx, and drops it on a host with neither", () => {
    expect(pveCpuArg('host,flags=+nested-virt', 'kvm', ['fpu', 'svm', 'sse2'])).toBe('host,+kvm_pv_eoi,+kvm_pv_unhalt,+svm')
    expect(pveCpuArg('host,flags=+nested-virt', 'kvm', ['fpu', 'vmx'])).toBe('host,+kvm_pv_eoi,+kvm_pv_unhalt,+vmx')
    expect(pveCpuArg('host,flags=+nested-virt', 'kvm', ['fpu'])).toBe('host,+kvm_pv_eoi,+kvm_pv_unhalt')
  })

  it('refuses what PVE refuses', () => {
    expect(() => pveCpuArg('nosuchcpu', 'tcg')).toThrow(/not defined/)
    expect(() => pveCpuArg('kvm64,flags=+avx2', 'tcg')).toThrow(/subset/)
  })
})

describe('qemuArgs: the CPU of a launch', () => {
  const spec = {name: 'x', dir: '/tmp/x', memoryMiB: 512, disks: []}
  const tcg = {accel: 'tcg' as const, args: ['-accel', 'tcg', '-cpu', TCG_CPU], reason: 'test', source: 'env' as const}
  it("uses the accelerator's CPU unless the spec names one", () => {
    const a = qemuArgs(spec, tcg)
    expect(a.slice(a.indexOf('-accel'), a.indexOf('-accel') + 4)).toEqual(['-accel', 'tcg', '-cpu', TCG_CPU])
    const b = qemuArgs({...spec, cpu: 'qemu64'}, tcg)
    expect(b.slice(b.indexOf('-accel'), b.indexOf('-accel') + 4)).toEqual(['-accel', 'tcg', '-cpu', 'qemu64'])
    expect(b.filter((x) => x === '-cpu')).toHaveLength(1)
  })
})
