/**
 * createVmFromImage: an "already exists" answer is ours (a lost answer to our own create) only
 * when the VM's pgi metadata says so; otherwise VMID_TAKEN, naming what was being made.
 */
import {describe, expect, it} from 'vitest'

import {ErrorCode, type PgiError} from '../../../src/errors.js'
import {createVmFromImage} from '../../../src/fleet/vm-create.js'
import {MemoryIo} from '../../../src/io.js'
import type {PveApi} from '../../../src/proxmox/types.js'

function api(description: string | undefined): PveApi {
  return {
    createVm: async () => {
      throw new Error("POST /nodes/pve1/qemu failed: 500 unable to create VM 105 - VM 105 already exists on node 'pve1'")
    },
    vmConfig: async () => ({digest: 'x', ...(description === undefined ? {} : {description})}),
  } as unknown as PveApi
}

const place = {uai: '0130040Y', hypervisor: 'hv1', node: 'pve1', vmid: 105}

describe('createVmFromImage', () => {
  it('goes on when the VM that exists is ours, says VMID_TAKEN with what was being made otherwise', async () => {
    const io = new MemoryIo()
    await createVmFromImage(api('pgi:{"uai":"0130040Y"}'), place, {}, {io, update: () => undefined, isOurs: () => true})
    const deploying = (await createVmFromImage(api('a VM of someone else'), place, {}, {io, update: () => undefined, isOurs: () => false}).catch((e: unknown) => e)) as PgiError
    expect(deploying.code).toBe(ErrorCode.VMID_TAKEN)
    expect(deploying.message).toBe('vmid 105 was taken by another VM while deploying 0130040Y')
    const drill = (await createVmFromImage(api(undefined), place, {}, {io, update: () => undefined, isOurs: () => false, making: "making the restore drill's scratch VM of 0130040Y"}).catch((e: unknown) => e)) as PgiError
    expect(drill.message).toBe("vmid 105 was taken by another VM while making the restore drill's scratch VM of 0130040Y")
    expect(drill.where).toMatchObject({uai: '0130040Y', vmid: 105})
  })
})
