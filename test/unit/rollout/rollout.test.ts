import {readFile} from 'node:fs/promises'

import {afterEach, describe, expect, it} from 'vitest'

import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {planRollout, rolloutStatus, startRollout} from '../../../src/rollout/service.js'
import {ROWS, startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab | undefined
afterEach(async () => {
  await lab?.close()
  lab = undefined
})

async function vmOf(l: RolloutLab, uai: string) {
  const e = l.inventory.establishments.find((x) => x.uai === uai)!
  const api = connectHypervisor(l.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(l.tokenSecret)})
  try {
    const cfg = (await api.vmConfig(e.node, e.vmid))!
    return {cfg, meta: parseDescription(String(cfg.description))!, e}
  } finally {
    await api.close()
  }
}

describe('pgi rollout on a simulated lab', () => {
  it('plans, then updates every establishment wave by wave: backed up, OS disk swapped, data disk untouched, databases upgraded, new version recorded', async () => {
    lab = await startRolloutLab({nodes: 2, perNode: 2, rings: (i) => ['canary', 'pilot', 'general', 'general'][i]!})
    const io = new MemoryIo('info')
    await lab.makeImage('2026.12.0')
    // the first VM as an older pgi deployed it: no ciupgrade (PVE's default: upgrade at boot)
    const first = lab.inventory.establishments[0]!
    const admin = connectHypervisor(lab.inventory.hypervisors.get(first.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
    await admin.updateVmConfig(first.node, first.vmid, {delete: 'ciupgrade'})
    expect((await vmOf(lab, first.uai)).cfg.ciupgrade).toBeUndefined()
    const before = await Promise.all(lab.inventory.establishments.map((e) => vmOf(lab!, e.uai)))

    const plan = await planRollout(lab.request(io, '2026.12.0'))
    expect(plan.rows.map((r) => [r.wave, r.current, r.target, r.staged, r.action])).toEqual([
      ['canary', '2026.11.0', '2026.12.0', false, 'update'],
      ['pilot', '2026.11.0', '2026.12.0', false, 'update'],
      ['general', '2026.11.0', '2026.12.0', false, 'update'],
      ['general', '2026.11.0', '2026.12.0', false, 'update'],
    ])
    await lab.stage('2026.12.0')
    const plan2 = await planRollout(lab.request(io, '2026.12.0'))
    expect(plan2.rows.every((r) => r.staged)).toBe(true)

    const steps: string[] = []
    const res = await startRollout(lab.request(io, '2026.12.0', {onStep: (u, s) => void steps.push(`${u}:${s}`)}))
    expect(res.state).toBe('done')
    expect(res.exitCode).toBe(0)
    expect(res.establishments.map((r) => r.outcome)).toEqual(['updated', 'updated', 'updated', 'updated'])
    // waves in order: the canary committed before the pilot was claimed, the pilot before the general ones
    const at = (x: string) => steps.indexOf(x)
    const [c, p, g1] = lab.inventory.establishments.map((e) => e.uai)
    expect(at(`${c}:committed`)).toBeLessThan(at(`${p}:claimed`))
    expect(at(`${p}:committed`)).toBeLessThan(at(`${g1}:claimed`))
    expect(steps.filter((s) => s.startsWith(`${c}:`)).map((s) => s.split(':')[1])).toEqual(['claimed', 'checked', 'backed-up', 'stopped', 'swapped', 'started', 'gated', 'committed'])

    for (const [i, e] of lab.inventory.establishments.entries()) {
      const {cfg, meta} = await vmOf(lab, e.uai)
      expect(meta.image).toBe('2026.12.0')
      expect(meta.rollout).toMatchObject({id: res.id, from: '2026.11.0', to: '2026.12.0', step: 'committed', cleaned: true})
      expect(String(cfg.tags)).toContain('img-2026.12.0')
      // the new OS disk's first boot upgrades no package, whoever deployed the VM
      expect(String(cfg.ciupgrade)).toBe('0')
      // the data disk is the same volume, the OS disk a new one, the old one removed
      expect(cfg.virtio1).toBe(before[i]!.cfg.virtio1)
      expect(cfg.virtio0).not.toBe(before[i]!.cfg.virtio0)
      expect(Object.keys(cfg).filter((k) => k.startsWith('unused'))).toEqual([])
      const d = lab.model.disk(e.node, e.vmid)
      expect(d.version).toBe('2026.12.0')
      expect(d.upgrades).toBe(1)
      expect(d.dbs.get('bts_ndrc_2026')).toEqual(ROWS)
      expect(d.backups.size).toBe(1)
      // the manifest was copied off the guest
      const m = JSON.parse(await readFile(res.establishments[i]!.manifest!, 'utf8')) as {databases: {name: string; row_counts: object}[]}
      // the teacher's database, and pgi, which deploy made (the lab's establishments declare it)
      expect(m.databases).toEqual([expect.objectContaining({name: 'bts_ndrc_2026', row_counts: ROWS}), expect.objectContaining({name: 'pgi'})])
    }

    // a second run finds nothing to do and sends nothing
    const again = await startRollout(lab.request(io, '2026.12.0'))
    expect(again.establishments.map((r) => r.outcome)).toEqual(['already', 'already', 'already', 'already'])
    const st = await rolloutStatus(lab.request(io, '2026.12.0'))
    expect(st.establishments.map((r) => r.state)).toEqual(['done', 'done', 'done', 'done'])
  })

  it('rolls a never-healthy version back: previous OS disk, databases restored from the backup, healthy on the old version, reason recorded; the halt threshold stops later waves', async () => {
    lab = await startRolloutLab({nodes: 2, perNode: 2, rings: (i) => (i === 0 ? 'canary' : 'general'), broken: ['2026.13.0']})
    const io = new MemoryIo('info')
    await lab.stage('2026.13.0')
    const before = await Promise.all(lab.inventory.establishments.map((e) => vmOf(lab!, e.uai)))
    const res = await startRollout(lab.request(io, '2026.13.0'))
    expect(res.exitCode).toBe(4)
    expect(res.state).toBe('halted')
    expect(res.establishments.map((r) => r.outcome)).toEqual(['rolled-back', 'not-started', 'not-started', 'not-started'])
    const canary = res.establishments[0]!
    expect(canary.reason).toMatch(/gate: .*trytond/)
    expect(canary.reason).toMatch(/databases restored from/)
    const {cfg, meta} = await vmOf(lab, canary.uai)
    expect(meta.image).toBe('2026.11.0')
    expect(meta.rollout).toMatchObject({step: 'rolled-back', from: '2026.11.0', to: '2026.13.0'})
    expect(meta.rollout!.reason).toMatch(/trytond/)
    expect(cfg.virtio0).toBe(before[0]!.cfg.virtio0)
    expect(cfg.virtio1).toBe(before[0]!.cfg.virtio1)
    // the failed new OS disk was removed; (the lab, unlike PVE, leaves an unusedN naming the re-attached disk)
    const osVolid = String(cfg.virtio0).split(',')[0]
    expect(Object.keys(cfg).filter((k) => k.startsWith('unused') && cfg[k] !== osVolid)).toEqual([])
    const d = lab.model.disk(canary.node, canary.vmid)
    expect(d.version).toBe('2026.11.0')
    expect(d.restores).toBe(1)
    expect(d.dbs.get('bts_ndrc_2026')).toEqual(ROWS)
    expect(lab.model.osVersion(canary.node, canary.vmid)).toBe('2026.11.0')
    // the others were never touched
    for (const e of lab.inventory.establishments.slice(1)) expect((await vmOf(lab, e.uai)).meta.rollout).toBeUndefined()
  })
})
