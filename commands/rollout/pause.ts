import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'

export default class RolloutPause extends BaseCommand<typeof RolloutPause> {
  static override summary = 'Pause the running rollout: establishments in flight finish their step (those whose VM is already stopped run to the end), nobody new starts.'

  static override description = `Writes a pause request into this machine's rollout journal; the runner reads it between steps. An establishment whose PGI still runs its old version stops at its step boundary; one already past the shutdown is brought to a running PGI (committed or rolled back) first, so a pause never leaves a server down. \`pgi rollout resume\` continues.

Exit codes: 0 request written, 2 no running rollout in the journal.`

  static override examples = [
    {description: 'The running rollout of this machine.', command: '<%= config.bin %> rollout pause'},
    {description: 'A given rollout.', command: '<%= config.bin %> rollout pause --id 20261122T081500Z-a1b2c3'},
  ]

  static override flags = {id: Flags.string({summary: 'Rollout id (default: the running one).'})}

  public async run(): Promise<{id: string; control: string}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {controlRollout} = await import('../../src/rollout/service.js')
    const r = await controlRollout('pause', {id: this.flags.id})
    this.io.info(`rollout ${r.id}: pause requested; the runner acts on it at the next step boundary`)
    return r
  }
}
