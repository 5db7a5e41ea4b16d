/**
 * oclif hooks (package.json oclif.hooks; bundled as dist/cli/hooks.js, loaded only when oclif
 * runs the hook).
 *
 * command_not_found: `pgi statsu`, `pgi rollout strat`. oclif's own answer is "command statsu not
 * found" with nothing else, and no JSON envelope under --json; pgi's is a usage error (exit 2)
 * naming the command as typed, the closest known commands, and the envelope under --json.
 */
import type {Hook} from '@oclif/core'

import {ExitCode} from '../exit-codes.js'
import {commandNotFound as notFound, renderError} from './usage.js'

export const commandNotFound: Hook<'command_not_found'> = async function (opts) {
  const err = notFound(opts.id, opts.config.commandIDs, opts.config.topics.map((t) => t.name))
  process.exitCode = ExitCode.USAGE
  if ((opts.argv ?? []).includes('--json')) {
    // the envelope every command prints on an error (src/cli/base-command.ts)
    process.stdout.write(JSON.stringify({status: err.exitCode, error: err.toJSON()}, null, 2) + '\n')
  } else {
    process.stderr.write(renderError(err))
  }
}
