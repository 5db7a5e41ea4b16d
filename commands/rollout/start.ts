import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {handoffTarget, rolloutFleet, resultTable, stoppedLines, stopSignal} from '../../src/cli/fleet.js'
import {handoffTargetFlags, imageRefArg, imagesDirFlag, reportFlag, runFlags, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import {rolloutSuite} from '../../src/report/suites.js'
import type {RolloutResult} from '../../src/rollout/run.js'

export default class RolloutStart extends BaseCommand<typeof RolloutStart> {
  static override summary = 'Roll an image version out to establishments, wave by wave, with backups, health gates and automatic rollback.'

  static override description = `For each establishment, in waves (rings in order; a wave starts only when the previous one ended within --max-failures): check it is healthy and the image is staged; back every database up with pgi-backup and verify the backup restores (manifest copied into the local journal); shut down cleanly; swap the OS disk for one imported from the staged image, keeping the old one attached as unused and never touching the data disk; regenerate cloud-init; start; gate on the application (pgi-health healthy on the new version, databases upgraded, every database opens with the backup's row counts, a Tryton login works). Success records the new version on the VM (tags + description, digest compare-and-swap) and removes the old OS disk; failure rolls back automatically (old OS disk, databases restored from the backup if upgraded, health checked) and says why.

The state of each VM is kept on the VM itself (a rollout mark naming this rollout and runner) plus a local journal: if pgi stops at any point, \`pgi rollout resume\` finishes or rolls back what was touched. See docs/rollout.md.

Exit codes: 0 all updated (or already), 4 some failed / were rolled back / halted, 7 another rollout holds the lock, 2 bad flags.`

  static override examples = [
    {description: 'Roll 2026.12.0 out to everyone, canary first, 20 at a time, stop at the first failure.', command: '<%= config.bin %> rollout start 2026.12.0 --all --max-parallel 20'},
    {description: 'Only the canary and pilot rings, tolerate 5% failures, only within maintenance windows (CI).', command: '<%= config.bin %> rollout start 2026.12.0 --all --waves canary,pilot --max-failures 5% --window inventory --yes --json'},
  ]

  static override strict = false
  static override args = {...imageRefArg, ...uaiArgs}
  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    ...runFlags,
    ...handoffTargetFlags,
    report: reportFlag,
    waves: Flags.string({summary: 'Rings to roll out, in order (default: the inventory\'s rings, e.g. canary,pilot,general).'}),
    'max-failures': Flags.string({summary: 'Halt when more establishments than this fail: a number or a percentage of the selection.', default: '0'}),
    window: Flags.string({summary: 'now: start at once; inventory: only establishments inside their maintenance window (the others are deferred).', options: ['now', 'inventory'], default: 'now'}),
  }

  public async run(): Promise<RolloutResult> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {startRollout} = await import('../../src/rollout/service.js')
    const f = this.flags
    const r = await startRollout({
      ...rolloutFleet(f, this.positionals, this.args.version, this.io),
      waves: f.waves?.split(',').map((w) => w.trim()).filter(Boolean),
      maxParallel: f['max-parallel'],
      maxPerHypervisor: f['max-per-hypervisor'],
      maxFailures: f['max-failures'],
      window: f.window as 'now' | 'inventory',
      keepOldDisk: f['keep-old-disk'],
      agentTimeoutMs: f['agent-timeout'],
      healthTimeoutMs: f['health-timeout'],
      migrationTimeoutMs: f['migration-timeout'] || undefined,
      shutdownTimeoutMs: f['shutdown-timeout'],
      lockWaitMs: f['lock-wait'],
      confirm: (q) => this.confirm(q),
      signal: stopSignal(this.io),
      ...(await handoffTarget(f, this.io)),
      onResult: (e) => this.io.info(`${e.uai}: ${e.outcome}${e.reason ? ` (${e.reason})` : ''}`),
    })
    this.status = r.exitCode
    await this.writeReports(rolloutSuite(this.commandLine(), r, this.startedAt))
    const t = resultTable(r)
    this.table(t.head, t.rows)
    this.io.info(`rollout ${r.id}: ${r.state}${r.reason ? ` (${r.reason})` : ''}; ${Object.entries(r.counts).map(([k, v]) => `${v} ${k}`).join(', ')}`)
    for (const line of stoppedLines(r)) this.io.warn(line)
    return r
  }
}
