import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeEach, describe, expect, it} from 'vitest'

import {accelArgs, accelFromEnv, decideAccel, decideFromProbe, PROBE_MARKER, probeFloppy, resetAccelMemo, TCG_CPU} from '../../../src/qemu/accel.js'

const dir = mkdtempSync(join(tmpdir(), 'pgi-accel-'))
afterAll(() => rmSync(dir, {recursive: true, force: true}))
beforeEach(() => resetAccelMemo())

describe('decideFromProbe', () => {
  it('uses KVM only when the probe boot printed its marker', () => {
    expect(decideFromProbe({kvmDevice: true, markerSeen: true})).toMatchObject({accel: 'kvm', args: ['-accel', 'kvm', '-cpu', 'host'], source: 'probe'})
  })
  it.each([
    [{kvmDevice: false}, /dev\/kvm/],
    [{kvmDevice: true, emulationFailure: true}, /emulation failure/],
    [{kvmDevice: true, qemuError: 'Could not access KVM kernel module: Permission denied'}, /Permission denied/],
    [{kvmDevice: true, probeUnavailable: true, detail: 'memdisk missing'}, /memdisk missing/],
    [{kvmDevice: true, markerSeen: false, detail: 'no marker within 15000 ms'}, /no sign of life/],
  ])('falls back to TCG for %o', (obs, re) => {
    const d = decideFromProbe(obs)
    expect(d.accel).toBe('tcg')
    expect(d.args).toEqual(['-accel', 'tcg', '-cpu', TCG_CPU])
    expect(d.reason).toMatch(re)
  })
})

describe('PGI_QEMU_ACCEL', () => {
  it('overrides the probe', async () => {
    expect(accelFromEnv({PGI_QEMU_ACCEL: 'kvm'})).toMatchObject({accel: 'kvm', source: 'env'})
    expect(await decideAccel({env: {PGI_QEMU_ACCEL: 'TCG'}, cacheFile: join(dir, 'never.json')})).toMatchObject({accel: 'tcg', source: 'env'})
    expect(accelFromEnv({})).toBeUndefined()
  })
  it('rejects other values', () => {
    expect(() => accelFromEnv({PGI_QEMU_ACCEL: 'hvf'})).toThrow(/kvm" or "tcg/)
  })
})

describe('cache per boot', () => {
  it('reuses a decision recorded during this boot', async () => {
    const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
    const cacheFile = join(dir, 'accel.json')
    writeFileSync(cacheFile, JSON.stringify({bootId, accel: 'kvm', reason: 'KVM probe boot succeeded', decidedAt: 'x'}))
    expect(await decideAccel({env: {}, cacheFile})).toEqual({accel: 'kvm', args: accelArgs('kvm'), reason: 'KVM probe boot succeeded', source: 'cache'})
  })
})

describe('probeFloppy', () => {
  it('is a 1.44 MB image with a boot signature and the marker in its boot sector', () => {
    const img = probeFloppy()
    expect(img.length).toBe(1_474_560)
    expect(img[510]).toBe(0x55)
    expect(img[511]).toBe(0xaa)
    expect(img.subarray(0, 512).toString('latin1')).toContain(PROBE_MARKER)
    // `mov si, imm16` points at the message inside the sector loaded at 0x7c00
    const si = img[4] | (img[5] << 8)
    expect(img.subarray(si - 0x7c00, si - 0x7c00 + PROBE_MARKER.length).toString('latin1')).toBe(PROBE_MARKER)
  })
})
