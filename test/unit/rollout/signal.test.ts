/**
 * A signal (SIGTERM from a CI job's cancel, Ctrl-C) in the middle of a step's wait: nothing new
 * starts, no rollback is begun and no failure recorded because of it, each VM's mark keeps the step
 * it reached (or `rolling-back`), the run ends `partial` with exit 130, and `resume` finishes.
 */
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ExitCode} from '../../../src/exit-codes.js'
import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {resumeRollout, startRollout} from '../../../src/rollout/service.js'
import {Secret} from '../../../src/secret.js'
import {startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab
beforeAll(async () => {
  // slow enough that a guest's boot is a wait of a few hundred ms (the signal lands inside it)
  lab = await startRolloutLab({nodes: 1, perNode: 3, broken: ['2026.13.0'], timeScale: 0.03})
  await lab.stage('2026.12.0')
  await lab.stage('2026.13.0')
}, 120_000)
afterAll(async () => lab?.close())

async function mark(uai: string) {
  const e = lab.inventory.establishments.find((x) => x.uai === uai)!
  const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
  try {
    return parseDescription(String((await api.vmConfig(e.node, e.vmid))!.description))!
  } finally {
    await api.close()
  }
}

describe('SIGTERM during a rollout', () => {
  it('mid-gate (waiting for the new OS to boot): interrupted at "started", no rollback, exit 130; resume updates it', async () => {
    const [a, b] = lab.inventory.establishments
    const io = new MemoryIo('debug')
    const ac = new AbortController()
    const r = await startRollout(
      lab.request(io, '2026.12.0', {
        selection: {uais: [a!.uai, b!.uai]},
        maxParallel: 1,
        signal: ac.signal,
        onStep: (u, s) => {
          if (u === a!.uai && s === 'started') setTimeout(() => ac.abort(new Error('SIGTERM')), 60)
        },
      }),
    )
    expect(r.exitCode).toBe(ExitCode.INTERRUPTED)
    expect(r.stopped).toBe('SIGTERM')
    expect(r.state).toBe('partial')
    expect(r.reason).toBe('stopped by SIGTERM')
    expect(r.establishments.map((e) => [e.uai, e.outcome, e.step])).toEqual([
      [a!.uai, 'interrupted', 'started'],
      [b!.uai, 'not-started', undefined],
    ])
    expect(io.lines.map((l) => l.message).join('\n')).not.toMatch(/rolling back/)
    expect((await mark(a!.uai)).rollout).toMatchObject({step: 'started'})
    expect((await mark(b!.uai)).rollout).toBeUndefined()

    const res = await resumeRollout(lab.request(io, '2026.12.0', {selection: {all: true}}))
    expect(res.exitCode).toBe(0)
    expect(res.establishments.map((e) => e.outcome).sort()).toEqual(['updated', 'updated'])
    expect((await mark(a!.uai)).image).toBe('2026.12.0')
  })

  it('mid-rollback: the mark stays "rolling-back" (never "rollback-failed"); resume finishes the rollback', async () => {
    const c = lab.inventory.establishments[2]!
    const io = new MemoryIo('debug')
    const ac = new AbortController()
    const r = await startRollout(
      lab.request(io, '2026.13.0', {
        selection: {uais: [c.uai]},
        healthTimeoutMs: 300,
        signal: ac.signal,
        onStep: (_u, s) => {
          if (s === 'rolling-back') setTimeout(() => ac.abort(new Error('SIGTERM')), 60)
        },
      }),
    )
    expect(r.exitCode).toBe(ExitCode.INTERRUPTED)
    expect(r.establishments[0]).toMatchObject({outcome: 'interrupted'})
    expect((await mark(c.uai)).rollout).toMatchObject({step: 'rolling-back'})

    const res = await resumeRollout(lab.request(io, '2026.13.0', {selection: {uais: [c.uai]}}))
    expect(res.establishments[0]).toMatchObject({outcome: 'rolled-back'})
    expect((await mark(c.uai)).image).toBe('2026.11.0')
  })
})
