import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {ExitCode} from '../../src/exit-codes.js'
import {selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import type {RolloutStatus} from '../../src/rollout/service.js'

export default class RolloutStatusCommand extends BaseCommand<typeof RolloutStatusCommand> {
  static override summary = 'Where rollouts stand: the local journal and the rollout mark of each VM.'

  static override description = `Reads the rollout mark on each selected VM (default: all): rollout id, from → to, last step, runner, when, and why it failed or rolled back. Also shows the newest rollout of this machine's journal (state, pause/abort requests).

Exit codes: 0 nothing mid-way or failed, 4 some establishment is mid-way, failed or unknown.`

  static override examples = [
    {description: 'Every establishment.', command: '<%= config.bin %> rollout status'},
    {description: 'One rollout, as JSON.', command: '<%= config.bin %> rollout status --id 20261122T081500Z-a1b2c3 --json'},
  ]

  static override strict = false
  static override args = uaiArgs
  static override flags = {...selectionFlags, id: Flags.string({summary: 'Only this rollout.'})}

  public async run(): Promise<RolloutStatus> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {rolloutStatus} = await import('../../src/rollout/service.js')
    const f = this.flags
    const uais = this.positionals
    const s = await rolloutStatus({inventoryPath: f.inventory, selection: {uais, all: f.all || (uais.length === 0 && !f.group), group: f.group}, secretsDir: f['secrets-dir'], io: this.io, id: f.id})
    if (s.journal) this.io.info(`rollout ${s.journal.id} (${s.journal.version}): ${s.journal.state}${s.journal.control ? `, ${s.journal.control} requested` : ''}${s.journal.reason ? ` — ${s.journal.reason}` : ''}`)
    this.table(['UAI', 'image', 'rollout', 'from → to', 'step', 'state', 'runner', 'at', 'why'], s.establishments.map((e) => [e.uai, e.image, e.rollout, e.from ? `${e.from} → ${e.to}` : '', e.step, e.state, e.runner, e.at, e.reason]))
    if (s.establishments.some((e) => e.state === 'in-progress' || e.state === 'failed' || e.state === 'unknown')) this.status = ExitCode.PARTIAL
    return s
  }
}
