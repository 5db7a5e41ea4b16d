import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import {SafetyRefusal} from '../../src/errors.js'
import type {PruneRow} from '../../src/rollout/service.js'

export default class RolloutPrune extends BaseCommand<typeof RolloutPrune> {
  static override summary = 'Remove the old PostgreSQL cluster a committed major upgrade left on the data disk.'

  static override description = `A major upgrade (1.x → 2.0: PostgreSQL 15 → 17, Tryton 6.0 → 7.0) carries the databases into a new cluster and keeps the old one on the data disk, read-only, as a disaster copy. Once the establishment has run the new version long enough, this removes that copy to free its space: only where the upgrade is recorded as committed in the guest and no rollout is mid-way. With --expired, only the clusters kept longer than the inventory's old_cluster_days (defaults or per establishment) since the upgrade was committed. Refused without --old-clusters; the clusters are listed and a typed confirmation is asked (the UAI, or "N clusters").

Exit codes: 0 done (or nothing to prune), 4 some failed, 7 refused (no --old-clusters, or no terminal to confirm without --yes).`

  static override examples = [
    {description: 'One establishment.', command: '<%= config.bin %> rollout prune 0840001A --old-clusters'},
    {description: 'Every establishment, in a script.', command: '<%= config.bin %> rollout prune --all --old-clusters --yes --json'},
    {description: "A scheduled job: only the clusters past the inventory's old_cluster_days.", command: '<%= config.bin %> rollout prune --all --old-clusters --expired --yes --json'},
  ]

  static override strict = false
  static override args = uaiArgs
  static override flags = {
    ...selectionFlags,
    'old-clusters': Flags.boolean({summary: 'Yes, remove the old PostgreSQL clusters (the disaster copies of committed major upgrades).', default: false}),
    expired: Flags.boolean({summary: "Only the clusters kept longer than their establishment's old_cluster_days (the inventory's retention); the others are listed with the date they are kept until.", default: false}),
  }

  public async run(): Promise<{rows: PruneRow[]}> {
    const f = this.flags
    const uais = this.positionals
    if (!f['old-clusters']) {
      throw new SafetyRefusal('pruning removes the old PostgreSQL cluster of a major upgrade (its disaster copy): refused without --old-clusters', {
        suggestions: ['Run `pgi rollout prune <UAI> --old-clusters` once the establishment is known to work on the new version.'],
      })
    }
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {pruneOldClusters} = await import('../../src/rollout/service.js')
    const r = await pruneOldClusters({
      inventoryPath: f.inventory,
      selection: {uais, all: f.all, group: f.group},
      secretsDir: f['secrets-dir'],
      io: this.io,
      confirm: (q, expected) => this.confirmTyped(q, expected),
      expiredOnly: f.expired,
    })
    this.status = r.exitCode
    this.table(['UAI', 'outcome', 'cluster', 'MiB', 'detail'], r.rows.map((x) => [x.uai, x.outcome, x.cluster ?? '', x.bytes !== undefined ? Math.round(x.bytes / 2 ** 20) : '', x.detail]))
    return {rows: r.rows}
  }
}
