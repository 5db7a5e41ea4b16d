import {BaseCommand} from '../../../src/cli/base-command.js'
import {dbFleetFlags, teacherEmailArg, uaiArg, withDbContext} from '../../../src/cli/db.js'
import type {TeacherAccount} from '../../../src/db/console.js'

export default class DbTeacherEnable extends BaseCommand<typeof DbTeacherEnable> {
  static override summary = "Enable a disabled teacher's console account again (active, or pending when they never chose a password)."
  static override description = 'The reverse of `pgi db teacher disable`.'
  static override examples = [{description: 'A teacher back', command: '<%= config.bin %> <%= command.id %> 0130040Y marie.curie@ac-aix-marseille.fr'}]

  static override args = {uai: uaiArg, email: teacherEmailArg}
  static override flags = {...dbFleetFlags}

  async run(): Promise<{uai: string; teacher: TeacherAccount}> {
    const {setTeacherEnabled} = await import('../../../src/db/console.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => setTeacherEnabled(ctx, this.args.uai, this.args.email, true))
    this.log(`${r.uai}: ${r.teacher.email} is now ${r.teacher.status}`)
    return r
  }
}
