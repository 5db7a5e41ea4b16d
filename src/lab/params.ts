/**
 * The lab's route and parameter table: every path, method and parameter the lab accepts, with the
 * same types and formats as the Proxmox VE schema (test/unit/lab/conformance.test.ts checks each
 * entry against ../shared/pve-api/apidoc.json and apidoc-pve8.json). The lab accepts a SUBSET of
 * PVE's parameters: anything not listed here is rejected with PVE's 400 "not defined in schema".
 *
 * Written by hand (not generated from the schema, which must not be copied into the repository);
 * the conformance test keeps it honest.
 */

export type ParamType = 'string' | 'integer' | 'boolean' | 'number' | 'array'

/** One key of a PVE property string ("k=v,k2=v2"). */
export interface SubKeyDef {
  type: ParamType
  enum?: string[]
  minimum?: number
  maximum?: number
  /** Named format of the value (pve-volume-id-or-qm-path, mac-addr, …): informative. */
  format?: string
  /** Key that may be given without its "name=" (e.g. `file` in `local:32,serial=x`). */
  defaultKey?: boolean
}

export interface ParamDef {
  type: ParamType
  /** A named PVE format (pve-vmid, dns-name, pve-tag-list, urlencoded, …). */
  format?: string
  /** A property-string format: its keys. */
  keys?: Record<string, SubKeyDef>
  optional?: boolean
  enum?: string[]
  minimum?: number
  maximum?: number
  maxLength?: number
  pattern?: string
  /** For numbered keys (`virtio[n]`): highest n. */
  maxIndex?: number
  /** Another parameter that must be present with this one. */
  requires?: string
}

/** A privilege check as in the schema's `permissions.check`: ['perm', path, privs, 'any'?, 1?]. */
export type PermCheck = ['perm', string, string[]] | ['perm', string, string[], 'any', 1]

export interface RouteDef {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  /** Schema path with {param} placeholders. */
  path: string
  /** Handler id (route modules register handlers under these ids). */
  handler: string
  params: Record<string, ParamDef>
  /** Simple privilege check applied before the handler (handlers do complex ones themselves). */
  perm?: PermCheck
  /** POST /access/ticket: no auth needed, tokens refused. */
  noAuth?: boolean
  /** Guest-agent route: privileges differ between PVE 8 (VM.Monitor) and 9 (VM.GuestAgent.*). */
  agent?: boolean
}

// ---- building blocks ------------------------------------------------------------------------

const opt = <T extends ParamDef>(p: T): T => ({...p, optional: true})
const node: ParamDef = {type: 'string', format: 'pve-node'}
const vmid: ParamDef = {type: 'integer', format: 'pve-vmid', minimum: 100, maximum: 999_999_999}
const storage: ParamDef = {type: 'string', format: 'pve-storage-id'}
const bool: ParamDef = {type: 'boolean'}
const str: ParamDef = {type: 'string'}
const int: ParamDef = {type: 'integer'}
const configid: ParamDef = {type: 'string', format: 'pve-configid'}
const digest: ParamDef = {type: 'string', maxLength: 40, optional: true}
const range = (prefix: string, n: number) => Array.from({length: n + 1}, (_, i) => `${prefix}${i}`)
/** Disk keys a disk operation may name (a subset of PVE's enum: no efidisk/tpmstate/unused). */
const DISK_ENUM = [...range('ide', 3), ...range('scsi', 30), ...range('virtio', 15), ...range('sata', 5)]
const diskKey: ParamDef = {type: 'string', enum: DISK_ENUM}

/** Keys of a disk property string the lab understands (a subset of PVE's drive format). */
const DRIVE_KEYS: Record<string, SubKeyDef> = {
  file: {type: 'string', format: 'pve-volume-id-or-qm-path', defaultKey: true},
  'import-from': {type: 'string', format: 'pve-volume-id-or-absolute-path'},
  serial: {type: 'string', format: 'urlencoded'},
  size: {type: 'string', format: 'disk-size'},
  format: {type: 'string', enum: ['raw', 'qcow', 'qed', 'qcow2', 'vmdk', 'cloop']},
  media: {type: 'string', enum: ['cdrom', 'disk']},
  cache: {type: 'string', enum: ['none', 'writethrough', 'writeback', 'unsafe', 'directsync']},
  discard: {type: 'string', enum: ['ignore', 'on']},
  iothread: {type: 'boolean'},
  backup: {type: 'boolean'},
  ssd: {type: 'boolean'},
}
/** ide and sata have no iothread in PVE. */
const IDE_KEYS: Record<string, SubKeyDef> = Object.fromEntries(Object.entries(DRIVE_KEYS).filter(([k]) => k !== 'iothread'))
/** virtio has no ssd option in PVE. */
const VIRTIO_KEYS: Record<string, SubKeyDef> = Object.fromEntries(Object.entries(DRIVE_KEYS).filter(([k]) => k !== 'ssd'))

const NET_MODELS = ['e1000', 'e1000e', 'rtl8139', 'virtio', 'vmxnet3']
const NET_KEYS: Record<string, SubKeyDef> = {
  model: {type: 'string', enum: NET_MODELS, defaultKey: true},
  macaddr: {type: 'string', format: 'mac-addr'},
  bridge: {type: 'string', format: 'pve-bridge-id'},
  firewall: {type: 'boolean'},
  link_down: {type: 'boolean'},
  tag: {type: 'integer', minimum: 1, maximum: 4094},
  mtu: {type: 'integer', minimum: 1, maximum: 65520},
  // PVE accepts "<model>=<mac>" as a shorthand (virtio=AA:BB:…); each model is a key.
  ...Object.fromEntries(NET_MODELS.map((m) => [m, {type: 'string' as const, format: 'mac-addr'}])),
}

const IPCONFIG: ParamDef = {type: 'string', format: 'pve-qm-ipconfig', maxIndex: 31}

/** VM config parameters the lab accepts on create and on config POST/PUT. */
export const VM_CONFIG_PARAMS: Record<string, ParamDef> = {
  name: opt({type: 'string', format: 'dns-name'}),
  description: opt({type: 'string', maxLength: 8192}),
  tags: opt({type: 'string', format: 'pve-tag-list'}),
  cores: opt({type: 'integer', minimum: 1}),
  sockets: opt({type: 'integer', minimum: 1}),
  memory: opt({type: 'string', keys: {current: {type: 'integer', minimum: 16, defaultKey: true}}}),
  agent: opt({type: 'string', keys: {enabled: {type: 'boolean', defaultKey: true}, fstrim_cloned_disks: {type: 'boolean'}, type: {type: 'string', enum: ['virtio', 'isa']}}}),
  ostype: opt({type: 'string', enum: ['other', 'wxp', 'w2k', 'w2k3', 'w2k8', 'wvista', 'win7', 'win8', 'win10', 'win11', 'l24', 'l26', 'solaris']}),
  scsihw: opt({type: 'string', enum: ['lsi', 'lsi53c810', 'virtio-scsi-pci', 'virtio-scsi-single', 'megasas', 'pvscsi']}),
  bios: opt({type: 'string', enum: ['seabios', 'ovmf']}),
  boot: opt({type: 'string', format: 'pve-qm-boot'}),
  cpu: opt({type: 'string', format: 'pve-vm-cpu-conf'}),
  onboot: opt(bool),
  protection: opt(bool),
  serial: opt({type: 'string', pattern: '(/dev/.+|socket)', maxIndex: 3}),
  'net': opt({type: 'string', keys: NET_KEYS, maxIndex: 31}),
  virtio: opt({type: 'string', keys: VIRTIO_KEYS, maxIndex: 15}),
  scsi: opt({type: 'string', keys: DRIVE_KEYS, maxIndex: 30}),
  sata: opt({type: 'string', keys: IDE_KEYS, maxIndex: 5}),
  ide: opt({type: 'string', keys: IDE_KEYS, maxIndex: 3}),
  ciuser: opt(str),
  cipassword: opt(str),
  citype: opt({type: 'string', enum: ['configdrive2', 'nocloud', 'opennebula']}),
  ciupgrade: opt(bool),
  sshkeys: opt({type: 'string', format: 'urlencoded'}),
  ipconfig: opt(IPCONFIG),
  nameserver: opt({type: 'string', format: 'address-list'}),
  searchdomain: opt(str),
}

/** Numbered parameters (`virtio[n]` in the schema) and their names in the table above. */
export const NUMBERED_PARAMS = new Set(['net', 'virtio', 'scsi', 'sata', 'ide', 'ipconfig', 'serial'])

/** The schema name of a parameter: "virtio1" → "virtio[n]"; others unchanged. */
export function schemaParamName(name: string): string {
  const m = /^([a-z]+)(\d+)$/.exec(name)
  return m && NUMBERED_PARAMS.has(m[1]) ? `${m[1]}[n]` : name
}

const VM_PATH = '/nodes/{node}/qemu/{vmid}'
const AGENT = `${VM_PATH}/agent`
const STORE = '/nodes/{node}/storage/{storage}'
const CONFIG_PRIVS = ['VM.Config.Disk', 'VM.Config.CDROM', 'VM.Config.CPU', 'VM.Config.Memory', 'VM.Config.Network', 'VM.Config.HWType', 'VM.Config.Options', 'VM.Config.Cloudinit']
const AGENT_AUDIT = ['VM.GuestAgent.Audit', 'VM.GuestAgent.Unrestricted']

export const LAB_ROUTES: RouteDef[] = [
  {method: 'GET', path: '/version', handler: 'version', params: {}},
  {method: 'GET', path: '/nodes', handler: 'nodes', params: {}},
  {method: 'GET', path: '/nodes/{node}/status', handler: 'nodeStatus', params: {node}, perm: ['perm', '/nodes/{node}', ['Sys.Audit']]},
  {method: 'GET', path: '/cluster/resources', handler: 'clusterResources', params: {type: opt({type: 'string', enum: ['vm', 'storage', 'node', 'sdn']})}},
  {method: 'GET', path: '/cluster/nextid', handler: 'nextid', params: {vmid: opt(vmid)}},
  {method: 'POST', path: '/access/ticket', handler: 'ticket', noAuth: true, params: {username: {type: 'string', maxLength: 64}, password: str, realm: opt({type: 'string', format: 'pve-realm'}), 'new-format': opt(bool)}},

  {method: 'GET', path: '/nodes/{node}/qemu', handler: 'vmList', params: {node, full: opt(bool)}},
  {
    method: 'POST', path: '/nodes/{node}/qemu', handler: 'vmCreate',
    params: {node, vmid, ...VM_CONFIG_PARAMS, start: opt(bool), storage: opt(storage), pool: opt({type: 'string', format: 'pve-poolid'})},
  },
  {method: 'GET', path: VM_PATH, handler: 'vmIndex', params: {node, vmid}},
  {method: 'DELETE', path: VM_PATH, handler: 'vmDestroy', params: {node, vmid, purge: opt(bool), 'destroy-unreferenced-disks': opt(bool), skiplock: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.Allocate']]},
  {
    method: 'POST', path: `${VM_PATH}/clone`, handler: 'vmClone',
    params: {node, vmid, newid: vmid, name: opt({type: 'string', format: 'dns-name'}), description: opt(str), full: opt(bool), storage: opt(storage), target: opt(node), snapname: opt(configid), format: opt({type: 'string', enum: ['raw', 'qcow2', 'vmdk']}), pool: opt({type: 'string', format: 'pve-poolid'})},
  },
  {method: 'POST', path: `${VM_PATH}/template`, handler: 'vmTemplate', params: {node, vmid}, perm: ['perm', '/vms/{vmid}', ['VM.Allocate']]},
  {method: 'GET', path: `${VM_PATH}/config`, handler: 'vmConfigGet', params: {node, vmid, current: opt(bool), snapshot: opt(configid)}, perm: ['perm', '/vms/{vmid}', ['VM.Audit']]},
  {
    method: 'POST', path: `${VM_PATH}/config`, handler: 'vmConfigPost',
    params: {node, vmid, ...VM_CONFIG_PARAMS, digest, delete: opt({type: 'string', format: 'pve-configid-list'}), skiplock: opt(bool)},
    perm: ['perm', '/vms/{vmid}', CONFIG_PRIVS, 'any', 1],
  },
  {
    method: 'PUT', path: `${VM_PATH}/config`, handler: 'vmConfigPut',
    params: {node, vmid, ...VM_CONFIG_PARAMS, digest, delete: opt({type: 'string', format: 'pve-configid-list'}), skiplock: opt(bool)},
    perm: ['perm', '/vms/{vmid}', CONFIG_PRIVS, 'any', 1],
  },
  {method: 'GET', path: `${VM_PATH}/status/current`, handler: 'vmStatusCurrent', params: {node, vmid}, perm: ['perm', '/vms/{vmid}', ['VM.Audit']]},
  {method: 'POST', path: `${VM_PATH}/status/start`, handler: 'vmStart', params: {node, vmid, skiplock: opt(bool), timeout: opt({type: 'integer', minimum: 0, maximum: 86400})}, perm: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]},
  {method: 'POST', path: `${VM_PATH}/status/shutdown`, handler: 'vmShutdown', params: {node, vmid, forceStop: opt(bool), skiplock: opt(bool), timeout: opt({type: 'integer', minimum: 0}), keepActive: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]},
  {method: 'POST', path: `${VM_PATH}/status/stop`, handler: 'vmStop', params: {node, vmid, skiplock: opt(bool), timeout: opt({type: 'integer', minimum: 0}), keepActive: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.PowerMgmt']]},
  {method: 'PUT', path: `${VM_PATH}/resize`, handler: 'vmResize', params: {node, vmid, disk: diskKey, size: {type: 'string', pattern: '\\+?\\d+(\\.\\d+)?[KMGT]?'}, digest, skiplock: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.Config.Disk']]},
  {method: 'POST', path: `${VM_PATH}/move_disk`, handler: 'vmMoveDisk', params: {node, vmid, disk: diskKey, storage: opt(storage), format: opt({type: 'string', enum: ['raw', 'qcow2', 'vmdk']}), delete: opt(bool), digest}, perm: ['perm', '/vms/{vmid}', ['VM.Config.Disk']]},
  {method: 'GET', path: `${VM_PATH}/snapshot`, handler: 'snapList', params: {node, vmid}, perm: ['perm', '/vms/{vmid}', ['VM.Audit']]},
  {method: 'POST', path: `${VM_PATH}/snapshot`, handler: 'snapCreate', params: {node, vmid, snapname: configid, description: opt(str), vmstate: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.Snapshot']]},
  {method: 'DELETE', path: `${VM_PATH}/snapshot/{snapname}`, handler: 'snapDelete', params: {node, vmid, snapname: configid, force: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.Snapshot']]},
  {method: 'POST', path: `${VM_PATH}/snapshot/{snapname}/rollback`, handler: 'snapRollback', params: {node, vmid, snapname: configid, start: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.Snapshot', 'VM.Snapshot.Rollback'], 'any', 1]},
  {method: 'PUT', path: `${VM_PATH}/cloudinit`, handler: 'cloudinitUpdate', params: {node, vmid}, perm: ['perm', '/vms/{vmid}', ['VM.Config.Cloudinit']]},

  {method: 'POST', path: `${AGENT}/ping`, handler: 'agentPing', agent: true, params: {node, vmid}, perm: ['perm', '/vms/{vmid}', AGENT_AUDIT, 'any', 1]},
  {method: 'GET', path: `${AGENT}/network-get-interfaces`, handler: 'agentNetwork', agent: true, params: {node, vmid}, perm: ['perm', '/vms/{vmid}', AGENT_AUDIT, 'any', 1]},
  {method: 'GET', path: `${AGENT}/get-fsinfo`, handler: 'agentFsinfo', agent: true, params: {node, vmid}, perm: ['perm', '/vms/{vmid}', AGENT_AUDIT, 'any', 1]},
  {method: 'POST', path: `${AGENT}/exec`, handler: 'agentExec', agent: true, params: {node, vmid, command: {type: 'array'}, 'input-data': opt({type: 'string', maxLength: 65536})}, perm: ['perm', '/vms/{vmid}', ['VM.GuestAgent.Unrestricted']]},
  {method: 'GET', path: `${AGENT}/exec-status`, handler: 'agentExecStatus', agent: true, params: {node, vmid, pid: int}, perm: ['perm', '/vms/{vmid}', ['VM.GuestAgent.Unrestricted']]},
  {method: 'POST', path: `${AGENT}/file-write`, handler: 'agentFileWrite', agent: true, params: {node, vmid, file: str, content: {type: 'string', maxLength: 61440}, encode: opt(bool)}, perm: ['perm', '/vms/{vmid}', ['VM.GuestAgent.FileWrite', 'VM.GuestAgent.Unrestricted'], 'any', 1]},
  {method: 'GET', path: `${AGENT}/file-read`, handler: 'agentFileRead', agent: true, params: {node, vmid, file: str}, perm: ['perm', '/vms/{vmid}', ['VM.GuestAgent.FileRead', 'VM.GuestAgent.Unrestricted'], 'any', 1]},

  {method: 'GET', path: '/nodes/{node}/storage', handler: 'storageIndex', params: {node, content: opt({type: 'string', format: 'pve-storage-content-list'}), storage: opt(storage), enabled: opt(bool)}},
  {method: 'GET', path: `${STORE}/status`, handler: 'storageStatus', params: {node, storage}, perm: ['perm', '/storage/{storage}', ['Datastore.Audit', 'Datastore.AllocateSpace'], 'any', 1]},
  {method: 'GET', path: `${STORE}/content`, handler: 'storageContent', params: {node, storage, content: opt({type: 'string', format: 'pve-storage-content'}), vmid: opt(vmid)}, perm: ['perm', '/storage/{storage}', ['Datastore.Audit', 'Datastore.AllocateSpace'], 'any', 1]},
  {method: 'DELETE', path: `${STORE}/content/{volume}`, handler: 'storageDelete', params: {node, storage: opt(storage), volume: str, delay: opt({type: 'integer', minimum: 1, maximum: 30})}},
  {
    method: 'POST', path: `${STORE}/upload`, handler: 'storageUpload',
    params: {node, storage, content: {type: 'string', format: 'pve-storage-content', enum: ['iso', 'vztmpl', 'import']}, filename: {type: 'string', maxLength: 255}, checksum: opt({type: 'string', requires: 'checksum-algorithm'}), 'checksum-algorithm': opt({type: 'string', enum: ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512'], requires: 'checksum'})},
    perm: ['perm', '/storage/{storage}', ['Datastore.AllocateTemplate']],
  },
  {
    method: 'POST', path: `${STORE}/download-url`, handler: 'storageDownload',
    params: {node, storage, content: {type: 'string', format: 'pve-storage-content', enum: ['iso', 'vztmpl', 'import']}, filename: {type: 'string', maxLength: 255}, url: {type: 'string', pattern: 'https?://.*'}, checksum: opt({type: 'string', requires: 'checksum-algorithm'}), 'checksum-algorithm': opt({type: 'string', enum: ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512'], requires: 'checksum'}), 'verify-certificates': opt(bool)},
  },
  {method: 'GET', path: '/nodes/{node}/tasks', handler: 'taskList', params: {node, limit: opt({type: 'integer', minimum: 0}), start: opt({type: 'integer', minimum: 0}), vmid: opt(vmid), errors: opt(bool), typefilter: opt({type: 'string'}), userfilter: opt({type: 'string'}), statusfilter: opt({type: 'string', format: 'pve-task-status-type-list'}), since: opt({type: 'integer'}), until: opt({type: 'integer'}), source: opt({type: 'string', enum: ['archive', 'active', 'all']})}},
  {method: 'GET', path: '/nodes/{node}/tasks/{upid}/status', handler: 'taskStatus', params: {node, upid: str}},
  {method: 'GET', path: '/nodes/{node}/tasks/{upid}/log', handler: 'taskLog', params: {node, upid: str, start: opt({type: 'integer', minimum: 0}), limit: opt({type: 'integer', minimum: 0})}},
]

/** Disk-like config keys (volumes): virtioN, scsiN, sataN, ideN. */
export const DISK_KEY_RE = /^(virtio|scsi|sata|ide)(\d+)$/
