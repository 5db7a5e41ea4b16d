import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {HandoffJson} from '../../src/fleet/handoff.js'

export default class CredentialsOpen extends BaseCommand<typeof CredentialsOpen> {
  static override summary = 'Decrypt a handoff file with your age key and show your access codes.'
  static override description = `For the AMI: decrypts <UAI>.handoff.age with your age identity (the key file made by age-keygen) and shows the accesses as a table (--text for the full letter with instructions, --json for scripts). This is the only pgi command that shows passwords: to the person holding the key, on request. The standard tool works too: age -d -i KEY FILE.`
  static override examples = [
    {description: 'Show the access codes', command: '<%= config.bin %> <%= command.id %> 0130040Y.handoff.age --identity ~/.config/age/ami.key'},
    {description: 'Read the whole letter (what each access is for, how to change passwords)', command: '<%= config.bin %> <%= command.id %> 0130040Y.handoff.age -k ami.key --text'},
    {description: 'As JSON', command: '<%= config.bin %> <%= command.id %> 0130040Y.handoff.age -k ami.key --json'},
  ]

  static override args = {
    file: Args.string({description: 'The handoff file (<UAI>.handoff.age).', required: true}),
  }

  static override flags = {
    identity: Flags.string({char: 'k', summary: 'Your age identity file (repeat for several).', env: 'PGI_AMI_IDENTITY', multiple: true, required: true}),
    text: Flags.boolean({summary: 'Print the whole letter instead of the table.', default: false}),
  }

  async run(): Promise<HandoffJson> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {openHandoffForOwner} = await import('../../src/credentials/service.js')
    const {handoff: h, text} = await openHandoffForOwner(this.args.file, this.flags.identity)
    if (this.jsonEnabled()) return h
    if (this.flags.text) {
      this.log(text.slice(0, text.indexOf("Données du document pour l'outil pgi")).trimEnd())
      return h
    }
    this.log(`${h.establishment.name} (UAI ${h.establishment.uai}) — VM ${h.vm.name}, ${h.vm.address} — issued ${h.issued_at}`)
    if (h.vm.note) this.log(`Note: ${h.vm.note}`)
    const hp = (host: string, port: number) => `${host}:${port}`
    this.table(
      ['Access', 'Where', 'Login', 'Password'],
      [
        ['SSH (remote login)', hp(h.ssh.host, h.ssh.port), h.ssh.login, h.ssh.password],
        ['PostgreSQL (SQL administrator)', hp(h.postgresql.host, h.postgresql.port), h.postgresql.login, h.postgresql.password],
        ['Tryton admin', h.databases ? `databases ${h.databases.map((d) => d.name).join(', ') || '(none yet)'}` : `database ${h.desktop_client.database}`, h.tryton_admin.login, h.tryton_admin.password],
        ['Web client (thin)', h.web_client.url, '', ''],
        ...(h.console ? [["Teachers' console", h.console.url, `AMI page: ${h.postgresql.login}`, '(SQL administrator)']] : []),
        [`Desktop client (${h.desktop_client.client})`, hp(h.desktop_client.host, h.desktop_client.port), h.desktop_client.username, '(Tryton admin)'],
      ],
    )
    if (h.ssh.host_key_fingerprints.length > 0) this.log(`SSH host key: ${h.ssh.host_key_fingerprints.join(', ')}`)
    if (h.console) this.log(`HTTPS certificate (SHA-256): ${h.console.tls_sha256}`)
    this.log('Run again with --text for what each access is for and how to change the passwords.')
    return h
  }
}
