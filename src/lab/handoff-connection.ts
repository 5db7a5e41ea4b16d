/**
 * Handoffs for a pgi LAB: the AMI's handoff must name how the lab's VMs are really reached. Read
 * from the lab's VM snapshot (`<lab dir>/run/vms.json`, written by the lab daemon):
 * - a qemu lab forwards ports on 127.0.0.1 to each VM: the handoff names those endpoints;
 * - a simulated lab has no network and forwards nothing: the handoff names the address the lab
 *   gave the VM (cloud-init's ipconfig, what its guest agent reports), and says so.
 * Deploy and credentials never import the lab: a command that has --lab-dir passes `labConnection`
 * as their `connection` (a ConnectionSource, src/fleet/credentials.ts).
 */
import type {HandoffConnection} from '../fleet/handoff.js'
import {ErrorCode, UserError} from '../errors.js'
import type {Establishment} from '../inventory/types.js'
import type {Io} from '../io.js'
import {readVmSnapshot, type VmSnapshotEntry} from './runtime.js'
import {sleep} from '../sleep.js'

function split(ep: string | undefined): {host: string; port: number} | undefined {
  if (!ep) return undefined
  const m = /^(.*):(\d+)$/.exec(ep.replace(/^\w+:\/\//, '').replace(/\/.*$/, ''))
  return m ? {host: m[1]!, port: Number(m[2])} : undefined
}

/** The handoff's connection for a lab VM, or undefined while the lab does not show it running yet. */
export function connectionOf(vm: VmSnapshotEntry | undefined): HandoffConnection | undefined {
  const access = vm?.access
  if (!access) return undefined
  const eps = access.endpoints ?? {}
  if (Object.keys(eps).length > 0) {
    const ssh = split(eps.ssh)
    // the web client over HTTPS when the VM serves it (port 80 redirects browsers there, to the
    // standard port, which a port forward does not have)
    const web = split(eps.https) ?? split(eps.web)
    const scheme = eps.https ? 'https' : 'http'
    const pg = split(eps.postgresql)
    const rpc = split(eps.jsonrpc)
    return {
      host: ssh?.host ?? web?.host ?? pg?.host ?? '127.0.0.1',
      ...(ssh ? {sshPort: ssh.port} : {}),
      ...(pg ? {postgresqlPort: pg.port} : {}),
      ...(rpc ? {jsonrpcPort: rpc.port} : {}),
      ...(web ? {webUrl: `${scheme}://${web.host}:${web.port}/`} : {}),
    }
  }
  const address = access.addresses?.[0]
  if (!address) return undefined
  // the letter is in French, as the rest of the handoff
  return {host: address, note: "VM d'un laboratoire pgi sans réseau (aucun port redirigé) : c'est l'adresse que le laboratoire lui a donnée"}
}

/** The connection of `est`'s VM in the lab at `labDir` (waits a few seconds for the snapshot to show it). */
export function labConnection(labDir: string, opts: {waitMs?: number; io?: Io} = {}): (est: Establishment) => Promise<HandoffConnection> {
  return async (est) => {
    const deadline = Date.now() + (opts.waitMs ?? 10_000)
    for (;;) {
      const vm = (await readVmSnapshot(labDir)).find((v) => v.node === est.node && v.vmid === est.vmid)
      const c = connectionOf(vm)
      if (c) {
        if (c.note) opts.io?.info(`${est.uai}: the lab at ${labDir} forwards no ports to VM ${est.vmid} (${vm?.access?.note ?? 'no network'}): the handoff names the address the lab gave it, ${c.host}`)
        return c
      }
      if (Date.now() > deadline) {
        throw new UserError(ErrorCode.LAB_NOT_RUNNING, `the lab at ${labDir} shows neither forwarded ports nor an address for VM ${est.vmid} on ${est.node}`, {
          where: {uai: est.uai, node: est.node, vmid: est.vmid},
          suggestions: ['Is the lab running (`pgi lab status`), and this VM started in it? Without --lab-dir, the handoff names the inventory address.'],
        })
      }
      await sleep(500)
    }
  }
}
