import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {STEPS} from '../../../src/rollout/establishment.js'
import {controlRollout, resumeRollout, startRollout} from '../../../src/rollout/service.js'
import {ROWS, startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab
beforeAll(async () => {
  // 14 establishments: one per kill point below (8), two for the race, two for pause, two for abort
  lab = await startRolloutLab({nodes: 2, perNode: 7, broken: ['2026.13.0']})
  await lab.stage('2026.12.0')
  await lab.stage('2026.13.0')
}, 120_000)
afterAll(async () => lab?.close())

async function vm(uai: string) {
  const e = lab.inventory.establishments.find((x) => x.uai === uai)!
  const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
  try {
    const cfg = (await api.vmConfig(e.node, e.vmid))!
    const st = await api.vmStatus(e.node, e.vmid)
    return {cfg, meta: parseDescription(String(cfg.description))!, e, running: st?.status === 'running'}
  } finally {
    await api.close()
  }
}

/** Ends healthy: running, on `version`, its data disk at that version with the student data, no boot-time upgrade problem. */
async function expectHealthyOn(uai: string, version: string, dataDisk: string) {
  const {cfg, meta, e, running} = await vm(uai)
  expect(running).toBe(true)
  expect(meta.image).toBe(version)
  expect(cfg.virtio1).toBe(dataDisk)
  expect(lab.model.osVersion(e.node, e.vmid)).toBe(version)
  expect(lab.boot(e)).toBeUndefined()
  const d = lab.model.disk(e.node, e.vmid)
  expect(d.version).toBe(version)
  expect(d.dbs.get('bts_ndrc_2026')).toEqual(ROWS)
  expect(d.backups.size).toBeGreaterThan(0)
}

describe('rollout resume after the runner is killed', () => {
  const points = STEPS.filter((s) => s !== 'committed').map((s) => ({step: s as string, version: '2026.12.0'}))
  // and a rollback interrupted half-way (a broken version)
  points.push({step: 'rolling-back', version: '2026.13.0'})

  for (const [i, p] of points.entries()) {
    it(`killed right after "${p.step}" (${p.version}), then resumed${i % 2 ? ' from another machine (no local journal)' : ''}: ends ${p.version === '2026.13.0' ? 'rolled back' : 'updated'} and healthy, data intact`, async () => {
      const uai = lab.inventory.establishments[i]!.uai
      const dataDisk = String((await vm(uai)).cfg.virtio1)
      const io = new MemoryIo('debug')
      const ac = new AbortController()
      const first = await startRollout(lab.request(io, p.version, {selection: {uais: [uai]}, runner: 'tech-a:100', signal: ac.signal, onStep: (_u, s) => void (s === p.step && ac.abort())}))
      expect(first.establishments[0]!.outcome).toBe('interrupted')
      expect((await vm(uai)).meta.rollout).toMatchObject({step: p.step, runner: 'tech-a:100'})

      const env = i % 2 ? {...lab.env, PGI_STATE_DIR: join(lab.dir, `other-machine-${i}`)} : lab.env
      const res = await resumeRollout({...lab.request(io, p.version, {selection: {uais: [uai]}, runner: 'tech-b:200'}), env})
      const want = p.version === '2026.13.0' ? 'rolled-back' : 'updated'
      expect(res.establishments.map((r) => r.outcome)).toEqual([want])
      const {meta} = await vm(uai)
      expect(meta.rollout).toMatchObject({step: want === 'updated' ? 'committed' : 'rolled-back', runner: 'tech-b:200'})
      await expectHealthyOn(uai, want === 'updated' ? '2026.12.0' : '2026.11.0', dataDisk)
      if (want === 'rolled-back') expect(meta.rollout!.reason).toMatch(/trytond/)
    })
  }

  it('two runners on two machines race for the same VMs: the fleet lock on the hypervisors lets one through, and the VMs are backed up once', async () => {
    const uais = lab.inventory.establishments.slice(10, 12).map((e) => e.uai)
    const io = new MemoryIo('warn')
    const runs = await Promise.allSettled([
      startRollout(lab.request(io, '2026.12.0', {selection: {uais}, runner: 'tech-a:1'})),
      startRollout({...lab.request(io, '2026.12.0', {selection: {uais}, runner: 'tech-b:2'}), env: {...lab.env, PGI_STATE_DIR: join(lab.dir, 'machine-b')}}),
    ])
    const won = runs.flatMap((r, i) => (r.status === 'fulfilled' ? [{r: r.value, runner: i === 0 ? 'tech-a:1' : 'tech-b:2'}] : []))
    expect(won).toHaveLength(1)
    expect(runs.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(['PGI_LOCKED'])
    for (const [k, uai] of uais.entries()) {
      expect(won[0]!.r.establishments[k]!.outcome).toBe('updated')
      const {meta} = await vm(uai)
      expect(meta.rollout).toMatchObject({step: 'committed', runner: won[0]!.runner})
      const e = lab.inventory.establishments.find((x) => x.uai === uai)!
      expect(lab.model.disk(e.node, e.vmid).backups.size).toBe(1)
    }
  })

  it('a second rollout on the same machine is refused while one runs (lock), and pause/abort are requests the runner honours', async () => {
    const io = new MemoryIo('warn')
    const [p0, p1] = lab.inventory.establishments.slice(8, 10)
    const uai = p0!.uai
    let second: unknown
    let paused = false
    const r = await startRollout(lab.request(io, '2026.12.0', {
      selection: {uais: [uai, p1!.uai]},
      maxParallel: 1,
      onStep: async (_u, s) => {
        if (s === 'claimed' && second === undefined) {
          second = await startRollout(lab.request(io, '2026.12.0', {selection: {uais: [uai]}})).catch((e: unknown) => e)
          await controlRollout('pause', {env: lab.env})
          paused = true
        }
      },
    }))
    expect(String((second as Error).message)).toMatch(/another pgi run/)
    expect((second as {exitCode: number}).exitCode).toBe(7)
    expect(paused).toBe(true)
    expect(r.state).toBe('paused')
    expect(r.establishments.map((x) => x.outcome)).toEqual(['paused', 'not-started'])
    // the paused one still runs its old version untouched
    expect((await vm(uai)).running).toBe(true)
    // resume goes on from the pause
    const res = await resumeRollout(lab.request(io, '2026.12.0', {}))
    expect(res.id).toBe(r.id)
    expect(res.establishments.map((x) => x.outcome)).toEqual(['updated', 'updated'])
  })

  it('abort rolls back what is mid-way and starts nobody new; resume after an abort only finishes rollbacks', async () => {
    const io = new MemoryIo('warn')
    const [x, y] = lab.inventory.establishments.slice(12, 14)
    const dataDisk = String((await vm(x!.uai)).cfg.virtio1)
    const r = await startRollout(lab.request(io, '2026.12.0', {
      selection: {uais: [x!.uai, y!.uai]},
      maxParallel: 1,
      maxFailures: '2',
      onStep: async (u, s) => {
        if (u === x!.uai && s === 'swapped') await controlRollout('abort', {env: lab.env})
      },
    }))
    expect(r.state).toBe('aborted')
    expect(r.establishments.map((e) => e.outcome)).toEqual(['aborted', 'not-started'])
    expect(r.establishments[0]!.reason).toMatch(/aborted by `pgi rollout abort`/)
    await expectHealthyOn(x!.uai, '2026.11.0', dataDisk)
    expect((await vm(y!.uai)).meta.rollout?.id).not.toBe(r.id)
    const again = await resumeRollout({...lab.request(io, '2026.12.0'), id: r.id})
    expect(again.establishments.map((e) => e.outcome)).toEqual(['aborted', 'not-started'])
  })
})
