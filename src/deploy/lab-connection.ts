/**
 * Handoffs for a pgi LAB: the lab's VMs are reached through ports it forwards on 127.0.0.1, not
 * at their inventory address, so the AMI's handoff must name those endpoints. Read from the lab's
 * VM snapshot (`<lab dir>/run/vms.json`, written by the lab daemon).
 */
import type {HandoffConnection} from '../credentials/handoff.js'
import {ErrorCode, UserError} from '../errors.js'
import type {Establishment} from '../inventory/types.js'
import {readVmSnapshot} from '../lab/runtime.js'

function split(ep: string | undefined): {host: string; port: number} | undefined {
  if (!ep) return undefined
  const m = /^(.*):(\d+)$/.exec(ep.replace(/^\w+:\/\//, '').replace(/\/.*$/, ''))
  return m ? {host: m[1]!, port: Number(m[2])} : undefined
}

/** The connection of `est`'s VM in the lab at `labDir` (waits a few seconds for the snapshot to show it). */
export function labConnection(labDir: string, opts: {waitMs?: number} = {}): (est: Establishment) => Promise<HandoffConnection> {
  return async (est) => {
    const deadline = Date.now() + (opts.waitMs ?? 10_000)
    for (;;) {
      const vm = (await readVmSnapshot(labDir)).find((v) => v.node === est.node && v.vmid === est.vmid)
      const eps = vm?.access?.endpoints
      if (eps && Object.keys(eps).length > 0) {
        const ssh = split(eps.ssh)
        // the web client over HTTPS when the VM serves it (port 80 redirects browsers there, to the
        // standard port, which a port forward does not have)
        const web = split(eps.https) ?? split(eps.web)
        const scheme = eps.https ? 'https' : 'http'
        const pg = split(eps.postgresql)
        const rpc = split(eps.jsonrpc)
        const host = ssh?.host ?? web?.host ?? pg?.host ?? '127.0.0.1'
        return {
          host,
          ...(ssh ? {sshPort: ssh.port} : {}),
          ...(pg ? {postgresqlPort: pg.port} : {}),
          ...(rpc ? {jsonrpcPort: rpc.port} : {}),
          ...(web ? {webUrl: `${scheme}://${web.host}:${web.port}/`} : {}),
        }
      }
      if (Date.now() > deadline) {
        throw new UserError(ErrorCode.LAB_NOT_RUNNING, `the lab at ${labDir} shows no forwarded ports for VM ${est.vmid} on ${est.node}`, {
          where: {uai: est.uai, node: est.node, vmid: est.vmid},
          suggestions: ['Is the lab running (`pgi lab status`)? Simulated labs forward no ports: drop --lab-dir for them.'],
        })
      }
      await new Promise((r) => setTimeout(r, 500))
    }
  }
}
