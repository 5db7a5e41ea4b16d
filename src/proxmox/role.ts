/**
 * The least-privilege Proxmox VE roles pgi needs, per PVE major version, derived from the
 * `permissions` of the endpoints the client calls (PVE API schema 8.4 and 9.1). The test
 * test/unit/proxmox/role.test.ts re-derives them from the schema in ../shared/pve-api and checks
 * this file, the client's actual requests, and docs/proxmox-role.md against each other.
 */

export type PveMajor = '8' | '9'

/** An API endpoint the client calls, and why. */
export interface PgiEndpoint {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  /** Schema path with {placeholders}. */
  path: string
  why: string
  /**
   * Privileges PVE checks in code but the schema only states in its `description` (endpoints
   * whose `permissions` say `user: all`). Each must appear in that description.
   */
  described?: string[]
}

export const PGI_ENDPOINTS: readonly PgiEndpoint[] = [
  {method: 'GET', path: '/version', why: 'PVE version of the hypervisor'},
  {method: 'GET', path: '/nodes', why: 'nodes and whether they are online', described: []},
  {method: 'GET', path: '/cluster/resources', why: 'VMs, storages and nodes in one call (filtered by VM.Audit / Datastore.Audit)'},
  {method: 'GET', path: '/cluster/nextid', why: 'a free VM id'},
  {method: 'POST', path: '/nodes/{node}/qemu', why: 'create the VM (disks imported from the image)', described: ['VM.Allocate', 'Datastore.AllocateSpace', 'SDN.Use']},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/config', why: 'read the config and its digest'},
  {method: 'PUT', path: '/nodes/{node}/qemu/{vmid}/config', why: 'change the config (digest compare-and-swap)'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/status/current', why: 'VM state and lock'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/clone', why: 'clone a template (full clone)'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/template', why: 'turn a VM into a template'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/status/start', why: 'start'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/status/shutdown', why: 'clean shutdown'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/status/stop', why: 'hard stop'},
  {method: 'DELETE', path: '/nodes/{node}/qemu/{vmid}', why: 'destroy a VM (only the old OS VM after a rollout, never a data disk without backup)'},
  {method: 'PUT', path: '/nodes/{node}/qemu/{vmid}/resize', why: 'grow the OS / data disk'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/snapshot', why: 'list snapshots'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/snapshot', why: 'snapshot before an update'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback', why: 'roll back a failed update'},
  {method: 'DELETE', path: '/nodes/{node}/qemu/{vmid}/snapshot/{snapname}', why: 'drop the snapshot once the update is committed'},
  {method: 'PUT', path: '/nodes/{node}/qemu/{vmid}/cloudinit', why: 'regenerate the cloud-init drive after a change'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/ping', why: 'guest agent up?'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces', why: 'VM address as the guest sees it'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/get-fsinfo', why: 'disk usage'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/exec', why: 'run pgi-health / pgi-configure / pgi-backup in the guest'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/exec-status', why: 'their result'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/file-write', why: 'write a file in the guest'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/file-read', why: 'read /etc/pgi/image.json'},
  {method: 'GET', path: '/nodes/{node}/storage/{storage}/content', why: 'is the image already staged?'},
  {method: 'GET', path: '/nodes/{node}/storage/{storage}/status', why: 'free space before staging'},
  {method: 'POST', path: '/nodes/{node}/storage/{storage}/upload', why: 'stage the image (content type import)'},
  {method: 'POST', path: '/nodes/{node}/storage/{storage}/download-url', why: 'or let the node pull it (checksum verified)'},
  {method: 'GET', path: '/nodes/{node}/tasks', why: 'find the task a request started when its answer was lost', described: ['Sys.Audit']},
  {method: 'GET', path: '/nodes/{node}/tasks/{upid}/status', why: 'wait for a task', described: ['Sys.Audit']},
  {method: 'GET', path: '/nodes/{node}/tasks/{upid}/log', why: 'task log tail on failure', described: ['Sys.Audit']},
]

const COMMON = [
  'Datastore.AllocateSpace', // create disks on the OS/data storages; list/read staged images (any of Audit/AllocateSpace)
  'Datastore.AllocateTemplate', // upload / download-url to the import storage
  'SDN.Use', // attach the VM to the bridge (/sdn/zones/localnetwork/<bridge>)
  'Sys.AccessNetwork', // download-url (on /nodes/<node>; the alternative is Sys.Audit+Sys.Modify on /)
  'Sys.Audit', // node status; tasks not started by the token (another user's lock holder)
  'VM.Allocate', // create, template, destroy
  'VM.Audit', // config, status, snapshots
  'VM.Clone',
  'VM.Config.CDROM', // cloud-init drive (ide2)
  'VM.Config.CPU',
  'VM.Config.Cloudinit',
  'VM.Config.Disk',
  'VM.Config.HWType', // scsihw, machine
  'VM.Config.Memory',
  'VM.Config.Network',
  'VM.Config.Options', // name, tags, description, agent, onboot
  'VM.PowerMgmt',
  'VM.Snapshot', // snapshot, rollback (any of VM.Snapshot/VM.Snapshot.Rollback), delete
] as const

/** The role the pgi API token needs ("PGI"), per PVE major version. */
export const PGI_ROLE_PRIVILEGES: Record<PveMajor, readonly string[]> = {
  // PVE 8.x: every guest-agent endpoint checks VM.Monitor.
  '8': [...COMMON, 'VM.Monitor'].sort(),
  // PVE 9.x: VM.Monitor is gone; agent exec/exec-status need VM.GuestAgent.Unrestricted, which also
  // satisfies ping, network-get-interfaces, get-fsinfo, file-read and file-write ("any" checks).
  '9': [...COMMON, 'VM.GuestAgent.Unrestricted'].sort(),
}

/**
 * The read-only role of an AMI (one establishment's IT agent), `PGI-AMI`, granted on /vms/<vmid>
 * alone: the VM's state and configuration, the read-only guest-agent calls (ping, addresses,
 * disks), and reading a file through the agent — which is how `pgi status` reads the health the
 * server records every 2 minutes (/run/pgi/health.json) without running a command in it. On PVE 9
 * that is VM.GuestAgent.FileRead, far narrower than VM.GuestAgent.Unrestricted (exec); PVE 8 has
 * only VM.Monitor, which allows every agent call, exec included (a documented caveat).
 */
export const AMI_ROLE_PRIVILEGES: Record<PveMajor, readonly string[]> = {
  '8': ['VM.Audit', 'VM.Monitor'],
  '9': ['VM.Audit', 'VM.GuestAgent.Audit', 'VM.GuestAgent.FileRead'],
}

/** Endpoints the AMI role is meant to allow. */
export const AMI_ENDPOINTS: readonly Pick<PgiEndpoint, 'method' | 'path'>[] = [
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/config'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/status/current'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/ping'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/get-fsinfo'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/file-read'},
]

/**
 * The optional role `PGI-AMI-DB`, for an establishment whose AMI manages the class databases with
 * pgi (`pgi db`, which runs pgi-db in the guest): everything PGI-AMI allows, plus running commands
 * in their own VM through the guest agent (exec). Granted on /vms/<vmid> alone, instead of or
 * beside PGI-AMI. It gives nothing the AMI does not already have inside the VM (their account has
 * sudo), and no right on the VM itself (configuration, power, snapshots, deletion) nor on another.
 * On PVE 9 VM.GuestAgent.Unrestricted satisfies every guest-agent check (it is in each "any" list),
 * so it replaces VM.GuestAgent.Audit and FileRead; on PVE 8 the role is the same as PGI-AMI.
 */
export const AMI_DB_ROLE_PRIVILEGES: Record<PveMajor, readonly string[]> = {
  '8': ['VM.Audit', 'VM.Monitor'],
  '9': ['VM.Audit', 'VM.GuestAgent.Unrestricted'],
}

/**
 * Endpoints the PGI-AMI-DB role is meant to allow: the AMI role's, plus exec and its result, and
 * file-write (`pgi db class` and `pgi db import` send the student list and the dump in pieces).
 */
export const AMI_DB_ENDPOINTS: readonly Pick<PgiEndpoint, 'method' | 'path'>[] = [
  ...AMI_ENDPOINTS,
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/exec'},
  {method: 'GET', path: '/nodes/{node}/qemu/{vmid}/agent/exec-status'},
  {method: 'POST', path: '/nodes/{node}/qemu/{vmid}/agent/file-write'},
]

/** "8.4.1" / "9.1" / undefined → major version (default: 9, the current release). */
export function pveMajor(version: string | undefined): PveMajor {
  const m = /^(\d+)/.exec(version ?? '')
  return m && m[1] === '8' ? '8' : '9'
}

export interface PveumOptions {
  pveVersion?: string
  /** PVE user that owns the token (default pgi@pve). */
  user?: string
  /** Token name (default deploy) → token id USER!NAME. */
  tokenName?: string
  /** Storages pgi uses on this hypervisor (OS disks, data disks, image import). */
  storages: string[]
  /** Bridges the VMs attach to (local bridges live in SDN zone "localnetwork"). */
  bridges: string[]
  role?: string
}

/**
 * The `pveum` commands that create the role, the user and a privilege-separated token, and grant
 * them on exactly the paths pgi touches. With privilege separation the token's rights are the
 * intersection of the user's and the token's ACLs, so both get the role.
 */
export function pveumCommands(o: PveumOptions): string[] {
  const major = pveMajor(o.pveVersion)
  const role = o.role ?? 'PGI'
  const user = o.user ?? 'pgi@pve'
  const token = `${user}!${o.tokenName ?? 'deploy'}`
  const paths = ['/vms', '/nodes', ...[...new Set(o.storages)].map((s) => `/storage/${s}`), ...[...new Set(o.bridges)].map((b) => `/sdn/zones/localnetwork/${b}`)]
  return [
    `pveum role add ${role} --privs "${PGI_ROLE_PRIVILEGES[major].join(',')}"`,
    `pveum user add ${user} --comment "pgi: deploys and updates the PGI VMs"`,
    `pveum user token add ${user} ${o.tokenName ?? 'deploy'} --privsep 1 --comment "pgi CLI"`,
    ...paths.map((p) => `pveum acl modify ${p} --users ${user} --tokens '${token}' --roles ${role}`),
  ]
}

/**
 * `pveum` commands for an AMI's access to one VM: the role (PGI-AMI, or PGI-AMI-DB with `db`), a
 * privilege-separated API token for `pgi status --token-id`, and the grant on /vms/<vmid> alone for
 * the user and the token (a privilege-separated token has the intersection of both ACLs).
 */
export function pveumAmiCommands(o: {pveVersion?: string; user: string; vmid: number; db?: boolean; tokenName?: string; role?: string}): string[] {
  const major = pveMajor(o.pveVersion)
  const role = o.role ?? (o.db ? 'PGI-AMI-DB' : 'PGI-AMI')
  const privs = (o.db ? AMI_DB_ROLE_PRIVILEGES : AMI_ROLE_PRIVILEGES)[major]
  const tokenName = o.tokenName ?? 'status'
  return [
    `pveum role add ${role} --privs "${privs.join(',')}"`,
    `pveum user token add ${o.user} ${tokenName} --privsep 1 --comment "pgi status"`,
    `pveum acl modify /vms/${o.vmid} --users ${o.user} --tokens '${o.user}!${tokenName}' --roles ${role}`,
  ]
}
