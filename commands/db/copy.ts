import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {dbFleetFlags, dbNameArg, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {CopyResult} from '../../src/db/service.js'

export default class DbCopy extends BaseCommand<typeof DbCopy> {
  static override summary = 'Copy a database under a new name (seconds: PostgreSQL copies it, no dump).'
  static override description = `DST becomes a neutralised copy of SRC (scheduled actions off) made with CREATE DATABASE … TEMPLATE, which needs SRC without other sessions. Tryton keeps idle connections to every database it served: they are closed (whoever has SRC open in Tryton may see one error on a read, then it works again; the result says how many were closed). Someone saving at that moment is waited for, up to 10 s. Other sessions (psql, a running dump) are never closed: the copy is then made with pg_dump | pg_restore, slower, and the result says so (method dump-restore). --keep-connections never closes anything and takes that way whenever SRC is in use.`
  static override examples = [{description: 'A copy of a model to try something on', command: '<%= config.bin %> <%= command.id %> 0130040Y modele_cg1 essai_cg1'}]

  static override args = {uai: uaiArg, src: dbNameArg('src', 'The database to copy.'), dst: dbNameArg('dst', 'Name of the copy (must be free).')}
  static override flags = {
    ...dbFleetFlags,
    'keep-connections': Flags.boolean({summary: "Never close Tryton's connections to SRC: copy with pg_dump | pg_restore when it is in use (slower).", default: false}),
  }

  async run(): Promise<CopyResult> {
    const {copyDb} = await import('../../src/db/service.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => copyDb(ctx, this.args.uai, this.args.src, this.args.dst, {keepConnections: this.flags['keep-connections']}))
    this.log(`${r.uai}: ${r.database} copied from ${r.source} in ${r.seconds} s (${r.method}${r.closed_connections ? `, ${r.closed_connections} idle Tryton connection(s) closed` : ''})`)
    return r
  }
}
