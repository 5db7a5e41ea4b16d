/**
 * The deploy tests' and bench's lab (test/helpers/lab.ts: the PVE-compatible HTTPS API over the
 * simulated backend, in this process), with an inventory pointing at it:
 * one hypervisor per lab node, pinned to the node's real certificate, token secret in an env var.
 * Everything goes through the real Proxmox client over HTTPS on 127.0.0.1.
 */
import {createHash, randomBytes, randomUUID} from 'node:crypto'
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {generateIdentity, identityToRecipient} from 'age-encryption'

import type {DeployImage} from '../../../src/deploy/desired.js'
import type {DeployRequest} from '../../../src/deploy/service.js'
import {Hypervisors, type PveConnector} from '../../../src/hypervisors.js'
import type {Establishment, Hypervisor, Inventory} from '../../../src/inventory/types.js'
import {uaiFromNumber} from '../../../src/inventory/uai.js'
import type {Io} from '../../../src/io.js'
import type {LabRuntime} from '../../../src/lab/runtime.js'
import type {FaultConfig} from '../../../src/lab/faults.js'
import type {VmBackend} from '../../../src/lab/backend.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {SecretStore} from '../../../src/secrets/store.js'
import {startLab} from '../../helpers/lab.js'

export const TOKEN_ID = 'pgi@pve!deploy'
export const TOKEN_ENV = 'PGI_TEST_LAB_TOKEN'

export interface SimLab {
  dir: string
  rt: LabRuntime
  inventory: Inventory
  env: NodeJS.ProcessEnv
  store: SecretStore
  image: DeployImage
  /** The AMI's age identity (all generated establishments share one AMI key here). */
  amiIdentityFile: string
  tokenSecret: string
  hypervisors(io: Io, connect?: PveConnector): Hypervisors
  close(): Promise<void>
}

export interface SimLabOptions {
  nodes?: number
  establishmentsPerNode?: number
  timeScale?: number
  faults?: Partial<FaultConfig>
  /** Durations of the simulated backend (ms, before timeScale). */
  durations?: Record<string, number>
  imageBytes?: number
  /** Use this backend instead of a plain SimulatedBackend (e.g. one with a richer guest model; then timeScale/durations are its own). */
  backend?: VmBackend
}

/** Tuned (not replaced) client: short task polling so scaled-down lab tasks are not dominated by it. */
export const fastConnect = (pollMs = 20): PveConnector => (hv, o) => connectHypervisor(hv, {...o, poll: {initialMs: pollMs, maxMs: pollMs * 5}, retry: {baseDelayMs: 50, maxDelayMs: 200}})

/** The `pgi deploy` request of a test on the simulated lab `l`: every establishment, fast polls and deadlines. */
export function deployRequest(l: SimLab, io: Io, over: Partial<DeployRequest> = {}): DeployRequest {
  return {
    inventoryPath: l.dir,
    inventory: l.inventory,
    selection: {all: true},
    secretsDir: l.store.dir,
    resolveImage: async () => l.image,
    handoffDir: join(l.dir, 'handoffs'),
    io,
    env: l.env,
    connect: fastConnect(),
    confirm: async () => undefined,
    pollIntervalMs: 20,
    agentTimeoutMs: 20_000,
    healthTimeoutMs: 20_000,
    ...over,
  }
}

export async function startSimLab(o: SimLabOptions = {}): Promise<SimLab> {
  const tokenSecret = randomUUID()
  const lab = await startLab({
    prefix: 'pgi-deploy-lab-',
    subdir: 'lab',
    nodes: o.nodes ?? 2,
    backend: o.backend,
    pveVersion: '9.1',
    timeScale: o.timeScale ?? 0.001,
    simulated: o.durations ? {durations: o.durations} : undefined,
    access: {
      users: {'pgi@pve': {}},
      tokens: {[TOKEN_ID]: {secretSha256: createHash('sha256').update(tokenSecret).digest('hex'), privsep: false}},
      roles: {},
      acl: [{path: '/', ugid: 'pgi@pve', roleid: 'Administrator', propagate: true}],
    },
    faults: o.faults ? ({seed: 1, taskFailureRate: 0, http500Rate: 0, ...o.faults} as FaultConfig) : undefined,
    authFailDelayMs: 10,
    lockTimeoutMs: 2000,
  })
  const {rt, dir, nodes} = lab

  const amiIdentity = await generateIdentity()
  const amiRecipient = await identityToRecipient(amiIdentity)
  const amiIdentityFile = join(dir, 'ami.key')
  await writeFile(amiIdentityFile, `${amiIdentity}\n`, {mode: 0o600})

  const source = {file: 'lab.yaml', line: 1, column: 1}
  const hypervisors = new Map<string, Hypervisor>()
  const establishments: Establishment[] = []
  let n = 130040
  nodes.forEach((node, i) => {
    const name = `hv-${node}`
    hypervisors.set(name, lab.hypervisor(node, {name, tokenId: TOKEN_ID, tokenEnv: TOKEN_ENV}))
    for (let k = 0; k < (o.establishmentsPerNode ?? 1); k++) {
      const uai = uaiFromNumber(n++)
      establishments.push({
        uai,
        name: `Lycée ${uai}`,
        academie: 'Lab',
        hypervisor: name,
        node,
        vmid: 1001 + k,
        network: {address: `10.${i + 1}.0.${10 + k}/24`, gateway: `10.${i + 1}.0.1`, dns: [`10.${i + 1}.0.53`], searchdomain: 'lab.example'},
        dataDiskGb: 8,
        osDiskGb: 4,
        cores: 1,
        memoryMb: 1024,
        cpuType: 'x86-64-v2',
        ami: {name: `AMI ${uai}`, ageRecipient: amiRecipient, login: 'ami'},
        ring: 'general',
        image: '2026.11.0',
        groups: [],
        databases: [{name: 'pgi', company: `Lycée ${uai}`, chart: 'fr', currency: 'EUR', source}],
        source,
      })
    }
  })
  const inventory: Inventory = {path: dir, files: [], rings: ['canary', 'pilot', 'general'], recipients: [], hypervisors, establishments, groups: new Map()}

  const imagePath = join(dir, 'pgi-tryton-2026.11.0.qcow2')
  const bytes = randomBytes(o.imageBytes ?? 256 * 1024)
  await writeFile(imagePath, bytes)
  const image: DeployImage = {
    name: 'pgi-tryton',
    version: '2026.11.0',
    file: 'pgi-tryton-2026.11.0.qcow2',
    path: imagePath,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    size: bytes.length,
  }

  const env: NodeJS.ProcessEnv = {[TOKEN_ENV]: tokenSecret, PGI_AGE_IDENTITY: join(dir, 'tech.key'), PGI_STATE_DIR: join(dir, 'state')}
  const store = await SecretStore.open({dir: join(dir, 'secrets'), recipients: [], env})
  return {
    dir,
    rt,
    inventory,
    env,
    store,
    image,
    amiIdentityFile,
    tokenSecret,
    hypervisors: (io, connect) => new Hypervisors(inventory, {store, io, env, connect: connect ?? fastConnect()}),
    async close() {
      await lab.close()
    },
  }
}
