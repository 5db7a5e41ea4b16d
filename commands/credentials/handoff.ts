import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {handoffDirFlag, inventoryFlag, secretsDirFlag} from '../../src/cli/flags.js'
import type {HandoffConnection} from '../../src/fleet/handoff.js'
import type {HandoffRunResult} from '../../src/credentials/service.js'
import {UsageError} from '../../src/errors.js'
import {ExitCode} from '../../src/exit-codes.js'

export default class CredentialsHandoff extends BaseCommand<typeof CredentialsHandoff> {
  static override summary = "Write each establishment's access codes for its AMI, encrypted to the AMI's age key alone."
  static override description = `For each establishment, writes <out>/<UAI>.handoff.age: a French letter for the AMI with the VM address, the SSH login, the SQL administrator and Tryton admin logins, the web client URL and the desktop client profile. It is age-encrypted to the AMI's public key (inventory ami.age_recipient) and nobody else: the technician who writes it cannot read it back. The AMI opens it with \`pgi credentials open\` or \`age -d -i KEY FILE\`.

The passwords come from the secret store (written by \`pgi deploy\`); an establishment that has not been deployed yet fails with the secret it lacks, the others are written. No secret is ever printed.`
  static override examples = [
    {description: 'Write the handoff of one establishment', command: '<%= config.bin %> <%= command.id %> 0130040Y --out handoffs/'},
    {description: 'Write the handoffs of a group', command: '<%= config.bin %> <%= command.id %> --group bts-cg -i inventory/'},
    {description: 'Every establishment, result as JSON', command: '<%= config.bin %> <%= command.id %> --all --json'},
    {description: 'A lab VM reached through ports forwarded on loopback', command: '<%= config.bin %> <%= command.id %> 0130040Y --host 127.0.0.1 --ssh-port 10022 --postgresql-port 15432 --jsonrpc-port 18000 --web-url http://127.0.0.1:10080/'},
  ]

  static override strict = false
  static override args = {
    uai: Args.string({description: 'UAI of an establishment (several may be given).', required: false}),
  }

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    out: handoffDirFlag("Folder the handoff files are written to (deploy's default folder)."),
    'lab-dir': Flags.string({summary: "The inventory is a pgi lab's: give the AMI the lab's forwarded 127.0.0.1 ports (qemu labs).", helpGroup: 'CONNECTION'}),
    all: Flags.boolean({summary: 'Every establishment of the inventory.', default: false}),
    group: Flags.string({char: 'g', summary: 'The establishments of a group (inventory `groups:`).'}),
    host: Flags.string({summary: 'Address the AMI connects to, when not the inventory one (NAT, a lab forwarding ports on loopback). One establishment only.', helpGroup: 'CONNECTION'}),
    'ssh-port': Flags.integer({summary: 'SSH port the AMI connects to (default 22). One establishment only.', min: 1, max: 65535, helpGroup: 'CONNECTION'}),
    'postgresql-port': Flags.integer({summary: 'PostgreSQL port (default 5432). One establishment only.', min: 1, max: 65535, helpGroup: 'CONNECTION'}),
    'jsonrpc-port': Flags.integer({summary: "Tryton port for the desktop client (default 8000). One establishment only.", min: 1, max: 65535, helpGroup: 'CONNECTION'}),
    'web-url': Flags.string({summary: 'URL of the web client (default http://ADDRESS/). One establishment only.', helpGroup: 'CONNECTION'}),
    database: Flags.string({summary: 'Tryton database name given to the clients (default pgi).', helpGroup: 'CONNECTION'}),
  }

  async run(): Promise<HandoffRunResult> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const [{allFailedError, vmDatabaseReader, writeHandoffs}, {labConnection}, {FleetSession}] = await Promise.all([
      import('../../src/credentials/service.js'),
      import('../../src/lab/handoff-connection.js'),
      import('../../src/fleet/open.js'),
    ])
    const {argv} = await this.parse(CredentialsHandoff)
    const f = this.flags
    const fleet = await FleetSession.open({inventory: f.inventory, selection: {uais: argv as string[], all: f.all, group: f.group}, secretsDir: f['secrets-dir'], store: 'always', warnRecipients: true, io: this.io})
    let result
    try {
      const {establishments} = fleet
      const connection: HandoffConnection = {host: f.host, sshPort: f['ssh-port'], postgresqlPort: f['postgresql-port'], jsonrpcPort: f['jsonrpc-port'], webUrl: f['web-url'], database: f.database}
      const perSite = (['host', 'ssh-port', 'postgresql-port', 'jsonrpc-port', 'web-url'] as const).filter((k) => f[k] !== undefined)
      if (perSite.length > 0 && f['lab-dir']) throw new UsageError(`--${perSite[0]} and --lab-dir both say where the VM is: give one of them`)
      if (perSite.length > 0 && establishments.length > 1) {
        throw new UsageError(`--${perSite[0]} describes one VM, but ${establishments.length} establishments are selected`, {suggestions: ['Write the handoffs one establishment at a time when you override the address or ports.']})
      }
      // the letter lists the databases each VM has now (asked through its hypervisor)
      result = await writeHandoffs({establishments, store: fleet.secrets, outDir: f.out, io: this.io, connection: f['lab-dir'] ? labConnection(f['lab-dir'], {io: this.io}) : () => connection, databases: vmDatabaseReader(fleet.hypervisors, this.io)})
    } finally {
      await fleet.close()
    }
    if (result.written === 0 && result.failed > 0) throw allFailedError('handoff', result.establishments)
    if (result.failed > 0) this.status = ExitCode.PARTIAL
    this.table(
      ['UAI', 'AMI', 'Address', 'File', 'Result'],
      result.establishments.map((e) => (e.ok ? [e.uai, e.ami, e.address, e.file, 'written'] : [e.uai, '', '', '', `failed: ${String(e.error.code)} (see above)`])),
    )
    if (!this.jsonEnabled() && result.written > 0) {
      this.log(`\nSend each file to its AMI (e-mail is fine: only their key opens it). They read it with:\n  age -d -i THEIR_KEY FILE     or     pgi credentials open FILE --identity THEIR_KEY`)
    }
    return result
  }
}
