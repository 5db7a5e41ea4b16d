/**
 * The lab's routes: every API path and method the lab serves, and the handler that serves it.
 * Everything else about an endpoint comes from the PVE API schema of the release the lab plays
 * (src/lab/pve-schema.ts): the parameters it accepts and how they are checked, the privilege
 * check run before the handler, and the shape of its answer. A route whose method is not in that
 * release's schema answers 501, as that PVE release would.
 */

export interface RouteDef {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  /** Schema path with {param} placeholders. */
  path: string
  /** Handler id (route modules register handlers under these ids). */
  handler: string
  /** POST /access/ticket: no auth needed, tokens refused (the schema's `allowtoken: 0`). */
  noAuth?: boolean
}

const VM = '/nodes/{node}/qemu/{vmid}'
const AGENT = `${VM}/agent`
const STORE = '/nodes/{node}/storage/{storage}'

const r = (method: RouteDef['method'], path: string, handler: string, extra: Partial<RouteDef> = {}): RouteDef => ({method, path, handler, ...extra})

export const LAB_ROUTES: RouteDef[] = [
  r('GET', '/version', 'version'),
  r('GET', '/nodes', 'nodes'),
  r('GET', '/nodes/{node}', 'nodeIndex'),
  r('GET', '/nodes/{node}/status', 'nodeStatus'),
  r('GET', '/cluster/resources', 'clusterResources'),
  r('GET', '/cluster/nextid', 'nextid'),
  r('GET', '/cluster/status', 'clusterStatus'),
  r('POST', '/access/ticket', 'ticket', {noAuth: true}),
  r('GET', '/access/permissions', 'permissions'),
  r('GET', '/storage', 'storageConfigList'),
  r('GET', '/storage/{storage}', 'storageConfigGet'),
  r('GET', '/pools', 'poolList'),
  r('POST', '/pools', 'poolCreate'),
  r('GET', '/pools/{poolid}', 'poolGet'),
  r('DELETE', '/pools/{poolid}', 'poolDelete'),

  r('GET', '/nodes/{node}/qemu', 'vmList'),
  r('POST', '/nodes/{node}/qemu', 'vmCreate'),
  r('GET', VM, 'vmIndex'),
  r('DELETE', VM, 'vmDestroy'),
  r('POST', `${VM}/clone`, 'vmClone'),
  r('POST', `${VM}/template`, 'vmTemplate'),
  r('GET', `${VM}/config`, 'vmConfigGet'),
  r('POST', `${VM}/config`, 'vmConfigPost'),
  r('PUT', `${VM}/config`, 'vmConfigPut'),
  r('GET', `${VM}/pending`, 'vmPending'),
  r('PUT', `${VM}/unlink`, 'vmUnlink'),
  r('GET', `${VM}/status`, 'vmStatusIndex'),
  r('GET', `${VM}/status/current`, 'vmStatusCurrent'),
  r('POST', `${VM}/status/start`, 'vmStart'),
  r('POST', `${VM}/status/shutdown`, 'vmShutdown'),
  r('POST', `${VM}/status/stop`, 'vmStop'),
  r('POST', `${VM}/status/reboot`, 'vmReboot'),
  r('POST', `${VM}/status/reset`, 'vmReset'),
  r('POST', `${VM}/status/suspend`, 'vmSuspend'),
  r('POST', `${VM}/status/resume`, 'vmResume'),
  r('PUT', `${VM}/resize`, 'vmResize'),
  r('POST', `${VM}/move_disk`, 'vmMoveDisk'),
  r('GET', `${VM}/snapshot`, 'snapList'),
  r('POST', `${VM}/snapshot`, 'snapCreate'),
  r('GET', `${VM}/snapshot/{snapname}`, 'snapIndex'),
  r('GET', `${VM}/snapshot/{snapname}/config`, 'snapConfigGet'),
  r('DELETE', `${VM}/snapshot/{snapname}`, 'snapDelete'),
  r('POST', `${VM}/snapshot/{snapname}/rollback`, 'snapRollback'),
  r('GET', `${VM}/cloudinit`, 'cloudinitPending'),
  r('PUT', `${VM}/cloudinit`, 'cloudinitUpdate'),

  r('GET', AGENT, 'agentIndex'),
  r('POST', `${AGENT}/ping`, 'agentPing'),
  r('GET', `${AGENT}/info`, 'agentInfo'),
  r('GET', `${AGENT}/get-osinfo`, 'agentOsinfo'),
  r('GET', `${AGENT}/get-host-name`, 'agentHostName'),
  r('GET', `${AGENT}/network-get-interfaces`, 'agentNetwork'),
  r('GET', `${AGENT}/get-fsinfo`, 'agentFsinfo'),
  r('POST', `${AGENT}/exec`, 'agentExec'),
  r('GET', `${AGENT}/exec-status`, 'agentExecStatus'),
  r('POST', `${AGENT}/file-write`, 'agentFileWrite'),
  r('GET', `${AGENT}/file-read`, 'agentFileRead'),

  r('GET', '/nodes/{node}/storage', 'storageIndex'),
  r('GET', STORE, 'storageDirIndex'),
  r('GET', `${STORE}/status`, 'storageStatus'),
  r('GET', `${STORE}/content`, 'storageContent'),
  r('GET', `${STORE}/content/{volume}`, 'storageVolumeGet'),
  r('DELETE', `${STORE}/content/{volume}`, 'storageDelete'),
  r('POST', `${STORE}/upload`, 'storageUpload'),
  r('POST', `${STORE}/download-url`, 'storageDownload'),
  r('GET', '/nodes/{node}/tasks', 'taskList'),
  r('GET', '/nodes/{node}/tasks/{upid}', 'taskIndex'),
  r('GET', '/nodes/{node}/tasks/{upid}/status', 'taskStatus'),
  r('GET', '/nodes/{node}/tasks/{upid}/log', 'taskLog'),
]

/** Disk config keys that hold a volume: virtioN, scsiN, sataN, ideN, efidisk0, tpmstate0. */
export const DISK_KEY_RE = /^(virtio|scsi|sata|ide)(\d+)$|^(efidisk|tpmstate)0$/

/** Drive keys of a bus (not efidisk0/tpmstate0). */
export const BUS_DISK_KEY_RE = /^(virtio|scsi|sata|ide)(\d+)$/
