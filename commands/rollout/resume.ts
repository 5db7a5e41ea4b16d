import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {handoffTarget, imageResolver, resultTable, stoppedLines, stopSignal} from '../../src/cli/fleet.js'
import {handoffTargetFlags, imagesDirFlag, reportFlag, runFlags, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import {rolloutSuite} from '../../src/report/suites.js'
import type {RolloutResult} from '../../src/rollout/run.js'

export default class RolloutResume extends BaseCommand<typeof RolloutResume> {
  static override summary = 'Continue a rollout that was paused, halted or interrupted: finish or roll back every establishment it touched.'

  static override description = `With this machine's journal, the whole rollout continues (same version, waves and limits; --max-parallel / --max-failures override). Without it (another machine with the same inventory and secrets), the rollout marks on the selected VMs (default: all) say which establishments are mid-way and to which version: each is taken over (compare-and-swap on its mark) and finished or rolled back from the step it reached.

Exit codes: as \`pgi rollout start\`.`

  static override examples = [
    {description: 'Continue the newest unfinished rollout of this machine.', command: '<%= config.bin %> rollout resume'},
    {description: 'From another machine: finish what the VMs of a group record.', command: '<%= config.bin %> rollout resume --group vaucluse --yes'},
  ]

  static override strict = false
  static override args = uaiArgs
  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    ...runFlags,
    ...handoffTargetFlags,
    report: reportFlag,
    id: Flags.string({summary: 'Rollout id (default: the newest unfinished one).'}),
    'max-parallel': Flags.integer({summary: 'Establishments updated at once (default: as started).', min: 1}),
    'max-failures': Flags.string({summary: 'New failure threshold (default: as started).'}),
    'if-unfinished': Flags.boolean({summary: 'When no rollout is left unfinished, say so and exit 0 instead of 2 (a CI job that resumes, then starts its wave).', default: false}),
  }

  public async run(): Promise<RolloutResult> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {resumeRollout} = await import('../../src/rollout/service.js')
    const f = this.flags
    const uais = this.positionals
    const r = await resumeRollout({
      inventoryPath: f.inventory,
      selection: {uais, all: f.all || (uais.length === 0 && !f.group), group: f.group},
      secretsDir: f['secrets-dir'],
      io: this.io,
      id: f.id,
      ifUnfinished: f['if-unfinished'],
      resolveImage: imageResolver(f['images-dir'], this.io),
      maxParallel: f['max-parallel'],
      maxPerHypervisor: f['max-per-hypervisor'],
      maxFailures: f['max-failures'],
      keepOldDisk: f['keep-old-disk'],
      agentTimeoutMs: f['agent-timeout'],
      healthTimeoutMs: f['health-timeout'],
      migrationTimeoutMs: f['migration-timeout'] || undefined,
      shutdownTimeoutMs: f['shutdown-timeout'],
      lockWaitMs: f['lock-wait'],
      signal: stopSignal(this.io),
      ...(await handoffTarget(f, this.io)),
      onResult: (e) => this.io.info(`${e.uai}: ${e.outcome}${e.reason ? ` (${e.reason})` : ''}`),
    })
    this.status = r.exitCode
    if (r.id === '') return r
    await this.writeReports(rolloutSuite(this.commandLine(), r, this.startedAt))
    const t = resultTable(r)
    this.table(t.head, t.rows)
    this.io.info(`rollout ${r.id}: ${r.state}${r.reason ? ` (${r.reason})` : ''}`)
    for (const line of stoppedLines(r)) this.io.warn(line)
    return r
  }
}
