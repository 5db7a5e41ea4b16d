import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, dbNameArg, uaiArg, withDbContext} from '../../src/cli/db.js'

export default class DbDrop extends BaseCommand<typeof DbDrop> {
  static override summary = 'Drop a database, after a final dump kept on the data disk.'
  static override description = `Asks you to type the database's name (or --yes). The final dump (kind final) is never pruned: \`pgi db restore UAI DB\` brings the database back.`
  static override examples = [
    {description: 'At the end of the year, once archived', command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont'},
    {description: 'In a script', command: '<%= config.bin %> <%= command.id %> 0130040Y essai_cg1 --yes --json'},
  ]

  static override args = {uai: uaiArg, database: dbNameArg('database', 'The database to drop.')}
  static override flags = {...dbFleetFlags}

  async run(): Promise<{uai: string; database: string; dropped: boolean; final_backup: {id: string}}> {
    const {dropDb} = await import('../../src/db/service.js')
    const db = this.args.database
    await this.confirmTyped(`Drop the database ${db} of ${this.args.uai}? A final dump is kept on the server (pgi db restore brings it back).`, db)
    const r = await withDbContext(this.flags, this.io, (ctx) => dropDb(ctx, this.args.uai, db))
    this.log(`${r.uai}: ${r.database} dropped; final backup ${r.final_backup.id} (\`pgi db restore ${r.uai} ${r.database}\` brings it back)`)
    return r
  }
}
