import {join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {handoffDirFlag, inventoryFlag, secretsDirFlag} from '../../src/cli/flags.js'
import {ESTABLISHMENT_SECRETS, type EstablishmentSecretName} from '../../src/fleet/secret-names.js'
import type {RotateRunResult} from '../../src/credentials/service.js'
import {ExitCode} from '../../src/exit-codes.js'

export default class CredentialsRotate extends BaseCommand<typeof CredentialsRotate> {
  static override summary = "Change an establishment's passwords: in the VM first, then in the secret store, then a new handoff."
  static override description = `Generates new passwords (SQL administrator, Tryton admin, the AMI's login), sets them in the VM through the guest agent (on stdin, never on a command line), saves them in the secret store and writes a new handoff for the AMI. The old passwords stop working: send the AMI the new file.

Safe to interrupt: the new passwords are saved in the store (encrypted, as "pending") before anything changes in the VM, so running the same command again finishes the rotation with them.`
  static override examples = [
    {description: 'Rotate every secret of one establishment', command: '<%= config.bin %> <%= command.id %> 0130040Y --out handoffs/'},
    {description: "Only the AMI's password, without a question (CI)", command: '<%= config.bin %> <%= command.id %> 0130040Y --only ami-password --yes'},
    {description: 'Finish a rotation that was interrupted', command: '<%= config.bin %> <%= command.id %> 0130040Y --yes'},
  ]

  static override strict = false
  static override args = {
    uai: Args.string({description: 'UAI of the establishment (several may be given).', required: true}),
  }

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    out: handoffDirFlag("Folder the new handoff files are written to (deploy's default folder)."),
    'lab-dir': Flags.string({summary: "The inventory is a pgi lab's: give the AMI the lab's forwarded 127.0.0.1 ports (qemu labs)."}),
    only: Flags.string({summary: 'Rotate only these secrets (default: all).', options: [...ESTABLISHMENT_SECRETS], multiple: true}),
  }

  async run(): Promise<RotateRunResult> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const [{allFailedError, rotateSecrets}, {labConnection}, {FleetSession}] = await Promise.all([
      import('../../src/credentials/service.js'),
      import('../../src/lab/handoff-connection.js'),
      import('../../src/fleet/open.js'),
    ])
    const {argv} = await this.parse(CredentialsRotate)
    const fleet = await FleetSession.open({inventory: this.flags.inventory, selection: {uais: argv as string[]}, secretsDir: this.flags['secrets-dir'], store: 'always', warnRecipients: true, io: this.io})
    let result
    try {
      const {establishments} = fleet
      await this.confirm(`Change the passwords of ${establishments.map((e) => e.uai).join(', ')}? The AMI will need the new handoff file.`)
      result = await rotateSecrets({hypervisors: fleet.hypervisors, establishments, store: fleet.secrets, outDir: this.flags.out, only: this.flags.only as EstablishmentSecretName[] | undefined, io: this.io, connection: this.flags['lab-dir'] ? labConnection(this.flags['lab-dir'], {io: this.io}) : undefined})
    } finally {
      await fleet.close()
    }
    if (result.rotated === 0) throw allFailedError('rotation', result.establishments)
    if (result.failed > 0) this.status = ExitCode.PARTIAL
    this.table(
      ['UAI', 'Rotated', 'Resumed', 'Handoff', 'Result'],
      result.establishments.map((e) => (e.ok ? [e.uai, e.rotated.join(', '), e.resumed ? 'yes' : 'no', e.handoff.file, 'done'] : [e.uai, '', '', '', `failed: ${String(e.error.code)} (see above)`])),
    )
    return result
  }
}
