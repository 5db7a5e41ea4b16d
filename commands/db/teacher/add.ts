import {BaseCommand} from '../../../src/cli/base-command.js'
import {consoleUrlFlag, dbFleetFlags, showCodeFlag, teacherEmailFlag, teacherNameFlag, teacherOutFlag, uaiArg, withDbContext} from '../../../src/cli/db.js'
import type {TeacherCodeOutput} from '../../../src/db/console.js'

export default class DbTeacherAdd extends BaseCommand<typeof DbTeacherAdd> {
  static override summary = "Give a teacher an account in the teachers' console; prints their one-time activation code, once."
  static override description = `The account is made in the console of the establishment's PGI server (https://<server>/console/), through its VM's guest agent. The teacher chooses their own password with a one-time code (valid 7 days, kept in the VM only as a keyed hash: this command's output is its only copy), on the console's page /console/activer.

Where the code goes: on a terminal, it is shown once, for the AMI to hand to the teacher, and written nowhere. Without a terminal (a script, CI, --json), it is never printed: it goes into a file encrypted to the establishment's AMI (inventory ami.age_recipient, as the handoff), <UAI>-<email>-<date>.teacher.age in --out; \`age -d -i KEY FILE\` opens it. --show-code puts it in the output all the same (in --json: setup_code), for a script that hands it on at once. A lost code is replaced with \`pgi db teacher reset\`.`
  static override examples = [
    {description: 'A new teacher (the code is shown on the terminal)', command: '<%= config.bin %> <%= command.id %> 0130040Y --name "Marie Curie" --email marie.curie@ac-aix-marseille.fr'},
    {description: 'In a script: the code goes into a file encrypted to the AMI', command: '<%= config.bin %> <%= command.id %> 0130040Y --name "Marie Curie" --email marie.curie@ac-aix-marseille.fr --json'},
  ]

  static override args = {uai: uaiArg}
  static override flags = {
    ...dbFleetFlags,
    name: teacherNameFlag,
    email: teacherEmailFlag,
    'console-url': consoleUrlFlag,
    'show-code': showCodeFlag,
    out: teacherOutFlag,
  }

  async run(): Promise<TeacherCodeOutput> {
    const {addTeacher, codePlacement, placeTeacherCode} = await import('../../../src/db/console.js')
    const f = this.flags
    const placement = codePlacement({showCode: f['show-code'], json: this.jsonEnabled(), interactive: this.io.interactive, stdoutTty: Boolean(process.stdout.isTTY), outDir: f.out})
    return withDbContext(f, this.io, async (ctx) => {
      const r = await addTeacher(ctx, this.args.uai, {name: f.name, email: f.email, placement, ...(f['console-url'] ? {consoleUrl: f['console-url']} : {})})
      return placeTeacherCode(ctx, r, placement, (line) => this.log(line))
    })
  }
}
