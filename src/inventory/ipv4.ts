import {isIPv4} from 'node:net'

/**
 * IPv4 address arithmetic for the inventory's static addresses (address/prefix, gateway).
 * node:net validates addresses; the subnet arithmetic (network, broadcast, membership) is a few
 * shifts on a 32-bit integer, so it is written here rather than pulling in a library.
 * pgi configures IPv4 only (cloud-init ipconfig0 ip=…/gw=…).
 */

export function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, part) => acc * 256 + Number(part), 0)
}

export function intToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.')
}

export function isIpv4(s: string): boolean {
  return isIPv4(s)
}

export interface Cidr {
  address: string
  prefix: number
  /** Network address (all host bits 0). */
  network: string
  /** Broadcast address (all host bits 1). */
  broadcast: string
  /** First and last usable host addresses. */
  firstHost: string
  lastHost: string
}

/** Parses "a.b.c.d/n"; returns a reason string when it is not a valid IPv4 CIDR. */
export function parseCidr(s: string): Cidr | string {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(s)
  if (!m) return 'expected ADDRESS/PREFIX, e.g. 192.0.2.10/24'
  const [, address, p] = m as unknown as [string, string, string]
  if (!isIPv4(address)) return `"${address}" is not an IPv4 address`
  const prefix = Number(p)
  if (prefix < 1 || prefix > 32) return `prefix /${prefix} is out of range (1–32)`
  const size = 2 ** (32 - prefix)
  const a = ipv4ToInt(address)
  const net = Math.floor(a / size) * size
  const bcast = net + size - 1
  return {
    address,
    prefix,
    network: intToIpv4(net),
    broadcast: intToIpv4(bcast),
    firstHost: intToIpv4(prefix >= 31 ? net : net + 1),
    lastHost: intToIpv4(prefix >= 31 ? bcast : bcast - 1),
  }
}

/** True when `ip` lies in the subnet of `cidr`. */
export function inSubnet(ip: string, cidr: Cidr): boolean {
  const size = 2 ** (32 - cidr.prefix)
  return Math.floor(ipv4ToInt(ip) / size) === Math.floor(ipv4ToInt(cidr.address) / size)
}
