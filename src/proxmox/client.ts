import {dirname, isAbsolute, resolve as resolvePath} from 'node:path'

import {ErrorCode, PgiError, UserError} from '../errors.js'
import type {Hypervisor} from '../inventory/types.js'
import {createTrustedFetch, type PinnedFetch} from './tls.js'
import type {PveApi} from './types.js'
import {DEFAULT_REQUEST_TIMEOUT_MS, type ConnectOptions} from './options.js'
import {withWhere} from './transport.js'
import {PveStorage} from './storage.js'

/**
 * The one module that speaks the Proxmox VE API: API-token auth, query or form parameters with
 * booleans as 1/0, the `{data}` envelope (see `exchange` for why no client library does that
 * part), and:
 *
 * - TLS verified by pin or CA (src/proxmox/tls.ts), passed in as `fetch`;
 * - typed errors (PveApiError with status, PVE message, per-parameter errors; PveTaskError);
 * - a deadline on every request (src/deadline.ts) and a breaker: a hypervisor that answers
 *   nothing for a whole deadline (or refuses the TLS pin, or the token) is out of reach for the
 *   rest of the run, and every later request to it fails at once with the same error. This is
 *   the one per-hypervisor time bound of every fleet read and write (status, deploy, rollout,
 *   credentials, destroy), since they all go through one client per hypervisor;
 * - waits and bounded retries with back-off and jitter on "VM is locked (…)" and
 *   "can't lock file … got timeout", and on server faults (a 5xx that names no PVE reason);
 * - no blind re-send of a non-idempotent request: a GET is
 *   retried, a POST/DELETE whose fate is unknown after a network error or a server fault is
 *   *reconciled* by re-reading the state (the task it may have started, the VM, its status) and
 *   sent again only when that shows it was not applied;
 * - a task waiter with per-type default timeouts and the log tail on failure;
 * - multipart upload, streamed, with progress;
 * - guest-agent calls unwrapped (`{data:{result:…}}`), agent exec polled to completion.
 *
 * Split by concern, each class building on the one before: transport.ts (the exchange, deadlines,
 * breaker, retries, typed errors; options in options.ts, encodings in encoding.ts) → tasks.ts →
 * vms.ts (cluster reads, VMs, snapshots) → agent.ts (guest agent) → storage.ts (content, downloads,
 * upload); PveClient below is the whole.
 *
 * Paths are built here, each segment percent-encoded (a UPID segment must be fully encoded):
 * typed proxies of the API (proxmox-api's `pve.nodes.$(n).qemu…`) model an older PVE schema,
 * reject the config keys pgi sends (virtio0, ipconfig0, import-from…) and escape only "/".
 */
// what this module exported before the split (src/index.ts re-exports it as the library's API)
export {DEFAULT_AGENT_REQUEST_TIMEOUT_MS, DEFAULT_BREAKER_COOLDOWN_MS, DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_TASK_TIMEOUT_MS, DEFAULT_TASK_TIMEOUTS_MS, DEFAULT_WRITE_TIMEOUT_MS, type ConnectOptions, type PveClientInit, type RetryPolicy} from './options.js'
export {asciiJson, decodeReason, encodeParams} from './encoding.js'

export class PveClient extends PveStorage implements PveApi {}

/**
 * Opens a client for one inventory hypervisor: TLS pinned to `hv.tls.fingerprint`, or verified
 * against `hv.tls.caFile` (relative to the hypervisor's YAML file), or against the system CAs.
 */
export function connectHypervisor(hv: Hypervisor, opts: ConnectOptions): PveClient {
  let fetch = opts.fetch
  let pool: PinnedFetch | undefined
  if (!fetch) {
    const caFile = hv.tls.caFile && !isAbsolute(hv.tls.caFile) && hv.source?.file ? resolvePath(dirname(hv.source.file), hv.tls.caFile) : hv.tls.caFile
    try {
      // a connection that does not even open within a read's deadline is a silent hypervisor
      pool = createTrustedFetch({fingerprint: hv.tls.fingerprint, caFile}, {connectTimeoutMs: Math.min(10_000, opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS)})
    } catch (err) {
      throw withWhere(err instanceof PgiError ? err : new UserError(ErrorCode.INVENTORY_INVALID, String(err)), {hypervisor: hv.name})
    }
    fetch = pool.fetch
  }
  return new PveClient({name: hv.name, url: hv.url, tokenId: hv.token.id, fetch, onClose: pool ? () => pool!.close() : undefined}, opts)
}
