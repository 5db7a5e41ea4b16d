/** `pgi status`: the service, its pure verdict logic and its output formats. */
export * from './types.js'
export {toProbeError, CallTimeout, formatSeconds} from './probe-error.js'
export {DEFAULT_POLICY, judge, parseHealthOutput, rolloutState, toEstablishmentStatus, humanDuration, sortStatuses, summarize, permissionText} from './verdict.js'
export {collectStatus, findDataDisk, HEALTH_COMMAND, STATUS_DEFAULTS, withTimeout, type StatusOptions} from './collect.js'
export {renderTable, renderPrometheus, diffStatuses, changeLine, detailLines, summaryLine, tableRows, useColour, type StatusChange} from './format.js'
export {watchStatus, sleep, type WatchMode, type WatchOptions} from './watch.js'
export {StatusService, statusConnector, tokenSecretFromEnv, TOKEN_SECRET_ENV, type StatusServiceOptions} from './service.js'
