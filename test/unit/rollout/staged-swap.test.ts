/**
 * The swap of a rollout when `pgi rollout stage --transfer delta` left a verified staging disk on
 * the VM: the rollout attaches that disk as the new OS disk instead of importing the image staged
 * on the node, drops the staging record, and a failed gate rolls back to the old disk and removes
 * the staged one. On the simulated lab, the staging disk is what a finished delta assembly leaves:
 * a disk hot-plugged on a running VM (serial pgi-stage) holding the new version — made here by
 * the lab's import of that version, since the simulated guest has no pgi-stage-delta (the guest's
 * side runs in the qemu e2e, test/e2e/rollout/delta.test.ts) — and the `staged` record stage
 * writes once the guest verified it.
 */
import {afterEach, describe, expect, it} from 'vitest'

import {parseDisk} from '../../../src/fleet/images.js'
import {formatDescription, parseDescription, type StagedDisk} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {planRollout, startRollout} from '../../../src/rollout/service.js'
import {startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab | undefined
afterEach(async () => {
  await lab?.close()
  lab = undefined
})

/** A staging disk holding `version` hot-plugged on the first VM, recorded as stage records a verified one. */
async function stageByDelta(l: RolloutLab, version: string): Promise<{volume: string}> {
  const e = l.inventory.establishments[0]!
  const hv = l.inventory.hypervisors.get(e.hypervisor)!
  const api = connectHypervisor(hv, {tokenSecret: new Secret(l.tokenSecret)})
  try {
    const image = await l.makeImage(version)
    await api.uploadFile(e.node, hv.storage.import, image.path, {filename: image.file, content: 'import', sha256: image.sha256})
    expect((await api.vmStatus(e.node, e.vmid))?.status).toBe('running')
    await api.updateVmConfig(e.node, e.vmid, {virtio2: `${hv.storage.os}:0,import-from=${hv.storage.import}:import/${image.file},serial=pgi-stage`})
    const cfg = (await api.vmConfig(e.node, e.vmid))!
    const volume = parseDisk(cfg.virtio2 as string)!.volid
    const meta = parseDescription(String(cfg.description))!
    const staged: StagedDisk = {name: 'pgi-tryton', version, volume, key: 'virtio2', rawSha256: 'ab'.repeat(32), rawBytes: 3 * 2 ** 30, state: 'verified', store: 'http://10.1.255.253/', startedAt: new Date().toISOString(), verifiedAt: new Date().toISOString()}
    await api.updateVmConfig(e.node, e.vmid, {description: formatDescription({...meta, staged}, e.name), digest: cfg.digest})
    return {volume}
  } finally {
    await api.close()
  }
}

async function vm(l: RolloutLab) {
  const e = l.inventory.establishments[0]!
  const api = connectHypervisor(l.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(l.tokenSecret)})
  try {
    const cfg = (await api.vmConfig(e.node, e.vmid))!
    return {cfg, meta: parseDescription(String(cfg.description))!}
  } finally {
    await api.close()
  }
}

describe('rollout start on a disk staged by delta (simulated lab)', () => {
  it('plan counts it as staged; the swap attaches it as virtio0 (no import), the staging record goes, the old OS disk is removed at commit', async () => {
    lab = await startRolloutLab({nodes: 1, perNode: 1})
    const io = new MemoryIo('info')
    const {volume} = await stageByDelta(lab, '2026.12.0')
    const before = await vm(lab)
    const oldOs = parseDisk(before.cfg.virtio0 as string)!.volid
    const plan = await planRollout(lab.request(io, '2026.12.0'))
    expect(plan.rows.map((r) => [r.staged, r.action])).toEqual([[true, 'update']])
    const res = await startRollout(lab.request(io, '2026.12.0'))
    expect(res.establishments.map((r) => [r.outcome, r.reason])).toEqual([['updated', undefined]])
    expect(io.text()).toMatch(/switching to the OS disk staged by delta/)
    const after = await vm(lab)
    expect(parseDisk(after.cfg.virtio0 as string)!.volid).toBe(volume)
    expect(after.cfg.virtio2).toBeUndefined()
    expect(Object.keys(after.cfg).filter((k) => /^unused\d+$/.test(k))).toEqual([])
    expect(after.cfg.virtio1).toBe(before.cfg.virtio1)
    expect(after.meta).toMatchObject({image: '2026.12.0', rollout: {step: 'committed', oldDisk: oldOs, newDisk: volume}})
    expect(after.meta.staged).toBeUndefined()
  })

  it('a staged disk of a version that fails its gate: rolled back to the old OS disk, the staged one removed', async () => {
    lab = await startRolloutLab({nodes: 1, perNode: 1, broken: ['2026.13.0']})
    const io = new MemoryIo('info')
    const {volume} = await stageByDelta(lab, '2026.13.0')
    const oldOs = parseDisk((await vm(lab)).cfg.virtio0 as string)!.volid
    const res = await startRollout(lab.request(io, '2026.13.0'))
    expect(res.establishments.map((r) => r.outcome)).toEqual(['rolled-back'])
    const after = await vm(lab)
    expect(parseDisk(after.cfg.virtio0 as string)!.volid).toBe(oldOs)
    expect(Object.values(after.cfg).some((v) => String(v).split(',')[0] === volume)).toBe(false)
    expect(after.meta).toMatchObject({image: '2026.11.0', rollout: {step: 'rolled-back', newDisk: volume}})
  })

  it('a staging record of another version, or not verified, is not used: the rollout needs the image staged on the node', async () => {
    lab = await startRolloutLab({nodes: 1, perNode: 1})
    const io = new MemoryIo('info')
    await stageByDelta(lab, '2026.12.0')
    await lab.makeImage('2026.12.1')
    const res = await startRollout(lab.request(io, '2026.12.1'))
    expect(res.establishments.map((r) => [r.outcome, r.step])).toEqual([['failed', 'precheck-failed']])
    expect(res.establishments[0]!.reason).toMatch(/image 2026\.12\.1 is not staged/)
  })
})
