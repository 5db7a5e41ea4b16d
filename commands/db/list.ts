import {Args} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, humanBytes, withDbContext} from '../../src/cli/db.js'
import type {DbListResult} from '../../src/db/service.js'
import {ExitCode} from '../../src/exit-codes.js'

export default class DbList extends BaseCommand<typeof DbList> {
  static override summary = "List an establishment's Tryton databases: size, modules, class, last backup."
  static override description = `Asks each establishment's PGI server (through its VM's guest agent) for its databases: name, size, activated Tryton modules, what made it (create, copy, class, restore, import) and its class label, and the last backup that can restore it. Every establishment of the inventory when none is named (a few hypervisors at a time); one that cannot be reached is reported and the others are shown (exit 4).`
  static override examples = [
    {description: 'The databases of one lycée', command: '<%= config.bin %> <%= command.id %> 0130040Y'},
    {description: 'As JSON for a script', command: '<%= config.bin %> <%= command.id %> 0130040Y --json'},
  ]

  static override strict = false
  static override args = {uai: Args.string({description: 'UAI(s) of the establishments (default: all).', required: false})}
  static override flags = {...dbFleetFlags}

  async run(): Promise<DbListResult> {
    const {argv} = await this.parse(DbList)
    const uais = argv.map(String)
    const {listDbs} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, async (ctx) => listDbs(ctx, await ctx.fleet.select({uais, all: uais.length === 0})))
    if (r.failed > 0) this.status = ExitCode.PARTIAL
    const rows = r.establishments.flatMap((e) =>
      e.ok
        ? (e.databases ?? []).map((d) => [e.uai, d.name, humanBytes(d.size), d.class ?? d.kind ?? '', d.company ?? '', d.modules.length > 6 ? `${d.modules.length} modules` : d.modules.join(' '), d.last_backup ? `${d.last_backup.date} (${d.last_backup.kind})` : 'never'])
        : [[e.uai, '', '', '', '', `failed: ${String(e.error?.message ?? '')}`, '']],
    )
    this.table(['UAI', 'database', 'size', 'class / made by', 'company', 'modules', 'last backup'], rows)
    return r
  }
}
