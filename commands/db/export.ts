import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, dbNameArg, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {ExportResult} from '../../src/db/service.js'

export default class DbExport extends BaseCommand<typeof DbExport> {
  static override summary = 'Take a database away as a dump file (pg_dump -Fc), with its manifest beside it.'
  static override description = `The VM dumps the database, then the file comes here through the guest agent (16 MiB a call) and its sha256 is checked. FILE.json beside it says which Tryton series and modules it needs: \`pgi db import\` on another server of the same series reads it.`
  static override examples = [{description: "A student's work, to another lycée", command: '<%= config.bin %> <%= command.id %> 0130040Y bts_cg1_jean_dupont --out jean_dupont.dump'}]

  static override args = {uai: uaiArg, database: dbNameArg('database', 'The database to export.')}
  static override flags = {
    ...dbFleetFlags,
    out: Flags.string({summary: 'The dump file to write (FILE.json is written beside it).', required: true}),
    force: Flags.boolean({summary: 'Replace --out if it exists.', default: false}),
  }

  async run(): Promise<ExportResult> {
    const {exportDb} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => exportDb(ctx, this.args.uai, this.args.database, {out: this.flags.out, force: this.flags.force}))
    this.log(`${r.uai}: ${r.database} exported to ${r.file} (${r.size} bytes, Tryton ${r.tryton_series}, sha256 ${r.sha256})`)
    return r
  }
}
