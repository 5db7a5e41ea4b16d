import {afterAll, describe, expect, it} from 'vitest'

import {parseDescription} from '../../../src/fleet/vm-meta.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import type {PveVmConfig} from '../../../src/proxmox/types.js'
import {resumeRollout, startRollout} from '../../../src/rollout/service.js'
import {ROWS, startRolloutLab, type RolloutLab} from './lab.js'

let lab: RolloutLab | undefined
afterAll(async () => lab?.close())

async function configs(l: RolloutLab): Promise<Map<string, {cfg: PveVmConfig; running: boolean}>> {
  const out = new Map<string, {cfg: PveVmConfig; running: boolean}>()
  for (const [name, hv] of l.inventory.hypervisors) {
    const api = connectHypervisor(hv, {tokenSecret: new Secret(l.tokenSecret)})
    try {
      for (const e of l.inventory.establishments.filter((x) => x.hypervisor === name)) {
        out.set(e.uai, {cfg: (await api.vmConfig(e.node, e.vmid))!, running: (await api.vmStatus(e.node, e.vmid))?.status === 'running'})
      }
    } finally {
      await api.close()
    }
  }
  return out
}

/**
 * A node dying at run time: its HTTPS server keeps accepting (and keeps its open connections) but
 * never answers again, as the lab's `dead_nodes` fault does from the start. Returns how to revive it.
 */
function killNode(l: RolloutLab, node: string): () => void {
  const server = l.rt.server.servers.get(node)!
  const handlers = server.listeners('request')
  server.removeAllListeners('request')
  server.on('request', () => undefined)
  return () => {
    server.removeAllListeners('request')
    for (const h of handlers) server.on('request', h as (...a: unknown[]) => void)
  }
}

describe('rollout of 200 establishments under injected faults', () => {
  it('task failures, HTTP 500s, lock contention and a node dying mid-wave: after resume every establishment is on the new version and healthy, or back on the old one and healthy; no data lost', async () => {
    lab = await startRolloutLab({
      nodes: 10,
      perNode: Number(process.env.PGI_ROLLOUT_FAULT_PER_NODE ?? 20),
      rings: (i) => (i % 20 === 0 ? 'canary' : i % 20 < 5 ? 'pilot' : 'general'),
      deployParallel: 50,
      // and some guests never become healthy on the new version: those must be rolled back
      brokenOn: (_node, vmid, version) => version === '2026.12.0' && vmid % 7 === 3,
    })
    await lab.stage('2026.12.0')
    const before = await configs(lab)
    Object.assign(lab.rt.api.faults.config, {taskFailureRate: 0.03, http500Rate: 0.01, lockContentionRate: 0.05})
    const io = new MemoryIo('warn')
    let stoppedGeneral = 0
    const killAfter = Math.floor(lab.inventory.establishments.filter((e) => e.ring === 'general').length / 4)
    // the node dies under an establishment just stopped for its update (no PGI running there)
    let dead = ''
    let revive = () => undefined as void
    const res = await startRollout(lab.request(io, '2026.12.0', {
      maxParallel: 40,
      maxFailures: '40%',
      requestTimeoutMs: 4000,
      onStep: (uai, step) => {
        const e = lab!.inventory.establishments.find((x) => x.uai === uai)!
        if (step === 'stopped' && e.ring === 'general' && ++stoppedGeneral === killAfter) {
          dead = e.node
          revive = killNode(lab!, dead)
        }
      },
    }))
    if (process.env.PGI_DEBUG_ROLLOUT) console.log(JSON.stringify({state: res.state, reason: res.reason, counts: res.counts, wallMs: res.wallMs, reasons: res.establishments.filter((r) => r.outcome !== 'updated').slice(0, 12).map((r) => `${r.uai} ${r.outcome} ${r.step}: ${r.reason}`)}, null, 1))
    expect(dead).not.toBe('')
    // the dead node's establishments could not finish; the others did
    const onDead = res.establishments.filter((r) => r.node === dead)
    expect(onDead.some((r) => r.outcome === 'interrupted')).toBe(true)
    expect(res.establishments.filter((r) => r.node !== dead).every((r) => ['updated', 'rolled-back', 'failed'].includes(r.outcome))).toBe(true)
    expect(res.establishments.filter((r) => r.outcome === 'rolled-back').length).toBeGreaterThan(5)
    expect(res.exitCode).toBe(4)

    // the node comes back; faults stay on
    revive()
    const again = await resumeRollout(lab.request(io, '2026.12.0', {maxParallel: 40, requestTimeoutMs: 5000}))
    expect(again.id).toBe(res.id)
    expect(again.establishments).toHaveLength(lab.inventory.establishments.length)
    expect(again.establishments.every((r) => ['updated', 'rolled-back', 'failed'].includes(r.outcome))).toBe(true)

    // faults off to inspect the result
    Object.assign(lab.rt.api.faults.config, {taskFailureRate: 0, http500Rate: 0, lockContentionRate: 0})
    const after = await configs(lab)
    let updated = 0
    for (const e of lab.inventory.establishments) {
      const {cfg, running} = after.get(e.uai)!
      const meta = parseDescription(String(cfg.description))!
      expect(running).toBe(true)
      // the data disk is the very same volume, its databases intact
      expect(cfg.virtio1).toBe(before.get(e.uai)!.cfg.virtio1)
      const d = lab.model.disk(e.node, e.vmid)
      expect(d.dbs.get('bts_ndrc_2026')).toEqual(ROWS)
      // healthy on what the VM records: the OS booted is that version, the data disk agrees
      expect(lab.model.osVersion(e.node, e.vmid)).toBe(meta.image)
      expect(d.version).toBe(meta.image)
      expect(lab.boot(e)).toBeUndefined()
      if (meta.image === '2026.12.0') {
        updated++
        expect(meta.rollout?.step).toBe('committed')
        expect(d.backups.size).toBeGreaterThan(0)
      } else {
        expect(meta.image).toBe('2026.11.0')
        expect(['rolled-back', 'precheck-failed', 'backup-failed']).toContain(meta.rollout?.step)
        expect(meta.rollout?.reason).toBeTruthy()
        if (meta.rollout?.step === 'rolled-back') expect(d.backups.size).toBeGreaterThan(0)
      }
    }
    expect(updated).toBeGreaterThan(lab.inventory.establishments.length * 0.6)
  }, 600_000)
})
