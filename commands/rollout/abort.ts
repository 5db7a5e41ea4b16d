import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'

export default class RolloutAbort extends BaseCommand<typeof RolloutAbort> {
  static override summary = 'Abort the running rollout: establishments mid-way are rolled back, nobody new starts.'

  static override description = `Writes an abort request into this machine's rollout journal; the runner reads it between steps. Establishments that were not yet changed are released untouched; those whose VM was stopped or swapped are rolled back to their previous OS disk (databases restored from the backup if they were upgraded); those that already passed the gate are committed. \`pgi rollout resume\` on an aborted rollout finishes the rollbacks.

Exit codes: 0 request written, 2 no running rollout in the journal.`

  static override examples = [
    {description: 'The running rollout of this machine.', command: '<%= config.bin %> rollout abort'},
    {description: 'A given rollout.', command: '<%= config.bin %> rollout abort --id 20261122T081500Z-a1b2c3'},
  ]

  static override flags = {id: Flags.string({summary: 'Rollout id (default: the running one).'})}

  public async run(): Promise<{id: string; control: string}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {controlRollout} = await import('../../src/rollout/service.js')
    const r = await controlRollout('abort', {id: this.flags.id})
    this.io.info(`rollout ${r.id}: abort requested; the runner acts on it at the next step boundary`)
    return r
  }
}
