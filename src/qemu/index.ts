/**
 * The shared QEMU layer: accelerator choice, VM processes, QMP and guest-agent clients,
 * cloud-init NoCloud seeds. Used by the lab's qemu backend and by `pgi image test`.
 */
export * from './accel.js'
export * from './cloudinit.js'
export * from './qga.js'
export * from './qmp.js'
export * from './vm.js'
export {connectUnix} from './socket.js'
