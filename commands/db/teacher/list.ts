import {BaseCommand} from '../../../src/cli/base-command.js'
import {dbFleetFlags, uaiArg, withDbContext} from '../../../src/cli/db.js'
import type {TeacherAccount} from '../../../src/db/console.js'

export default class DbTeacherList extends BaseCommand<typeof DbTeacherList> {
  static override summary = "List the teachers' accounts of an establishment's console: status, Tryton login, last login."
  static override description = 'Status: pending (no password chosen yet; the code expires on the date shown), active, disabled. Never a password, hash or code.'
  static override examples = [{description: 'The teachers of one lycée', command: '<%= config.bin %> <%= command.id %> 0130040Y'}]

  static override args = {uai: uaiArg}
  static override flags = {...dbFleetFlags}

  async run(): Promise<{uai: string; teachers: TeacherAccount[]}> {
    const {listTeachers} = await import('../../../src/db/console.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => listTeachers(ctx, this.args.uai))
    this.table(
      ['e-mail', 'name', 'status', 'Tryton login', 'last login', 'created'],
      r.teachers.map((t) => [t.email, t.name, t.status === 'pending' && t.setup_code_expires ? `pending (code until ${t.setup_code_expires})` : t.status, t.tryton_login, t.last_login ?? 'never', `${t.created_at} by ${t.created_by}`]),
    )
    if (r.teachers.length === 0) this.log(`${r.uai}: no teacher account yet (\`pgi db teacher add ${r.uai} --name … --email …\`)`)
    return r
  }
}
