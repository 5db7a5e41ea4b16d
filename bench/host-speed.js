// How fast the shared host's CPU is right now, for benchmarks of emulated VMs (not a benchmark
// itself: run-all takes bench/*.mjs). Shared by bench/db-class.mjs and bench/console.mjs.
import {deflateSync} from 'node:zlib'

/**
 * The milliseconds of a fixed single-threaded job (deflate of 8 MiB of pseudo-random letters:
 * branchy integer code, as QEMU's translated code is); lower is faster. The shared host's speed
 * drifts (the same class cost the VM 85 s of host CPU one hour and 120 s half an hour later,
 * nothing else running, no steal time reported): runs are comparable side by side, or with this
 * figure beside them.
 */
export function hostCalibrationMs() {
  const buf = Buffer.alloc(8 * 2 ** 20)
  let x = 1
  for (let i = 0; i < buf.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    buf[i] = 97 + ((x >>> 16) & 15)
  }
  const t = performance.now()
  deflateSync(buf, {level: 6})
  return Math.round(performance.now() - t)
}
