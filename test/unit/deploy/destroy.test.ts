import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {destroyEstablishment} from '../../../src/deploy/destroy.js'
import {runDeploy} from '../../../src/deploy/service.js'
import {SafetyRefusal} from '../../../src/errors.js'
import {MemoryIo} from '../../../src/io.js'
import {SimulatedBackend} from '../../../src/lab/simulated-backend.js'
import {fastConnect, startSimLab, type SimLab} from './sim-lab.js'

let lab: SimLab | undefined
afterEach(async () => {
  await lab?.close()
  lab = undefined
})

async function deployed(backend?: SimulatedBackend): Promise<SimLab> {
  const l = await startSimLab({nodes: 1, establishmentsPerNode: 1, ...(backend ? {backend} : {})})
  await runDeploy({
    inventoryPath: l.dir, inventory: l.inventory, selection: {all: true}, secretsDir: l.store.dir, resolveImage: async () => l.image,
    handoffDir: join(l.dir, 'handoffs'), io: new MemoryIo(), env: l.env, connect: fastConnect(), confirm: async () => undefined, pollIntervalMs: 20,
  })
  return l
}

describe('pgi destroy', () => {
  it('refuses without --destroy-data before sending anything', async () => {
    lab = await deployed()
    const before = (await lab.rt.readRequestLog()).length
    const e = lab.inventory.establishments[0]!
    await expect(destroyEstablishment(e, {hypervisors: lab.hypervisors(new MemoryIo()), io: new MemoryIo(), destroyData: false, confirm: async () => undefined, backupDir: join(lab.dir, 'bk')}))
      .rejects.toMatchObject({code: 'PGI_REFUSED', exitCode: 7})
    expect((await lab.rt.readRequestLog()).length).toBe(before)
  }, 60_000)

  it('changes nothing when the typed confirmation is refused, or the VM is not pgi\'s', async () => {
    lab = await deployed()
    const e = lab.inventory.establishments[0]!
    const before = (await lab.rt.readRequestLog()).length
    await expect(destroyEstablishment(e, {hypervisors: lab.hypervisors(new MemoryIo()), io: new MemoryIo(), destroyData: true, confirm: async () => {
      throw new SafetyRefusal('confirmation did not match')
    }, backupDir: join(lab.dir, 'bk')})).rejects.toMatchObject({exitCode: 7})
    expect((await lab.rt.readRequestLog()).slice(before).filter((r) => r.method !== 'GET')).toEqual([])

    const other = {...e, uai: '0130041Z'}
    await expect(destroyEstablishment(other, {hypervisors: lab.hypervisors(new MemoryIo()), io: new MemoryIo(), destroyData: true, confirm: async () => undefined, backupDir: join(lab.dir, 'bk')}))
      .rejects.toMatchObject({code: 'PGI_REFUSED'})
  }, 60_000)

  it('deletes nothing when the final backup does not verify', async () => {
    // the data disk damages what pgi-backup writes: the dump no longer matches its manifest's sha256
    const backend = new SimulatedBackend({timeScale: 0.001})
    const {exec} = backend.agent
    Object.assign(backend.agent, {
      exec: async (node: string, vmid: number, command: string[], input: string | undefined, timeoutMs: number) => {
        const r = await exec(node, vmid, command, input, timeoutMs)
        if (command[0]?.endsWith('pgi-backup') && !command.includes('--verify')) {
          const dump = [...backend.dataDisk(node, vmid)!.files].filter(([k]) => k.endsWith('.dump')).at(-1)![1]
          dump.data[10] ^= 0xff
        }
        return r
      },
    })
    lab = await deployed(backend)
    const e = lab.inventory.establishments[0]!
    backend.addDatabase(e.node, e.vmid, 'bts_ndrc_2026')
    await expect(destroyEstablishment(e, {hypervisors: lab.hypervisors(new MemoryIo()), io: new MemoryIo(), destroyData: true, confirm: async () => undefined, backupDir: join(lab.dir, 'bk')}))
      .rejects.toMatchObject({code: 'PGI_BACKUP_FAILED'})
    const log = await lab.rt.readRequestLog()
    expect(log.filter((r) => r.method === 'DELETE')).toEqual([])
    expect(log.filter((r) => r.path.endsWith('/status/stop'))).toEqual([])
  }, 60_000)
})
