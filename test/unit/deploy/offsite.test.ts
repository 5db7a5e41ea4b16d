/**
 * Deploy gives each VM its off-site settings (docs/backups.md) when the inventory has an
 * `offsite:` section: once the VM is healthy, through `pgi-offsite --configure` on the guest
 * agent's stdin; the repository key generated into the secret store on first use and never in a
 * request's parameters, an output or the journal. A later deploy gives them again only when the
 * inventory's settings changed (or were added to a fleet already deployed).
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {afterEach, describe, expect, it} from 'vitest'

import {offsitePasswordKey} from '../../../src/fleet/offsite.js'
import {runDeploy} from '../../../src/deploy/service.js'
import type {OffsiteSettings} from '../../../src/inventory/types.js'
import {MemoryIo} from '../../../src/io.js'
import {connectHypervisor} from '../../../src/proxmox/client.js'
import {Secret} from '../../../src/secret.js'
import {deployRequest, startSimLab, type SimLab} from './sim-lab.js'

let lab: SimLab | undefined
afterEach(async () => {
  await lab?.close()
  lab = undefined
})

const request = deployRequest

function offsite(over: Partial<OffsiteSettings> = {}): OffsiteSettings {
  return {repository: 'rest:http://10.0.2.100:8000/{uai}/', regionRepository: '/srv/restic/{uai}', repositories: new Map(), retention: {daily: 7, weekly: 4, monthly: 12}, limitUploadKib: 256, window: '01:00-06:00', maxAgeS: 48 * 3600, source: {file: 'lab.yaml', line: 1, column: 1}, ...over}
}

async function guestSettings(l: SimLab, uai: string): Promise<Record<string, unknown> | undefined> {
  const e = l.inventory.establishments.find((x) => x.uai === uai)!
  const api = connectHypervisor(l.inventory.hypervisors.get(e.hypervisor)!, {tokenSecret: new Secret(l.tokenSecret)})
  try {
    const r = await api.agentExec(e.node, e.vmid, ['cat', '/srv/pgi/.pgi/offsite.json'], {timeoutMs: 10_000})
    return r.exitcode === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>) : undefined
  } finally {
    await api.close()
  }
}

describe('pgi deploy with off-site copies', () => {
  it("gives each new VM its own repository and key, over the agent's stdin; an unchanged inventory sends nothing again", async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 2})
    lab.inventory.offsite = offsite()
    const io = new MemoryIo()
    const first = await runDeploy(request(lab, io))
    expect(first.result!.outcomes.map((o) => o.outcome)).toEqual(['created', 'created'])
    const keys: string[] = []
    for (const e of lab.inventory.establishments) {
      const key = (await lab.store.get(offsitePasswordKey(e.uai))).reveal()
      keys.push(key)
      expect(key.length).toBeGreaterThanOrEqual(32)
      expect(await guestSettings(lab, e.uai)).toEqual({repository: `rest:http://10.0.2.100:8000/${e.uai}/`, password: key, host: e.uai, limit_upload_kib: 256, window: '01:00-06:00'})
      const journal = JSON.parse(await readFile(join(lab.env.PGI_STATE_DIR!, 'journal', 'deploy', `${e.uai}.json`), 'utf8')) as {steps: Record<string, string>; offsite?: {settings: string}}
      expect(journal.steps.offsite).toBeTruthy()
      expect(journal.offsite?.settings).toMatch(/^[0-9a-f]{32}$/)
    }
    expect(new Set(keys).size).toBe(2)
    const log1 = await lab.rt.readRequestLog()

    // up to date: nothing sent again (not a single write request)
    const second = await runDeploy(request(lab, io))
    expect(second.result!.outcomes.map((o) => o.outcome)).toEqual(['up-to-date', 'up-to-date'])
    const log2 = (await lab.rt.readRequestLog()).slice(log1.length)
    expect(log2.filter((x) => x.method !== 'GET')).toEqual([])

    // the window changes in the inventory: given again, same key
    lab.inventory.offsite = offsite({window: '22:00-05:00'})
    const third = await runDeploy(request(lab, io))
    expect(third.result!.outcomes.map((o) => [o.outcome, o.detail])).toEqual(lab.inventory.establishments.map((e) => ['updated', `off-site copies to rest:http://10.0.2.100:8000/${e.uai}/`]))
    for (const [i, e] of lab.inventory.establishments.entries()) expect(await guestSettings(lab, e.uai)).toMatchObject({window: '22:00-05:00', password: keys[i]})

    // the key is in no request parameter, output, result or journal
    const text = [io.text(), JSON.stringify([first, second, third]), await readFile(lab.rt.requestLog, 'utf8'),
      ...(await Promise.all(lab.inventory.establishments.map((e) => readFile(join(lab!.env.PGI_STATE_DIR!, 'journal', 'deploy', `${e.uai}.json`), 'utf8'))))].join('\n')
    for (const k of keys) expect(text).not.toContain(k)
  }, 60_000)

  it('an offsite: section added to a fleet already deployed reaches the running VMs; without one, nothing is sent', async () => {
    lab = await startSimLab({nodes: 1, establishmentsPerNode: 1})
    const io = new MemoryIo()
    await runDeploy(request(lab, io))
    const e = lab.inventory.establishments[0]!
    expect(await guestSettings(lab, e.uai)).toBeUndefined()
    expect(await lab.store.tryGet(offsitePasswordKey(e.uai))).toBeUndefined()

    lab.inventory.offsite = offsite()
    const r = await runDeploy(request(lab, io))
    expect(r.result!.outcomes[0]).toMatchObject({outcome: 'updated', detail: `off-site copies to rest:http://10.0.2.100:8000/${e.uai}/`})
    expect((await guestSettings(lab, e.uai))?.password).toBe((await lab.store.get(offsitePasswordKey(e.uai))).reveal())
    const again = await runDeploy(request(lab, io))
    expect(again.result!.outcomes[0]!.outcome).toBe('up-to-date')
  }, 60_000)
})
