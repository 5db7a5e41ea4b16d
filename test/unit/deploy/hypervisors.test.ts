import {describe, expect, it} from 'vitest'

import {Hypervisors, type PveConnector} from '../../../src/hypervisors.js'
import {MemoryIo} from '../../../src/io.js'
import type {Hypervisor} from '../../../src/inventory/types.js'
import type {PveApi} from '../../../src/proxmox/types.js'

function hv(name: string, env: string): Hypervisor {
  return {
    name,
    url: 'https://127.0.0.1:8006',
    nodes: ['pve1'],
    tls: {fingerprint: 'AA'},
    token: {id: 'pgi@pve!deploy', secret: {env}},
    storage: {os: 'local-vm', data: 'local-vm', import: 'local'},
    bridge: 'vmbr0',
    source: {file: 'x.yaml', line: 1, column: 1},
  }
}

describe('Hypervisors', () => {
  const inventory = {hypervisors: new Map([['a', hv('a', 'TOKEN_A')], ['b', hv('b', 'TOKEN_B')]])}

  it('opens each hypervisor once, lazily, with its own token', async () => {
    const calls: {name: string; token: string}[] = []
    const connect: PveConnector = (h, o) => {
      calls.push({name: h.name, token: o.tokenSecret.reveal()})
      return {hypervisor: h.name} as unknown as PveApi
    }
    const hvs = new Hypervisors(inventory, {io: new MemoryIo(), env: {TOKEN_A: 'sa', TOKEN_B: 'sb'}, connect})
    expect(calls).toHaveLength(0)
    const [x, y] = await Promise.all([hvs.get('a'), hvs.get('a')])
    expect(x).toBe(y)
    expect(calls).toEqual([{name: 'a', token: 'sa'}])
    expect((await hvs.get('b')).hypervisor).toBe('b')
    expect(calls.map((c) => c.name)).toEqual(['a', 'b'])
  })

  it('rejects unknown hypervisors and missing tokens, and retries after a failure', async () => {
    const env: NodeJS.ProcessEnv = {}
    const connect: PveConnector = (h) => ({hypervisor: h.name}) as unknown as PveApi
    const hvs = new Hypervisors(inventory, {io: new MemoryIo(), env, connect})
    await expect(hvs.get('zz')).rejects.toMatchObject({code: 'PGI_UNKNOWN_HYPERVISOR'})
    await expect(hvs.get('a')).rejects.toThrow()
    env.TOKEN_A = 'now-set'
    expect((await hvs.get('a')).hypervisor).toBe('a')
  })
})
