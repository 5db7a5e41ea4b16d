import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {backupIdFlag, dbFleetFlags, dbNameArg, dbNameFlag, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {RestoreResult} from '../../src/db/service.js'

export default class DbRestore extends BaseCommand<typeof DbRestore> {
  static override summary = 'Restore a database from a backup: under a new name, or in place with --replace.'
  static override description = `By default into a new database: --as NEW, or DB itself when it no longer exists (after a drop), or DB_YYYYMMDD_HHMM (the backup's date). A restore under another name is neutralised (scheduled actions off). The backup's sha256 is checked first.

--replace restores in place: it asks you to type the database's name (or --yes), keeps a dump of what it replaces (kind before-replace: \`pgi db restore DB --from ID --replace\` undoes it), and closes the sessions on DB (whoever has it open sees one error).`
  static override examples = [
    {description: "Bring back a student's database dropped by mistake", command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont'},
    {description: 'Look at last week\'s state beside today\'s', command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont --from 20260301T023012Z --as jean_semaine_derniere'},
    {description: 'Put a database back as it was this morning', command: '<%= config.bin %> <%= command.id %> 0130040Y tp_facturation --replace'},
  ]

  static override args = {uai: uaiArg, database: dbNameArg('database', 'The database whose backup is restored.')}
  static override flags = {
    ...dbFleetFlags,
    from: backupIdFlag,
    as: dbNameFlag('as', 'Restore into this new database.', {exclusive: ['replace']}),
    replace: Flags.boolean({summary: 'Restore in place (asks to type the name; a dump of the current database is kept first).', default: false, exclusive: ['as']}),
  }

  async run(): Promise<RestoreResult> {
    const {restoreDb} = await import('../../src/db/service.js')
    const f = this.flags
    const db = this.args.database
    if (f.replace) await this.confirmTyped(`Replace ${db} of ${this.args.uai} with its backup ${f.from}? Its current content is dumped first (kind before-replace) and its open sessions are closed.`, db)
    const r = await withDbContext(f, this.io, (ctx) => restoreDb(ctx, this.args.uai, db, {from: f.from, ...(f.as ? {as: f.as} : {}), replace: f.replace}))
    this.log(`${r.uai}: ${r.database} restored from ${r.from.id} (${r.from.kind}, ${r.from.date}) in ${r.seconds} s${r.kept ? `; the replaced content is kept as backup ${r.kept.id}` : ''}`)
    return r
  }
}
