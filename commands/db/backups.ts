import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, humanBytes, optionalDbNameArg, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {PgiDbBackup} from '../../src/fleet/pgidb.js'

export default class DbBackups extends BaseCommand<typeof DbBackups> {
  static override summary = 'List the backups that can be restored, newest first, with dates and sizes.'
  static override description = `Manual backups (pgi db backup), the dump kept before a restore in place (before-replace), the final dump of a dropped database (final, never pruned) and the databases of the nightly backups (nightly). The ID is what \`pgi db restore --from\` takes.`
  static override examples = [
    {description: 'Every backup on the server', command: '<%= config.bin %> <%= command.id %> 0130040Y'},
    {description: "One student's", command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont'},
  ]

  static override args = {uai: uaiArg, database: optionalDbNameArg('database', 'Only the backups of this database.')}
  static override flags = {...dbFleetFlags}

  async run(): Promise<{uai: string; backups: PgiDbBackup[]}> {
    const {listBackups} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => listBackups(ctx, this.args.uai, this.args.database))
    this.table(['database', 'backup id', 'kind', 'date', 'size', 'verified'], r.backups.map((b) => [b.database, b.id, b.kind, b.date, humanBytes(b.size), b.verified ? (b.verified.ok ? `ok (${b.verified.method})` : 'FAILED') : '']))
    if (r.backups.length === 0 && !this.jsonEnabled()) this.log(`${r.uai}: no backup${this.args.database ? ` of ${this.args.database}` : ''} yet`)
    return r
  }
}
