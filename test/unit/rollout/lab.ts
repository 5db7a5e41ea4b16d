/**
 * A simulated lab for rollout tests and the rollout bench: deploy's test lab (test/unit/deploy/
 * sim-lab.ts, the real HTTPS API and client) over the lab's simulated guest (./sim-guest.ts), every
 * establishment deployed with the real `pgi deploy` service at version 2026.11.0 and holding a
 * student database; further image versions made on demand.
 */
import {createHash, randomBytes} from 'node:crypto'
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {DeployImage} from '../../../src/deploy/desired.js'
import {runDeploy} from '../../../src/deploy/service.js'
import {MemoryIo, type Io} from '../../../src/io.js'
import type {FaultConfig} from '../../../src/lab/faults.js'
import type {SimulatedOptions} from '../../../src/lab/simulated-backend.js'
import {stageRollout, type StartRequest} from '../../../src/rollout/service.js'
import {fastConnect, startSimLab, type SimLab} from '../deploy/sim-lab.js'
import {RolloutGuestModel} from './sim-guest.js'

export interface RolloutLab extends SimLab {
  model: RolloutGuestModel
  images: Map<string, DeployImage>
  makeImage(version: string): Promise<DeployImage>
  /** Stage `version` on every node (the real `pgi rollout stage` service). */
  stage(version: string): Promise<void>
  request(io: Io, version: string, over?: Partial<StartRequest>): StartRequest
  /** The boot-time upgrade problem of an establishment's guest, if any. */
  boot(e: {node: string; vmid: number}): string | undefined
}

export const ROWS = {party_party: 12, account_move: 40, account_move_line: 120, res_user: 3}

export async function startRolloutLab(o: {nodes: number; perNode: number; rings?: (i: number) => string; broken?: string[]; brokenOn?: (node: string, vmid: number, version: string) => boolean; timeScale?: number; durations?: Record<string, number>; faults?: Partial<FaultConfig>; deployParallel?: number; stageDelta?: SimulatedOptions['guestStageDelta']}): Promise<RolloutLab> {
  const model = new RolloutGuestModel({timeScale: o.timeScale ?? 0.001, brokenVersions: o.broken ?? [], brokenOn: o.brokenOn, ...(o.durations ? {durations: o.durations} : {}), ...(o.stageDelta ? {guestStageDelta: o.stageDelta} : {})})
  // a fresh fault config (all off while deploying), switched on below once the fleet is deployed
  const faults: FaultConfig = {seed: 1, taskFailureRate: 0, http500Rate: 0, latencyMs: {min: 0, max: 0}, lockContentionRate: 0, deadNodes: [], unhealthyVms: [], unhealthyRate: 0}
  const lab = await startSimLab({nodes: o.nodes, establishmentsPerNode: o.perNode, backend: model.backend, faults})
  lab.inventory.establishments.forEach((e, i) => {
    e.ring = o.rings ? o.rings(i) : 'general'
  })
  const images = new Map<string, DeployImage>([[lab.image.version, lab.image]])
  const makeImage = async (version: string): Promise<DeployImage> => {
    const have = images.get(version)
    if (have) return have
    const bytes = randomBytes(64 * 1024)
    const file = `pgi-tryton-${version}.qcow2`
    await writeFile(join(lab.dir, file), bytes)
    const img: DeployImage = {name: 'pgi-tryton', version, file, path: join(lab.dir, file), sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length}
    images.set(version, img)
    return img
  }
  const resolveImage = async (ref: {name: string; version: string}) => {
    const i = images.get(ref.version)
    if (!i || i.name !== ref.name) throw new Error(`image ${ref.name} ${ref.version} not built`)
    return i
  }
  const io = new MemoryIo('warn')
  const dep = await runDeploy({
    inventoryPath: lab.dir,
    inventory: lab.inventory,
    selection: {all: true},
    secretsDir: lab.store.dir,
    resolveImage,
    handoffDir: join(lab.dir, 'handoffs'),
    io,
    env: lab.env,
    connect: fastConnect(),
    confirm: async () => undefined,
    pollIntervalMs: 20,
    agentTimeoutMs: 20_000,
    healthTimeoutMs: 20_000,
    maxParallel: o.deployParallel ?? 20,
    maxPerHypervisor: 20,
  })
  if (dep.result!.exitCode !== 0) throw new Error(`deploy failed: ${JSON.stringify(dep.result!.outcomes.filter((x) => x.error).slice(0, 3))}`)
  for (const e of lab.inventory.establishments) model.addDatabase(e.node, e.vmid, 'bts_ndrc_2026', ROWS)
  if (o.faults) Object.assign(lab.rt.api.faults.config, o.faults)
  return {
    ...lab,
    model,
    images,
    makeImage,
    async stage(version) {
      await makeImage(version)
      const r = await stageRollout({inventoryPath: lab.dir, inventory: lab.inventory, selection: {all: true}, secretsDir: lab.store.dir, io: new MemoryIo('warn'), env: lab.env, connect: fastConnect(), image: {name: 'pgi-tryton', version}, resolveImage, imagesRoot: lab.dir})
      if (r.exitCode !== 0) throw new Error(`staging failed: ${JSON.stringify(r.rows)}`)
    },
    boot: (e) => model.upgradeError(e.node, e.vmid),
    request(io2, version, over = {}) {
      return {
        inventoryPath: lab.dir,
        inventory: lab.inventory,
        selection: {all: true},
        secretsDir: lab.store.dir,
        io: io2,
        env: lab.env,
        connect: fastConnect(),
        requestTimeoutMs: 5000,
        image: {name: 'pgi-tryton', version},
        resolveImage,
        confirm: async () => undefined,
        pollIntervalMs: 20,
        agentTimeoutMs: 10_000,
        healthTimeoutMs: 3000,
        shutdownTimeoutMs: 5000,
        maxParallel: 10,
        maxPerHypervisor: 10,
        ...over,
      }
    },
  }
}
