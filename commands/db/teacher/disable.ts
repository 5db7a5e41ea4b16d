import {BaseCommand} from '../../../src/cli/base-command.js'
import {dbFleetFlags, teacherEmailArg, uaiArg, withDbContext} from '../../../src/cli/db.js'
import type {TeacherAccount} from '../../../src/db/console.js'

export default class DbTeacherDisable extends BaseCommand<typeof DbTeacherDisable> {
  static override summary = "Disable a teacher's console account: their sessions end and their logins are refused until enabled again."
  static override description = 'Their classes, databases and backups stay as they are (an archive or a drop is a separate act). `pgi db teacher enable` gives the account back.'
  static override examples = [{description: 'A teacher who left', command: '<%= config.bin %> <%= command.id %> 0130040Y marie.curie@ac-aix-marseille.fr'}]

  static override args = {uai: uaiArg, email: teacherEmailArg}
  static override flags = {...dbFleetFlags}

  async run(): Promise<{uai: string; teacher: TeacherAccount}> {
    const {setTeacherEnabled} = await import('../../../src/db/console.js')
    const r = await withDbContext(this.flags, this.io, (ctx) => setTeacherEnabled(ctx, this.args.uai, this.args.email, false))
    this.log(`${r.uai}: ${r.teacher.email} is now ${r.teacher.status}`)
    return r
  }
}
