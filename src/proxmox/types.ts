/**
 * The Proxmox VE operations pgi uses, as an interface. `src/proxmox/client.ts` implements it over
 * the real API (src/proxmox/client.ts over pinned TLS); services (deploy, status, rollout) depend only on this
 * interface so they can be tested against the lab or a fake.
 *
 * Conventions: every long action waits for its task and resolves when the task ended OK
 * (throws PveTaskError otherwise); `node` is the PVE node name; config params are the PVE names
 * (virtio0, ide2, ipconfig0, …) with PVE value syntax; booleans are sent as 1/0 by the client.
 */

export type PveParams = Record<string, string | number | boolean | undefined>

export interface PveVersion {
  version: string
  release: string
  repoid: string
}

export interface PveNodeInfo {
  node: string
  status: 'online' | 'offline' | 'unknown'
  uptime?: number
}

export interface PveResource {
  id: string
  type: string
  node?: string
  vmid?: number
  name?: string
  status?: string
  template?: number
  tags?: string
  uptime?: number
  maxmem?: number
  mem?: number
  storage?: string
}

/** A VM config as PVE returns it (`GET …/config`), with its digest for compare-and-swap. */
export interface PveVmConfig {
  digest: string
  [key: string]: string | number | undefined
}

export interface PveVmStatus {
  vmid: number
  status: 'running' | 'stopped' | 'paused' | string
  qmpstatus?: string
  uptime?: number
  lock?: string
  name?: string
  tags?: string
  agent?: number
}

export interface PveStorageContent {
  volid: string
  format: string
  size: number
  content: string
  ctime?: number
}

export interface PveTaskStatus {
  upid: string
  node: string
  status: 'running' | 'stopped'
  exitstatus?: string
  type: string
  id?: string
  starttime: number
}

/** One row of `GET /nodes/{node}/tasks`. */
export interface PveTaskSummary {
  upid: string
  node: string
  type: string
  id?: string
  user: string
  starttime: number
  endtime?: number
  status?: string
}

export interface PveCloneOptions {
  name?: string
  /** Full clone (copies disks) rather than a linked clone of a template. */
  full?: boolean
  /** Target storage of a full clone. */
  storage?: string
  /** Target node (clusters). */
  target?: string
  description?: string
}

/** How a guest command is run (PveApi.agentExec). */
export interface AgentExecOptions {
  /** Given to the command on its standard input (ASCII; the guest agent takes ~60 KB at most). */
  inputData?: string
  /** Default 5 min. */
  timeoutMs?: number
  /** The command may safely run twice: its start is sent again after a lost answer. */
  idempotent?: boolean
  /**
   * Longest pause between two exec-status polls (default: the client's poll.maxMs, 5 s). Commands
   * someone waits on at a terminal ask for less, so their end is seen within that time.
   */
  pollMaxMs?: number
}

export interface AgentExecResult {
  exitcode: number
  stdout: string
  stderr: string
  /** True when the guest truncated stdout/stderr. */
  truncated: boolean
}

/**
 * The guest agent's answers, as qemu-guest-agent sends them and PVE passes them on: the one
 * definition for the Proxmox client, the local QEMU agent client (src/qemu/qga.ts) and the lab.
 */
/** `guest-network-get-interfaces` result item. */
export interface AgentNetworkInterface {
  name: string
  'hardware-address'?: string
  'ip-addresses'?: {'ip-address': string; 'ip-address-type': 'ipv4' | 'ipv6'; prefix: number}[]
  statistics?: Record<string, number>
}

/** `guest-get-fsinfo` result item. */
export interface AgentFsInfo {
  name: string
  mountpoint: string
  type: string
  'total-bytes'?: number
  'used-bytes'?: number
  disk: {serial?: string; 'bus-type': string; bus: number; target: number; unit: number; dev?: string; 'pci-controller'?: unknown}[]
}

/**
 * `guest-exec-status` result. qemu-guest-agent sends out-data / err-data base64-encoded; PVE's
 * `agent/exec-status` (and so the lab's backends) hands them on decoded.
 */
export interface AgentExecStatus {
  exited: boolean
  exitcode?: number
  signal?: number
  'out-data'?: string
  'err-data'?: string
  'out-truncated'?: boolean
  'err-truncated'?: boolean
}

export interface WaitOptions {
  /** Overall timeout for this wait; defaults depend on the task type. */
  timeoutMs?: number
  signal?: AbortSignal
  /** Called with a short progress text while waiting. */
  onProgress?: (text: string) => void
}

export interface PveApi {
  /** Name of the hypervisor in the inventory (for error locations). */
  readonly hypervisor: string

  version(): Promise<PveVersion>
  nodes(): Promise<PveNodeInfo[]>
  clusterResources(type?: 'vm' | 'storage' | 'node'): Promise<PveResource[]>
  nextVmid(): Promise<number>

  vmConfig(node: string, vmid: number): Promise<PveVmConfig | undefined>
  vmStatus(node: string, vmid: number): Promise<PveVmStatus | undefined>
  createVm(node: string, vmid: number, params: PveParams, wait?: WaitOptions): Promise<void>
  /** Clones `vmid` to `newid` (task qmclone, long for full clones). */
  cloneVm(node: string, vmid: number, newid: number, opts?: PveCloneOptions, wait?: WaitOptions): Promise<void>
  convertToTemplate(node: string, vmid: number, wait?: WaitOptions): Promise<void>
  /** Sync config update (PUT) with optional digest compare-and-swap. */
  updateVmConfig(node: string, vmid: number, params: PveParams & {digest?: string; delete?: string}, wait?: WaitOptions): Promise<void>
  startVm(node: string, vmid: number, wait?: WaitOptions): Promise<void>
  shutdownVm(node: string, vmid: number, opts?: WaitOptions & {forceStopAfterS?: number}): Promise<void>
  stopVm(node: string, vmid: number, wait?: WaitOptions): Promise<void>
  deleteVm(node: string, vmid: number, opts: {purge: boolean; destroyUnreferencedDisks: boolean}, wait?: WaitOptions): Promise<void>
  resizeDisk(node: string, vmid: number, disk: string, size: string, wait?: WaitOptions): Promise<void>
  snapshot(node: string, vmid: number, name: string, description?: string, wait?: WaitOptions): Promise<void>
  rollbackSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void>
  deleteSnapshot(node: string, vmid: number, name: string, wait?: WaitOptions): Promise<void>
  listSnapshots(node: string, vmid: number): Promise<{name: string; snaptime?: number; description?: string}[]>
  regenerateCloudinit(node: string, vmid: number): Promise<void>

  agentPing(node: string, vmid: number): Promise<boolean>
  agentNetworkInterfaces(node: string, vmid: number): Promise<AgentNetworkInterface[]>
  agentFsInfo(node: string, vmid: number): Promise<unknown[]>
  /**
   * Runs a command in the guest (argv, never a shell string with secrets); stdin from inputData.
   * `idempotent`: the command may safely run twice (a read-only check, a convergent configuration),
   * so its start is sent again after a server fault or a lost answer; otherwise it never is.
   */
  agentExec(node: string, vmid: number, command: string[], opts?: AgentExecOptions): Promise<AgentExecResult>
  agentFileWrite(node: string, vmid: number, file: string, content: string): Promise<void>
  agentFileRead(node: string, vmid: number, file: string): Promise<string>

  storageContent(node: string, storage: string, content?: string): Promise<PveStorageContent[]>
  storageStatus(node: string, storage: string): Promise<{total: number; used: number; avail: number; content: string; type: string}>
  /**
   * Multipart upload of a local file (content type "import" for disk images), checksum verified by
   * PVE; `bwlimitKiB` caps the upload rate (KiB/s, as PVE's own bwlimit settings).
   */
  uploadFile(node: string, storage: string, file: string, opts: {filename: string; content: 'import' | 'iso' | 'vztmpl'; sha256?: string; onProgress?: (sent: number, total: number) => void; bwlimitKiB?: number}, wait?: WaitOptions): Promise<void>
  downloadUrl(node: string, storage: string, opts: {url: string; filename: string; content: 'import' | 'iso' | 'vztmpl'; sha256: string}, wait?: WaitOptions): Promise<void>

  waitTask(node: string, upid: string, wait?: WaitOptions): Promise<PveTaskStatus>
  taskLog(node: string, upid: string, opts?: {start?: number; limit?: number}): Promise<string[]>
  /** Recent tasks of a node, newest first (filter by vmid / task type / start time in s). */
  listTasks(node: string, filter?: {vmid?: number; type?: string; since?: number; limit?: number}): Promise<PveTaskSummary[]>
}
