import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {classOutFlag, dbFleetFlags, dbNameFlag, prefixFlag, teacherFlag, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {ClassResult} from '../../src/db/service.js'

export default class DbClass extends BaseCommand<typeof DbClass> {
  static override summary = "Make a class's databases from a model and a CSV of students; passwords go to a file for the AMI."
  static override description = `per-student (default): one database per student, PREFIX_prenom_nom, copied from the model, each with a Tryton login for the student and one for the teacher. shared: one database PREFIX with one login per student (several students on one company file).

The CSV is the school software's export (SIECLE, Pronote) or a spreadsheet's: nom;prénom;classe (or one "élève" column "NOM Prénom"), UTF-8 or Windows-1252, ; , or tab. It is checked here first: every bad line is reported with its number and nothing is made. All or nothing in the VM too: on any error, every database made is dropped.

The generated passwords are never shown: they are written to one file encrypted to the establishment's AMI (inventory ami.age_recipient), <UAI>-<class>-<date>.class.age in --out; the AMI opens it with \`age -d -i KEY FILE\` and hands each student their login.`
  static override examples = [
    {description: 'A class of BTS CG first-years, one database each', command: '<%= config.bin %> <%= command.id %> 0130040Y --model modele_cg1 --students bts-cg1.csv'},
    {description: 'One shared database for a group', command: '<%= config.bin %> <%= command.id %> 0130040Y --model modele_cg1 --students groupe-a.csv --mode shared --prefix cg1_groupe_a'},
  ]

  static override args = {uai: uaiArg}
  static override flags = {
    ...dbFleetFlags,
    model: dbNameFlag('model', 'The model database the class is copied from.', {required: true}),
    students: Flags.string({summary: 'The CSV of students (nom;prénom;classe).', required: true}),
    mode: Flags.string({summary: 'per-student: one database each; shared: one database for the class.', options: ['per-student', 'shared'], default: 'per-student'}),
    prefix: prefixFlag,
    teacher: teacherFlag,
    label: Flags.string({summary: 'Class label shown in `pgi db list` (default: the CSV\'s class code).'}),
    'keep-connections': Flags.boolean({summary: "Never close Tryton's connections to the model (copy by dump when it is in use).", default: false}),
    out: classOutFlag,
  }

  async run(): Promise<ClassResult> {
    const {makeClass} = await import('../../src/db/service.js')
    const f = this.flags
    const r = await withDbContext(f, this.io, (ctx) =>
      makeClass(ctx, this.args.uai, {
        model: f.model as string,
        studentsFile: f.students,
        mode: f.mode as 'per-student' | 'shared',
        ...(f.prefix ? {prefix: f.prefix} : {}),
        teacher: f.teacher,
        ...(f.label ? {label: f.label} : {}),
        keepConnections: f['keep-connections'],
        outDir: f.out,
      }),
    )
    this.table(
      ['database', 'student login', 'name', 'CSV line'],
      r.databases.flatMap((d) => d.students.map((s) => [d.name, s.login, `${s.first_name} ${s.last_name}`, s.line])),
    )
    this.log(`${r.uai}: class ${r.class}: ${r.databases.length} database(s), ${r.students} student(s) from ${r.model} in ${r.seconds} s; teacher login ${r.teacher.login}${r.teacher.created ? ' (created)' : ' (already in the model)'}`)
    this.log(`Passwords (for the AMI only, encrypted): ${r.passwords_file}`)
    return r
  }
}
