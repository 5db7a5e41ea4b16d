/**
 * The fleet's rollout lock on the hypervisors (src/rollout/fleet-lock.ts): two runners on two
 * machines (two state folders, two runner names) over the same fleet never both proceed — the
 * second is refused (exit 7, naming the holder) or waits (--lock-wait) and goes on once the first
 * released it; a lock whose holder died (expired) is taken over; the lock is gone when a rollout ends.
 */
import {existsSync} from 'node:fs'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {PgiError} from '../../../src/errors.js'
import {formatDescription, parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {startRollout} from '../../../src/rollout/service.js'
import {Secret} from '../../../src/secret.js'
import {startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab
beforeAll(async () => {
  lab = await startRolloutLab({nodes: 2, perNode: 2})
  await lab.stage('2026.12.0')
  await lab.stage('2026.12.1')
  await lab.stage('2026.12.2')
}, 120_000)
afterAll(async () => lab?.close())

/** The anchor of each hypervisor: its establishment with the smallest UAI. */
function anchors() {
  const by = new Map<string, (typeof lab.inventory.establishments)[number]>()
  for (const e of [...lab.inventory.establishments].sort((a, b) => a.uai.localeCompare(b.uai))) if (!by.has(e.hypervisor)) by.set(e.hypervisor, e)
  return [...by.values()]
}

async function withApi<T>(e: {hypervisor: string}, fn: (api: ReturnType<typeof connectHypervisor>) => Promise<T>): Promise<T> {
  const api = connectHypervisor(lab.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(lab.tokenSecret)})
  try {
    return await fn(api)
  } finally {
    await api.close()
  }
}

const meta = (e: {hypervisor: string; node: string; vmid: number}) => withApi(e, async (api) => parseDescription(String((await api.vmConfig(e.node, e.vmid))!.description))!)

const machine = (name: string) => ({...lab.env, PGI_STATE_DIR: join(lab.dir, name)})

describe('the rollout lock on the hypervisors', () => {
  it('two runners on two machines at once: exactly one proceeds, the other is refused (exit 7) naming the holder, and changes nothing', async () => {
    const io = new MemoryIo('warn')
    const runs = await Promise.allSettled([
      startRollout({...lab.request(io, '2026.12.0', {runner: 'ci-a:1'}), env: machine('a')}),
      startRollout({...lab.request(io, '2026.12.0', {runner: 'ci-b:2'}), env: machine('b')}),
    ])
    const ok = runs.filter((r) => r.status === 'fulfilled')
    const refused = runs.filter((r): r is PromiseRejectedResult => r.status === 'rejected')
    expect(ok).toHaveLength(1)
    expect(refused).toHaveLength(1)
    const err = refused[0]!.reason as PgiError
    expect(err).toBeInstanceOf(PgiError)
    expect(err.code).toBe('PGI_LOCKED')
    expect(err.exitCode).toBe(7)
    const winner = runs[0]!.status === 'fulfilled' ? 'ci-a:1' : 'ci-b:2'
    const loserDir = winner === 'ci-a:1' ? 'b' : 'a'
    expect(err.message).toContain(`by ${winner}`)
    expect((ok[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof startRollout>>>).value.establishments.every((e) => e.outcome === 'updated')).toBe(true)
    // the loser wrote no journal and claimed no VM
    expect(existsSync(join(lab.dir, loserDir, 'journal'))).toBe(false)
    for (const e of lab.inventory.establishments) expect((await meta(e)).rollout?.runner).toBe(winner)
    // released at the end
    for (const a of anchors()) expect((await meta(a)).fleetLock).toBeUndefined()
  })

  it('with --lock-wait the second runner waits for the first to finish, then goes on', async () => {
    const io = new MemoryIo('info')
    let holder: unknown
    const first = startRollout({
      ...lab.request(io, '2026.12.1', {runner: 'ci-a:3', lockLeaseMs: 400}),
      env: machine('a'),
      onStep: async (uai, s) => {
        if (s === 'claimed' && holder === undefined) holder = (await meta(anchors()[0]!)).fleetLock
      },
    })
    await new Promise((r) => setTimeout(r, 30))
    const second = startRollout({...lab.request(io, '2026.12.1', {runner: 'ci-b:4', lockWaitMs: 60_000}), env: machine('b')})
    const [a, b] = await Promise.all([first, second])
    expect(holder).toMatchObject({owner: 'ci-a:3'})
    expect(a.establishments.every((e) => e.outcome === 'updated')).toBe(true)
    expect(b.establishments.every((e) => e.outcome === 'already')).toBe(true)
    expect(io.lines.some((l) => /waiting for the rollout lock \(held on .*ci-a:3/.test(l.message))).toBe(true)
  })

  it('a lock left by a killed runner is taken over once expired, not before', async () => {
    const a = anchors()[1]!
    const plant = async (expires: Date) =>
      withApi(a, async (api) => {
        const cfg = (await api.vmConfig(a.node, a.vmid))!
        const m = parseDescription(String(cfg.description))!
        await api.updateVmConfig(a.node, a.vmid, {description: formatDescription({...m, fleetLock: {rollout: 'dead-1', owner: 'gone:9', since: new Date(0).toISOString(), expires: expires.toISOString()}}, a.name), digest: cfg.digest})
      })
    await plant(new Date(Date.now() + 3_600_000))
    const io = new MemoryIo('info')
    await expect(startRollout({...lab.request(io, '2026.12.2', {runner: 'ci-c:5'}), env: machine('c')})).rejects.toMatchObject({code: 'PGI_LOCKED', exitCode: 7})
    expect((await meta(a)).fleetLock).toMatchObject({owner: 'gone:9'})
    await plant(new Date(Date.now() - 1000))
    const r = await startRollout({...lab.request(io, '2026.12.2', {runner: 'ci-c:5'}), env: machine('c')})
    expect(r.exitCode).toBe(0)
    expect(io.lines.some((l) => l.level === 'warn' && /held by gone:9 .* expired/.test(l.message))).toBe(true)
    expect((await meta(a)).fleetLock).toBeUndefined()
  })
})
