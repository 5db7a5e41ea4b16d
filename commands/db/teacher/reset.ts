import {BaseCommand} from '../../../src/cli/base-command.js'
import {consoleUrlFlag, dbFleetFlags, showCodeFlag, teacherEmailArg, teacherOutFlag, uaiArg, withDbContext} from '../../../src/cli/db.js'
import type {TeacherCodeOutput} from '../../../src/db/console.js'

export default class DbTeacherReset extends BaseCommand<typeof DbTeacherReset> {
  static override summary = "Reset a teacher's console password: it is forgotten, their sessions end, and a new one-time code is printed once."
  static override description = `For a teacher who forgot their password or lost their code. The teacher chooses a new password with the new code on /console/activer (valid 7 days). Their classes and databases are not touched.

The code is placed as \`pgi db teacher add\` places it: shown once on a terminal; otherwise in a file encrypted to the AMI (--out), or in the output with --show-code.`
  static override examples = [{description: 'A forgotten password', command: '<%= config.bin %> <%= command.id %> 0130040Y marie.curie@ac-aix-marseille.fr'}]

  static override args = {uai: uaiArg, email: teacherEmailArg}
  static override flags = {...dbFleetFlags, 'console-url': consoleUrlFlag, 'show-code': showCodeFlag, out: teacherOutFlag}

  async run(): Promise<TeacherCodeOutput> {
    const {codePlacement, placeTeacherCode, resetTeacher} = await import('../../../src/db/console.js')
    const f = this.flags
    await this.confirm(`Reset the console password of ${this.args.email} (${this.args.uai})? Their sessions end; they choose a new password with a new code.`)
    const placement = codePlacement({showCode: f['show-code'], json: this.jsonEnabled(), interactive: this.io.interactive, stdoutTty: Boolean(process.stdout.isTTY), outDir: f.out})
    return withDbContext(f, this.io, async (ctx) => {
      const r = await resetTeacher(ctx, this.args.uai, this.args.email, {placement, ...(f['console-url'] ? {consoleUrl: f['console-url']} : {})})
      return placeTeacherCode(ctx, r, placement, (line) => this.log(line))
    })
  }
}
