import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {rolloutFleet} from '../../src/cli/fleet.js'
import {imageRefArg, imagesDirFlag, reportFlag, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import {planSuite} from '../../src/report/suites.js'
import type {RolloutPlanRow} from '../../src/rollout/service.js'
import {ExitCode} from '../../src/exit-codes.js'

export default class RolloutPlan extends BaseCommand<typeof RolloutPlan> {
  static override summary = 'Show what a rollout of an image version would do, establishment by establishment.'

  static override description = `For each selected establishment: its current version → the target, its wave (ring), its maintenance window, whether the image is already staged on its node, and what blocks it (unreachable hypervisor, VM missing or locked, another rollout mid-way, image not verified). For a major upgrade (the image's PostgreSQL major version differs from the one the establishment runs, e.g. 1.x → 2.0), the migration: the databases carried across into a new cluster beside the old one, and the data disk space it needs (old cluster + new cluster + dumps); an establishment whose data disk is too small is blocked, with the figures. Only reads: nothing is changed.

Exit codes: 0 nothing blocked, 4 some establishments are blocked.`

  static override examples = [
    {description: 'Plan version 2026.12.0 for every establishment.', command: '<%= config.bin %> rollout plan 2026.12.0 --all'},
    {description: 'Plan for one group, canary and pilot waves only, as JSON.', command: '<%= config.bin %> rollout plan 2026.12.0 --group vaucluse --waves canary,pilot --json'},
  ]

  static override strict = false
  static override args = {...imageRefArg, ...uaiArgs}
  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    waves: Flags.string({summary: 'Rings to include, in order (default: the inventory\'s rings).'}),
    window: Flags.string({summary: 'now: ignore maintenance windows; inventory: say who is outside theirs.', options: ['now', 'inventory'], default: 'now'}),
    report: reportFlag,
  }

  public async run(): Promise<{version: string; rows: RolloutPlanRow[]}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {planRollout, describeMigration} = await import('../../src/rollout/service.js')
    const f = this.flags
    const r = await planRollout({
      ...rolloutFleet(f, this.positionals, this.args.version, this.io),
      waves: f.waves?.split(',').map((w) => w.trim()).filter(Boolean),
      window: f.window as 'now' | 'inventory',
    })
    this.table(
      ['UAI', 'name', 'hypervisor/node', 'VM', 'current → target', 'wave', 'window', 'staged', 'plan', 'migration', 'blockers'],
      r.rows.map((x) => [x.uai, x.name, `${x.hypervisor}/${x.node}`, x.vmid, `${x.current ?? '?'} → ${x.target}`, x.waveIndex ? `${x.waveIndex}. ${x.wave}` : `${x.wave} (not in waves)`, x.window, x.staged ? 'yes' : 'no', x.action, x.migration ? describeMigration(x.migration) : '', x.blockers.join('; ')]),
    )
    if (r.rows.some((x) => x.action === 'blocked')) this.status = ExitCode.PARTIAL
    await this.writeReports(planSuite(this.commandLine(), r, this.startedAt, this.status))
    return {version: r.version, rows: r.rows}
  }
}
