import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, dbNameArg, dbNameFlag, fiscalYearFlag, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {CreateResult} from '../../src/db/service.js'

export default class DbCreate extends BaseCommand<typeof DbCreate> {
  static override summary = 'Create a Tryton database: from the image\'s BTS template, or as a copy of another.'
  static override description = `From the template (the default): the French chart of accounts, a company (renamed with --company), a fiscal year starting in --fiscal-year (default: this year), the Tryton admin of the handoff; seconds, not minutes. With --from DB: a neutralised copy of DB (scheduled actions off). An existing database is never changed: the name must be free.`
  static override examples = [
    {description: 'A database for a teacher\'s exercise', command: '<%= config.bin %> <%= command.id %> 0130040Y tp_facturation --company "Boulangerie Martin"'},
    {description: 'A model for next year\'s class, from last year\'s', command: '<%= config.bin %> <%= command.id %> 0130040Y modele_2027 --from modele_2026 --fiscal-year 2027'},
  ]

  static override args = {uai: uaiArg, name: dbNameArg('name', 'Name of the new database (lowercase letters, digits, _).')}
  static override flags = {
    ...dbFleetFlags,
    template: Flags.string({summary: "The image's template to start from.", options: ['bts'], exclusive: ['from']}),
    from: dbNameFlag('from', 'Copy this database instead of the template (neutralised: scheduled actions off).', {exclusive: ['template']}),
    company: Flags.string({summary: "The company's name (its party) in the new database."}),
    'fiscal-year': fiscalYearFlag,
  }

  async run(): Promise<CreateResult> {
    const {createDb} = await import('../../src/db/service.js')
    const f = this.flags
    const r = await withDbContext(f, this.io, (ctx) =>
      createDb(ctx, this.args.uai, {name: this.args.name, ...(f.from ? {from: f.from} : {template: f.template ?? 'bts'}), ...(f.company !== undefined ? {company: f.company} : {}), ...(f['fiscal-year'] !== undefined ? {fiscalYear: f['fiscal-year']} : {})}),
    )
    this.log(`${r.uai}: ${r.database} created from ${r.from}${r.company ? ` (company ${r.company})` : ''} in ${r.seconds} s (${r.method})`)
    return r
  }
}
