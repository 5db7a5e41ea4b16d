import {Args} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, dbNameFlag, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {ImportResult} from '../../src/db/service.js'
import {DB_UPLOAD_MAX_BYTES} from '../../src/db/transfer.js'

export default class DbImport extends BaseCommand<typeof DbImport> {
  static override summary = 'Import a dump file as a new database (checked before anything is made).'
  static override description = `Checked here first: a PostgreSQL custom-format dump (pg_dump -Fc, as \`pgi db export\` writes), at most ${DB_UPLOAD_MAX_BYTES / 1024 / 1024} MiB (it goes through the guest agent, ~45 KB a call). Then in the VM, before anything is created: pg_restore --list reads it, it holds a Tryton database, of this server's Tryton series (from its manifest FILE.json when it is beside the file), with modules this server has. A dump from another series is refused with the reason. The new database is neutralised (scheduled actions off) and gets this server's Tryton admin password.`
  static override examples = [{description: "A student's work from another lycée", command: '<%= config.bin %> <%= command.id %> 0130040Y jean_dupont.dump --as jean_dupont_import'}]

  static override args = {uai: uaiArg, file: Args.string({description: 'The dump file.', required: true})}
  static override flags = {...dbFleetFlags, as: dbNameFlag('as', 'Name of the new database.', {required: true})}

  async run(): Promise<ImportResult> {
    const {importDb} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => importDb(ctx, this.args.uai, this.args.file, this.flags.as as string))
    this.log(`${r.uai}: ${this.args.file} imported as ${r.database} (Tryton ${r.tryton_series}, ${r.modules.length} modules) in ${r.seconds} s`)
    return r
  }
}
