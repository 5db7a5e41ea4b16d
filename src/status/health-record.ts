/**
 * The server's own record of its health, for tokens that may read files in the guest but not run
 * commands there. On PVE 9, running pgi-health through `agent/exec` needs VM.GuestAgent.Unrestricted;
 * `agent/file-read` needs only VM.GuestAgent.FileRead, which the read-only PGI-AMI role has
 * (docs/proxmox-role.md). The image's pgi-health.timer runs pgi-health every 2 minutes and writes
 * its result atomically to /run/pgi/health.json (images/pgi-tryton/files/usr/local/lib/pgi/health-record):
 *
 *   {"v": 1, "at": "2026-11-22T07:01:00Z", "took_s": 2.1, "exit_code": 0,
 *    "health": {…pgi-health's JSON…} | null, "error": "…", "timed_out": true, "timeout_s": 120}
 *
 * /run is a tmpfs: a record never outlives a reboot, so a VM that has just started has none yet.
 */
import {ErrorCode} from '../errors.js'
import type {PveApi} from '../proxmox/types.js'
import {isAgentDown, toProbeError} from './probe-error.js'
import type {Observation, PgiHealthReport} from './types.js'
import {healthReportFrom} from './verdict.js'

/** Where the image records pgi-health's latest result (guest contract, docs/image.md). */
export const HEALTH_RECORD_FILE = '/run/pgi/health.json'

/** The call's name in errors and the request log's terms. */
export const HEALTH_RECORD_CALL = 'agent file-read /run/pgi/health.json'

export interface HealthRecord {
  /** When the record was written (ISO, the server's clock). */
  at: string
  /** pgi-health's report, when it printed one. */
  report?: PgiHealthReport
  /** pgi-health's exit code (null when it did not finish). */
  exitCode: number | null
  /** Why there is no report (pgi-health failed, printed no JSON, or did not finish). */
  error?: string
  /** Set when pgi-health did not finish within this many seconds. */
  timeoutS?: number
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * Parses the record's text. A record without a valid time is refused (its age could not be told,
 * and an old result shown as current is worse than none); a record whose `health` is not a valid
 * pgi-health report keeps its time and says why.
 */
export function parseHealthRecord(text: string): HealthRecord | {invalid: string} {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch {
    return {invalid: 'it is not JSON'}
  }
  if (!isRecord(raw)) return {invalid: 'it is not a JSON object'}
  if (typeof raw.at !== 'string' || Number.isNaN(Date.parse(raw.at))) return {invalid: 'it has no valid "at" time'}
  const exitCode = typeof raw.exit_code === 'number' ? raw.exit_code : null
  const out: HealthRecord = {at: raw.at, exitCode}
  if (typeof raw.timeout_s === 'number' && raw.timed_out === true) out.timeoutS = raw.timeout_s
  if (raw.health !== null && raw.health !== undefined) {
    const parsed = healthReportFrom(raw.health)
    if ('report' in parsed) out.report = parsed.report
    else out.error = parsed.error
  } else {
    out.error = typeof raw.error === 'string' && raw.error !== '' ? raw.error : 'pgi-health gave no result'
  }
  return out
}

type Call = <T>(label: string, fn: (api: PveApi) => Promise<T>, opts?: {timeoutMs?: number; guestSide?: boolean}) => Promise<T>

/**
 * Reads the record of a running VM into `o` (the token may not run pgi-health). Returns true when a
 * record was read: `health` (or `healthError`, when pgi-health failed) then comes from it, and the
 * refusal of exec that led here is dropped (the health was checked). Returns false otherwise, with
 * the reason in `healthRecordError` (refused, missing, unreadable) or `agentError` (agent down).
 */
export async function readHealthRecord(o: Observation, node: string, call: Call): Promise<boolean> {
  let text: string
  try {
    text = await call(HEALTH_RECORD_CALL, (api) => api.agentFileRead(node, o.vmid, HEALTH_RECORD_FILE), {guestSide: true})
  } catch (err) {
    const pe = toProbeError(HEALTH_RECORD_CALL, err)
    if (pe.code !== ErrorCode.PVE_PERMISSION && isAgentDown(pe)) {
      o.agentAnswering = false
      o.agentError = pe
      return false
    }
    // the agent answered, the file is not there (qemu-ga: "… No such file or directory")
    if (pe.code !== ErrorCode.PVE_PERMISSION && /No such file|does not exist/i.test(pe.message)) {
      o.agentAnswering = true
      o.healthRecordMissing = true
    }
    o.healthRecordError = pe
    return false
  }
  o.agentAnswering = true
  const rec = parseHealthRecord(text)
  if ('invalid' in rec) {
    o.healthRecordError = {code: ErrorCode.GUEST_COMMAND_FAILED, call: HEALTH_RECORD_CALL, message: `the health record on the server is unreadable: ${rec.invalid}`}
    return false
  }
  delete o.healthError
  o.healthVia = 'health-record'
  o.healthRecordAt = rec.at
  if (rec.exitCode !== null) o.healthExitCode = rec.exitCode
  if (rec.report) o.health = rec.report
  else {
    o.healthError = {
      code: rec.timeoutS === undefined ? ErrorCode.GUEST_COMMAND_FAILED : ErrorCode.TIMEOUT,
      call: HEALTH_RECORD_CALL,
      message: rec.error ?? 'pgi-health gave no result',
      ...(rec.timeoutS === undefined ? {} : {timeoutMs: rec.timeoutS * 1000}),
    }
  }
  return true
}
