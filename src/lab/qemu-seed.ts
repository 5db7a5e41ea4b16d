/**
 * The NoCloud seed (src/qemu/cloudinit.ts) of a lab VM from its PVE config's cloud-init settings:
 * what PVE writes into a VM's cloud-init drive (user, password hash, SSH keys, DNS, one network
 * config per NIC from its `ipconfigN`). The qemu backend writes it when the drive is regenerated.
 */
import type {SeedSpec} from '../qemu/cloudinit.js'
import {BackendError, type VmSpec} from './backend.js'

/** The NoCloud seed content of a VM spec. */
export function seedSpecOf(spec: VmSpec): SeedSpec {
  const ci = spec.cloudInit
  if (!ci) throw new BackendError(`VM ${spec.vmid} has no cloud-init settings`)
  return {
    hostname: ci.hostname,
    user: ci.user,
    passwordHash: ci.passwordHash,
    sshKeys: ci.sshKeys,
    nameservers: ci.nameservers,
    searchdomain: ci.searchdomain,
    packageUpgrade: ci.upgrade,
    nics: spec.nics.map((nic, i) => ({name: `eth${i}`, mac: nic.macaddr, ipconfig: ci.ipconfig[nic.key] ?? {ip: 'dhcp'}})),
  }
}
