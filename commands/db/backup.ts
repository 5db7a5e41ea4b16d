import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, humanBytes, uaiArg, withDbContext} from '../../src/cli/db.js'
import {dbNameProblem} from '../../src/db/names.js'
import type {PgiDbBackup} from '../../src/fleet/pgidb.js'
import {UsageError} from '../../src/errors.js'

export default class DbBackup extends BaseCommand<typeof DbBackup> {
  static override summary = 'Back up databases now (one dump each, kept on the data disk).'
  static override description = `A dump of each database named (default: every Tryton database), checked with pg_restore --list; with --verify also restored into a scratch database whose row counts must match. Kept on the VM's data disk beside the nightly backups: the last 10 manual ones per database (\`pgi db backups\` lists what can be restored).`
  static override examples = [
    {description: 'Before a exam, the class\'s databases', command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont bts_cg1_lea_martin'},
    {description: 'Every database, verified', command: '<%= config.bin %> <%= command.id %> 0130040Y --verify'},
  ]

  static override strict = false
  static override args = {uai: uaiArg, database: Args.string({description: 'Database(s) to back up (default: every Tryton database).', required: false})}
  static override flags = {...dbFleetFlags, verify: Flags.boolean({summary: 'Also restore each dump into a scratch database and compare row counts.', default: false})}

  async run(): Promise<{uai: string; backups: PgiDbBackup[]}> {
    const {argv} = await this.parse(DbBackup)
    const names = argv.slice(1).map(String)
    for (const n of names) {
      const p = dbNameProblem(n)
      if (p) throw new UsageError(p, {where: {argument: 'database'}})
    }
    const {backupDbs} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => backupDbs(ctx, this.args.uai, names, {verify: this.flags.verify}))
    this.table(['database', 'backup id', 'size', 'verified'], r.backups.map((b) => [b.database, b.id, humanBytes(b.size), b.verified ? `${b.verified.ok ? 'ok' : 'FAILED'} (${b.verified.method})` : '']))
    return r
  }
}
