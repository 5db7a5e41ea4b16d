import type {AgentExecStatus, AgentFsInfo, AgentNetworkInterface} from '../proxmox/types.js'
import type {DiskAio, DiskCache} from '../qemu/vm.js'

/**
 * The interface between the lab's Proxmox-VE-compatible API layer (src/lab/server.ts and its
 * route modules) and a VM backend: `simulated` (src/lab/simulated-backend.ts, no VMs) or `qemu`
 * (src/lab/qemu-backend.ts, real QEMU processes).
 *
 * Division of work — the API layer owns everything that is "PVE": parsing and validating
 * parameters and property strings, the VM config (it is the source of truth for every key, incl.
 * `lock`, `digest`, `tags`, cloud-init keys, `template`, `snapshots` tree), VMID uniqueness, locks,
 * tasks/UPIDs/task logs, permissions, fault injection and the request log. It calls a backend only
 * for what touches "the machine": volumes on storages, VM processes, cloud-init media and the guest
 * agent. A backend never sees a raw PVE parameter string, never checks permissions, never decides
 * whether an operation is allowed (the API layer already checked locks, state and config), and keeps
 * no VM config of its own beyond what it needs to run the process (it receives a full `VmSpec`
 * each time it must act).
 *
 * Conventions
 * - Sizes are bytes (numbers; the largest volumes are far below 2^53).
 * - A volume id (`volid`) follows PVE's directory-storage naming: images are
 *   `<storage>:<vmid>/<file>` (`local-vm:100/vm-100-disk-0.qcow2`, file at `<path>/images/100/…`),
 *   other content `<storage>:<content>/<file>` (`local:import/x.qcow2`, file at `<path>/import/x.qcow2`;
 *   iso → `<path>/template/iso/`, snippets → `<path>/snippets/`, backup → `<path>/dump/`).
 *   Image file names are chosen by the backend: `vm-<vmid>-disk-<n>.<fmt>` (n = lowest free index
 *   on that storage for that vmid), `vm-<vmid>-cloudinit.qcow2`, and `base-<vmid>-disk-<n>.<fmt>`
 *   after `convertToTemplate`. A linked clone's volid names its base: `local-vm:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2`.
 * - Every long method receives a `TaskContext`: write human log lines with `ctx.log()` (they become
 *   the PVE task log, read back by `GET …/tasks/{upid}/log`), honour `ctx.signal` where you can, and
 *   throw to fail the task: the thrown Error's `message` becomes the task `exitstatus` verbatim, so
 *   write it as PVE would (e.g. `unable to find volume 'local:import/x.qcow2'`).
 * - Methods without a TaskContext are called while serving an HTTP request synchronously; they must
 *   answer within a few hundred ms (the agent methods excepted: see their docs).
 * - Throw `BackendError` (below) for expected failures that carry a PVE message; any other Error
 *   is reported the same way but also logged as a lab defect in the daemon log.
 * - A backend is used from ONE process (the lab daemon) and may keep state in memory; anything that
 *   must survive a daemon restart lives under `BackendInit.dir` (inside the lab dir). Nothing may be
 *   written outside the lab dir, and `close()` must end every process the backend started.
 */

/** A PVE node served by the lab (one lab node = one hypervisor of the generated inventory). */
export interface LabNodeDef {
  /** PVE node name, e.g. "lab1". */
  name: string
  /** Index of this node, 0-based (for port/address allocation schemes). */
  index: number
}

/** Content types a lab storage can hold (the PVE names). */
export type StorageContent = 'images' | 'rootdir' | 'iso' | 'import' | 'snippets' | 'backup' | 'vztmpl'

/** A directory-backed storage, defined by the API layer; the same ids exist on every node. */
export interface StorageDef {
  /** Storage id, e.g. "local" or "local-vm". */
  id: string
  /** PVE type; the lab only has directory storages. */
  type: 'dir'
  content: StorageContent[]
  /** Absolute directory for this storage ON `node` (each node has its own copy). */
  path(node: string): string
  /** Capacity reported by `storage status` (bytes). The backend decides the `used` figure. */
  totalBytes: number
}

export interface BackendInit {
  /** The backend's own state directory (inside the lab dir), created by the caller. */
  dir: string
  nodes: LabNodeDef[]
  storages: StorageDef[]
  /** PVE version the lab pretends to be ("8.4" or "9.1"). */
  pveVersion: string
  /** Daemon log (never pass secrets). */
  log(message: string): void
}

/** Given to every long operation; it runs inside a PVE task. */
export interface TaskContext {
  /** The UPID of the task this operation runs in. */
  upid: string
  /** Append a line to the task log. */
  log(line: string): void
  /** Aborted when the task is cancelled or the daemon stops. */
  signal: AbortSignal
}

/** Expected failure with a PVE-style message (becomes the HTTP 500 reason or the task exitstatus). */
export class BackendError extends Error {
  constructor(message: string, readonly status: number = 500) {
    super(message)
    this.name = 'BackendError'
  }
}

/** The one volume the backend allocates per disk key at create/clone/move time. */
export interface DiskAllocation {
  /** Storage id to allocate on (has content `images`). */
  storage: string
  /** Image format; qemu backend supports qcow2 and raw, simulated records it. */
  format: 'qcow2' | 'raw'
  /**
   * Size of a new empty disk. Exactly one of `sizeBytes` / `importFrom` is set.
   */
  sizeBytes?: number
  /**
   * Import source: a volid of content `import` (or `iso`) on a lab storage, already checked to
   * exist by the API layer, e.g. `local:import/pgi-2026.11.0.qcow2`. The backend converts it into a
   * new volume (qemu: `qemu-img convert -O <format>`); the new volume's size is the source's virtual
   * size. PVE refuses sources with a backing file: so must the backend (BackendError
   * `refusing to import image with backing file`).
   */
  importFrom?: string
}

export interface VolumeInfo {
  volid: string
  /** PVE content type of the volume: images, import, iso, snippets, backup… */
  content: StorageContent
  format: string
  /** Virtual size for images; file size otherwise. */
  size: number
  /** Allocated bytes on the host (≤ size for sparse/qcow2). */
  used?: number
  /** Owner VMID for images (`vm-<vmid>-…`, `base-<vmid>-…`). */
  vmid?: number
  /** Unix seconds. */
  ctime: number
}

/** One disk as the VM sees it. */
export interface VmDisk {
  /** Config key: virtio0, virtio1, scsi0, ide2, sata0, efidisk0… */
  key: string
  volid: string
  /** Media: `disk`, or `cdrom` (then volid may be a cloud-init volume or an ISO). */
  media: 'disk' | 'cdrom'
  /** `serial=` option (the guest sees /dev/disk/by-id/virtio-<serial>). */
  serial?: string
  /** `cache=` and `aio=` options when the config sets them (else PVE's defaults: src/lab/pve-drive.ts). */
  cache?: DiskCache
  aio?: DiskAio
  /** True for the cloud-init drive (`<storage>:cloudinit`). */
  cloudinit?: boolean
  /**
   * True for `efidisk0` (OVMF variables) and `tpmstate0` (TPM state): volumes of the VM that
   * snapshots, clones and templates carry, but that the guest does not see as disks.
   */
  firmware?: boolean
}

export interface VmNic {
  /** net0, net1… */
  key: string
  model: string
  macaddr: string
  bridge?: string
  /** IPv4 settings from `ipconfig<n>` (cloud-init), when set. */
  ipv4?: {address: string; prefix: number; gateway?: string} | 'dhcp'
}

/** Cloud-init data, already parsed by the API layer. `cipassword` arrives as the stored hash. */
export interface CloudInitSpec {
  /** Hostname: the VM `name`. */
  hostname: string
  user?: string
  /** SHA-512 crypt hash (`$6$…`) of cipassword, as PVE stores it; never the clear text. */
  passwordHash?: string
  /** Decoded public keys, one per entry. */
  sshKeys: string[]
  nameservers: string[]
  searchdomain?: string
  /** Per NIC key (net0…): from ipconfig<n>. */
  ipconfig: Record<string, {ip?: string; gw?: string; ip6?: string; gw6?: string}>
  /** `citype` (nocloud default on Linux). */
  type: 'nocloud' | 'configdrive2'
  /** `ciupgrade` (PVE default 1): user-data asks for a package upgrade at first boot. */
  upgrade: boolean
}

/** Everything needed to run a VM: the API layer builds it from the config each time. */
export interface VmSpec {
  node: string
  vmid: number
  name: string
  cores: number
  sockets: number
  memoryMb: number
  /** Guest agent enabled (`agent: 1`). */
  agent: boolean
  disks: VmDisk[]
  nics: VmNic[]
  /** Boot order: disk keys (from `boot: order=virtio0;net0`). */
  bootOrder: string[]
  cloudInit?: CloudInitSpec
  /** Image version recorded in the VM (from its `description`/`tags`, e.g. "2026.11.0"), for models. */
  imageVersion?: string
  /** Whole config as key → raw string, read-only, for backends that want more detail. */
  rawConfig: Readonly<Record<string, string>>
}

export interface VmRuntimeStatus {
  running: boolean
  /** Host pid of the VM process (qemu), or a stable fake pid (simulated). */
  pid?: number
  /** Seconds since start (0 when stopped). */
  uptime: number
  /** QMP status: running, paused, shutdown, prelaunch… (`stopped` when not running). */
  qmpstatus: string
  /** Fraction of a core, 0..n. */
  cpu: number
  /** Bytes of guest memory in use. */
  mem: number
}

/** How to reach a VM from the host (lab status). */
export interface VmAccess {
  /** Host-side endpoints, loopback only: e.g. {ssh: "127.0.0.1:42022", web: "127.0.0.1:42080"}. */
  endpoints: Record<string, string>
  /** The guest's own IPv4 addresses as the lab configured them (cloud-init ipconfig), when known. */
  addresses?: string[]
  /** Free text, e.g. "user-mode networking, guest address 10.0.2.15". */
  note?: string
}

// The guest agent's answers: one definition, shared with the Proxmox client (src/proxmox/types.ts).
export type {AgentExecStatus, AgentFsInfo, AgentNetworkInterface} from '../proxmox/types.js'

/**
 * Guest-agent errors: throw `BackendError` with the PVE texts:
 * - agent not answering: `QEMU guest agent is not running` (status 500);
 * - agent timed out: `VM <vmid> qmp command 'guest-<cmd>' failed - got timeout`;
 * - VM not running: the API layer checks that before calling (`VM <vmid> is not running`).
 * Agent calls may take up to `timeoutMs` (the API layer passes 10 000 for ping/get-*, 30 000 for
 * file-read/file-write); they must not block longer.
 */
export interface GuestAgent {
  ping(node: string, vmid: number, timeoutMs: number): Promise<void>
  networkGetInterfaces(node: string, vmid: number, timeoutMs: number): Promise<AgentNetworkInterface[]>
  getFsinfo(node: string, vmid: number, timeoutMs: number): Promise<AgentFsInfo[]>
  /**
   * Start `command[0]` with args `command.slice(1)` in the guest; `inputData` is written to its
   * stdin (then stdin is closed). Returns the guest pid immediately (the command runs on).
   */
  exec(node: string, vmid: number, command: string[], inputData: string | undefined, timeoutMs: number): Promise<{pid: number}>
  execStatus(node: string, vmid: number, pid: number, timeoutMs: number): Promise<AgentExecStatus>
  /** Write `content` (raw bytes, already decoded by the API layer) to `file` in the guest. */
  fileWrite(node: string, vmid: number, file: string, content: Buffer, timeoutMs: number): Promise<void>
  /**
   * Read `file` from the guest: from byte `offset` (default 0), at most `count` bytes (default and
   * at most 16 MiB, PVE's limit); `truncated` when the read did not reach the end of the file.
   */
  fileRead(node: string, vmid: number, file: string, timeoutMs: number, range?: {offset?: number; count?: number}): Promise<{content: Buffer; truncated: boolean}>
  /** `guest-info`: the agent's version and its commands. */
  info(node: string, vmid: number, timeoutMs: number): Promise<AgentInfo>
  /** `guest-get-osinfo`: the guest's operating system (os-release and uname). */
  getOsinfo(node: string, vmid: number, timeoutMs: number): Promise<AgentOsInfo>
  /** `guest-get-host-name`. */
  getHostName(node: string, vmid: number, timeoutMs: number): Promise<{'host-name': string}>
}

/** `guest-info` result, as qemu-guest-agent returns it. */
export interface AgentInfo {
  version: string
  supported_commands: {name: string; enabled: boolean; 'success-response': boolean}[]
}

/** `guest-get-osinfo` result, as qemu-guest-agent returns it on Linux. */
export interface AgentOsInfo {
  id?: string
  name?: string
  'pretty-name'?: string
  version?: string
  'version-id'?: string
  'kernel-release'?: string
  'kernel-version'?: string
  machine?: string
}

export interface VmBackend {
  /** "simulated" or "qemu". */
  readonly kind: string

  /** Called once, before any other method. May start helpers; must not start VMs. */
  init(init: BackendInit): Promise<void>
  /**
   * Stop every VM and helper process this backend started (hard stop after a short grace period),
   * flush state; called by `pgi lab stop` (through the daemon's shutdown) and by tests.
   */
  close(): Promise<void>

  // ---- storage -------------------------------------------------------------------------------

  /** Volumes on one storage of one node, optionally only one content type. */
  listVolumes(node: string, storage: string, content?: StorageContent): Promise<VolumeInfo[]>
  /** `used` bytes of a storage on a node (for `storage status` and cluster/resources). */
  storageUsage(node: string, storage: string): Promise<{used: number}>
  /**
   * Take an uploaded or downloaded file (`srcPath`, a temp file inside the lab dir whose checksum
   * the API layer already verified) into `storage` as `<content>/<filename>` and return its volid.
   * The backend moves (renames) or copies it and removes `srcPath`. Replaces an existing file of the
   * same name (PVE does). Runs inside the upload/download task.
   */
  importFile(node: string, storage: string, content: StorageContent, filename: string, srcPath: string, ctx: TaskContext): Promise<VolumeInfo>
  /** Delete a volume (any content). Throws BackendError `volume '<volid>' does not exist` if absent. */
  deleteVolume(node: string, volid: string, ctx?: TaskContext): Promise<void>
  /** Info on one volume, undefined when it does not exist. */
  volumeInfo(node: string, volid: string): Promise<VolumeInfo | undefined>

  // ---- disks -----------------------------------------------------------------------------------

  /**
   * Allocate one new disk volume for `vmid` (empty, or imported from `alloc.importFrom`) and
   * return it (its `size` is the resulting virtual size). Used by create, by adding a disk via
   * config POST/PUT (`virtio1: local-vm:32`), and by clone/move via `copyDisk`.
   */
  allocateDisk(node: string, vmid: number, alloc: DiskAllocation, ctx: TaskContext): Promise<VolumeInfo>
  /** Create the cloud-init volume `<storage>:vm-<vmid>-cloudinit.qcow2` (empty; content comes with `regenerateCloudInit`). */
  allocateCloudInit(node: string, vmid: number, storage: string, ctx?: TaskContext): Promise<VolumeInfo>
  /**
   * Write the cloud-init media for `spec.cloudInit` into the VM's cloud-init volume (qemu: NoCloud
   * seed with meta-data/user-data/network-config, label `cidata`). Called at `PUT …/cloudinit`, before
   * each start when the VM has a cloud-init drive, and after config changes of ci* keys. Synchronous.
   */
  regenerateCloudInit(spec: VmSpec): Promise<void>
  /**
   * Copy `srcVolid` to a new volume of `newVmid` on `targetStorage` (full clone, or move_disk).
   * `snapname`: copy the disk state at that snapshot instead of the current one.
   */
  copyDisk(node: string, srcVolid: string, newVmid: number, targetStorage: string, format: 'qcow2' | 'raw', ctx: TaskContext, snapname?: string): Promise<VolumeInfo>
  /**
   * Linked clone: a new qcow2 volume for `newVmid` on the same storage whose backing file is the
   * template's `base-…` volume. Only called for disks of templates.
   */
  linkDisk(node: string, baseVolid: string, newVmid: number, ctx: TaskContext): Promise<VolumeInfo>
  /** Grow a volume to `newSizeBytes` (never shrinks: the API layer refuses that first). Works while running (qemu: QMP block_resize). */
  resizeDisk(spec: VmSpec, diskKey: string, newSizeBytes: number, ctx: TaskContext): Promise<void>
  /**
   * Turn the (stopped) VM's image volumes into base volumes; returns old volid → new volid
   * (`vm-100-disk-0.qcow2` → `base-100-disk-0.qcow2`). The API layer rewrites the config.
   */
  convertToTemplate(spec: VmSpec, ctx: TaskContext): Promise<Record<string, string>>

  // ---- VM lifecycle ------------------------------------------------------------------------------

  /**
   * Start the VM described by `spec` (which the API layer built from the config; cloud-init already
   * regenerated). Resolve once the VM process runs (not when the guest has booted). Throw
   * BackendError on failure (`start failed: …`).
   */
  start(spec: VmSpec, ctx: TaskContext): Promise<void>
  /**
   * Clean shutdown (ACPI powerdown, or agent `guest-shutdown` when spec.agent); resolve when the
   * process has exited. If it has not exited after `timeoutS`: when `forceStop` kill it and resolve,
   * otherwise throw BackendError `VM quit/powerdown failed - got timeout`.
   */
  shutdown(spec: VmSpec, opts: {timeoutS: number; forceStop: boolean}, ctx: TaskContext): Promise<void>
  /** Hard stop (QMP quit / kill). Resolves when the process is gone. Idempotent. */
  stop(node: string, vmid: number, ctx: TaskContext): Promise<void>
  /** Pause the running VM's vCPUs (QMP `stop`; qmpstatus `paused`). */
  pause(node: string, vmid: number): Promise<void>
  /** Resume a paused VM (QMP `cont`). */
  resume(node: string, vmid: number): Promise<void>

  // ---- hot-plug ------------------------------------------------------------------------------------

  /**
   * Attach `disk` (a volume of this node, not a CD-ROM) to the RUNNING VM `spec` describes, as
   * PVE's vm_deviceplug does when `hotplug` includes `disk`: the guest sees a new disk (qemu:
   * QMP blockdev-add + device_add of a virtio-blk device with the disk's serial). `spec` is the
   * config before the disk is added. Throws BackendError when the VM cannot take it.
   */
  hotplugDisk(spec: VmSpec, disk: VmDisk, ctx: TaskContext): Promise<void>
  /**
   * Detach the disk `diskKey` from the RUNNING VM (qemu: QMP device_del, wait for the guest to
   * release it, then blockdev-del). The volume itself stays (the API layer makes it `unusedN`).
   * A disk the running VM does not have is not an error.
   */
  unplugDisk(spec: VmSpec, diskKey: string, ctx: TaskContext): Promise<void>
  /** Current runtime status; for an unknown or never-started VM, `running: false`. */
  status(node: string, vmid: number): VmRuntimeStatus
  /** How to reach a running VM from the host; undefined when not running or not applicable. */
  access(node: string, vmid: number): VmAccess | undefined
  /**
   * Forget a VM entirely: it is stopped (the API layer checked), delete all `volids` (its disks,
   * cloud-init volume, unused disks) and any runtime files. Missing volumes are ignored.
   */
  destroyVm(node: string, vmid: number, volids: string[], ctx: TaskContext): Promise<void>

  // ---- snapshots -----------------------------------------------------------------------------

  /**
   * Snapshot every disk of `spec` that supports it (skip cdrom/cloud-init) under `name` (qemu:
   * qcow2 internal snapshots; while running via QMP, stopped via `qemu-img snapshot -c`).
   * `vmstate` is never requested by the lab (refused by the API layer).
   */
  snapshotCreate(spec: VmSpec, name: string, ctx: TaskContext): Promise<void>
  /** Revert every disk to `name`. The API layer has stopped the VM first (PVE does the same without vmstate). */
  snapshotRollback(spec: VmSpec, name: string, ctx: TaskContext): Promise<void>
  /** Delete snapshot `name` from every disk; ignore disks that lack it. */
  snapshotDelete(spec: VmSpec, name: string, ctx: TaskContext): Promise<void>

  // ---- guest agent ------------------------------------------------------------------------------

  readonly agent: GuestAgent
}
