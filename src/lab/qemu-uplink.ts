import {createHash} from 'node:crypto'
import {mkdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import type {GuestForward, UserNetSpec} from '../qemu/vm.js'
import {BackendError, type VmSpec} from './backend.js'
import type {LinkSimulator} from './link-sim.js'

/**
 * The guest's one way to the host, for the qemu backend of the lab: when the lab has a link
 * simulator configuration (`<lab dir>/link-sim.yaml` with `uplink.ports`), each VM gets, for each
 * of those guest ports, a QEMU `guestfwd` on its **uplink address** (the guest subnet's third-last
 * address, e.g. 10.1.255.253 for 10.1.0.0/16). A connection there starts a `socat` relay to the
 * simulator's socket for this VM, which shapes it as the establishment's link and passes it on to
 * the host-side target (src/lab/link-sim.ts). `restrict=on` stays: nothing else of the host is
 * reachable.
 */

/**
 * The address of the host's uplink inside a guest network: the subnet's third-last address
 * (10.1.255.253 in 10.1.0.0/16, .253 in a /24), or the next free one below it. Never the guest's
 * own address, its gateway or its DNS (QEMU refuses a guestfwd on those).
 */
export function uplinkAddress(net: UserNetSpec): string {
  const toInt = (ip: string) => ip.split('.').reduce((a, o) => a * 256 + Number(o), 0)
  const toIp = (n: number) => [24, 16, 8, 0].map((sh) => Math.floor(n / 2 ** sh) % 256).join('.')
  const [base, prefix] = net.net.split('/')
  const size = 2 ** (32 - Number(prefix))
  const b = toInt(base!)
  const used = new Set([net.guestAddress, net.host, net.dns].filter(Boolean))
  for (let n = b + size - 3; n > b; n--) if (!used.has(toIp(n))) return toIp(n)
  throw new BackendError(`no free address for the uplink in ${net.net}`)
}

/**
 * The guest's paths to the host for this start: one guestfwd per configured guest port, each
 * relayed by socat to the link simulator's Unix socket for this VM. A socket file in the VM's
 * runtime directory (not an abstract socket: Node binds those with the whole sun_path as the
 * name, so socat's connect by name never finds them); a short one under the system's temporary
 * directory when that path would pass the 107-byte limit of a socket address.
 */
export async function attachUplink(sim: LinkSimulator, o: {spec: VmSpec; net: UserNetSpec; runDir: string; socat: boolean; log: (line: string) => void}): Promise<{address: string; ports: number[]} | undefined> {
  await sim.detach(o.spec.node, o.spec.vmid)
  const ports = sim.guestPorts()
  if (ports.length === 0) return undefined
  if (!o.socat) {
    o.log('warning: socat is not installed: the guest gets no uplink (apt-get install socat)')
    return undefined
  }
  const address = uplinkAddress(o.net)
  const runDir = o.runDir
  await mkdir(runDir, {recursive: true})
  const id = createHash('sha256').update(runDir).digest('hex').slice(0, 16)
  const forwards: GuestForward[] = []
  for (const port of ports) {
    let path = join(runDir, `uplink-${port}.sock`)
    // QEMU splits the relay command on spaces: a path with white space goes the short way too
    if (Buffer.byteLength(path) > 100 || /\s/.test(path)) path = join(tmpdir(), `pgi-lab-${id}-${port}.sock`)
    await rm(path, {force: true})
    await sim.attach({node: o.spec.node, vmid: o.spec.vmid, name: o.spec.name}, port, path)
    // QEMU runs the relay in the VM's runtime directory (its cwd): the log lands there
    forwards.push({guestAddress: address, guestPort: port, command: `socat -lf uplink-relay.log STDIO UNIX-CONNECT:${path}`})
  }
  o.net.guestForwards = forwards
  return {address, ports}
}
