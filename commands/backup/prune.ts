import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {inventoryFlag, secretsDirFlag} from '../../src/cli/flags.js'
import {ExitCode} from '../../src/exit-codes.js'
import type {PruneRow} from '../../src/backup/service.js'

export default class BackupPrune extends BaseCommand<typeof BackupPrune> {
  static override summary = "Apply the inventory's retention to the off-site repositories (restic forget --prune)."
  static override description = `Keeps, per establishment, the snapshots the inventory's offsite.retention names (default: 7 daily, 4 weekly, 12 monthly) and removes the others with the data only they held. Runs on the Région's machine: the VMs' access is append-only and cannot delete. --dry-run lists what would go. Asks for confirmation (or --yes). Exit 4 when some establishments failed.`
  static override examples = [
    {description: 'What would be removed', command: '<%= config.bin %> <%= command.id %> --all --dry-run'},
    {description: 'Nightly, from a Région job', command: '<%= config.bin %> <%= command.id %> --all --yes --json'},
  ]

  static override strict = false
  static override args = {uai: Args.string({description: 'UAI of an establishment (several may be given).', required: false})}
  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    all: Flags.boolean({summary: 'Every establishment of the inventory.'}),
    group: Flags.string({char: 'g', summary: 'The establishments of a group (inventory `groups:`).'}),
    'dry-run': Flags.boolean({summary: 'Only say which snapshots would be removed.'}),
  }

  async run(): Promise<PruneRow[]> {
    const {argv} = await this.parse(BackupPrune)
    const uais = argv as string[]
    const {UsageError} = await import('../../src/errors.js')
    if (uais.length === 0 && !this.flags.all && this.flags.group === undefined) {
      throw new UsageError('name the establishments: UAIs, --group NAME or --all', {where: {command: 'backup prune'}})
    }
    const dryRun = this.flags['dry-run']
    if (!dryRun) await this.confirm(`Remove the off-site snapshots outside the retention for ${this.flags.all ? 'every establishment' : this.flags.group ? `group ${this.flags.group}` : uais.join(', ')}?`)
    const {pruneBackups} = await import('../../src/backup/service.js')
    const rows = await pruneBackups({
      inventoryPath: this.flags.inventory,
      secretsDir: this.flags['secrets-dir'],
      io: this.io,
      selection: {uais, all: this.flags.all, ...(this.flags.group === undefined ? {} : {group: this.flags.group})},
      dryRun,
    })
    this.table(
      ['UAI', 'kept', dryRun ? 'would remove' : 'removed', 'error'],
      rows.map((r) => [r.uai, r.ok ? String(r.kept?.length ?? 0) : '', r.ok ? (r.removed ?? []).join(' ') || '-' : '', r.error ?? '']),
    )
    if (rows.some((r) => !r.ok)) this.status = ExitCode.PARTIAL
    return rows
  }
}
