import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {uaiArg} from '../../src/cli/db.js'
import {handoffTarget, scratchImageResolver} from '../../src/cli/fleet.js'
import {handoffTargetFlags, imageRefFlag, imagesDirFlag, inventoryFlag, secondsFlag, secretsDirFlag} from '../../src/cli/flags.js'
import {ExitCode} from '../../src/exit-codes.js'
import type {RestoreResult} from '../../src/backup/restore.js'

export default class BackupRestore extends BaseCommand<typeof BackupRestore> {
  static override summary = "Rebuild an establishment's databases from its off-site copy on another establishment's server."
  static override description = `For when a server is lost: its databases come back from the off-site repository onto the VM of another establishment of the inventory (the replacement server, or a Région server while the school's hardware is replaced), deployed first with \`pgi deploy UAI2\`; or, with --to-lab, onto a new VM created from an image on the hypervisor of the inventory's offsite.drill (kept, its AMI gets a handoff for it).

The target VM restores the snapshot itself (restic, with the source's key from the secret store, given over the guest agent's standard input), checks each dump against the backup's manifest, restores every database, compares its row counts and business figures with the manifest before any database takes its name (a difference changes nothing), then logs in to each one with Tryton. The target's AMI gets a new handoff listing the databases.

Databases of the same name on the target are never overwritten unless --replace is given and confirmed by typing the target's UAI (or --yes); each one is kept first as a before-replace dump. Exit 1 when a database was restored but refused a Tryton login.`
  static override examples = [
    {description: "The lost server's latest copy onto its replacement", command: '<%= config.bin %> <%= command.id %> 0130040Y --to 0130099K'},
    {description: 'A given snapshot, as JSON', command: '<%= config.bin %> <%= command.id %> 0130040Y --snapshot 4f2a9c1e --to 0130099K --json'},
    {description: "While the school's hardware is replaced: onto a new VM on the Région's drill hypervisor", command: '<%= config.bin %> <%= command.id %> 0130040Y --to-lab'},
  ]

  static override args = {uai: uaiArg}
  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    to: Flags.string({summary: 'UAI of the establishment whose server receives the databases (deployed first).'}),
    'to-lab': Flags.boolean({summary: "Restore onto a new VM on the inventory's offsite.drill hypervisor instead (kept; the AMI gets a handoff for it).", default: false}),
    image: imageRefFlag({summary: "--to-lab: the image of the new VM (default: the establishment's inventory image, else the newest built)."}),
    'images-dir': imagesDirFlag,
    'agent-timeout': secondsFlag({summary: "--to-lab: seconds to wait for the new VM's guest agent.", default: 600}),
    'health-timeout': secondsFlag({summary: '--to-lab: seconds to wait for pgi-health to report healthy.', default: 1200}),
    snapshot: Flags.string({summary: 'The off-site snapshot to restore (`pgi backup list UAI --no-local`): an id, or latest.', default: 'latest'}),
    replace: Flags.boolean({summary: "Replace the target's databases of the same names (asks to type the target's UAI; each one is dumped first).", default: false}),
    ...handoffTargetFlags,
  }

  async run(): Promise<RestoreResult> {
    const {restoreBackup} = await import('../../src/backup/restore.js')
    const f = this.flags
    const r = await restoreBackup({
      inventoryPath: f.inventory,
      secretsDir: f['secrets-dir'],
      io: this.io,
      uai: this.args.uai,
      ...(f.to === undefined ? {} : {to: f.to}),
      toLab: f['to-lab'],
      resolveImage: scratchImageResolver(f['images-dir'], this.io, f.image),
      boot: {agentTimeoutMs: f['agent-timeout'], healthTimeoutMs: f['health-timeout']},
      snapshot: f.snapshot,
      replace: f.replace,
      ...(await handoffTarget(f, this.io)),
      confirm: (q) => this.confirmTyped(q, f.to ?? this.args.uai),
    })
    this.table(
      ['database', 'row counts', 'figures', 'login', 'replaced', 'seconds'],
      r.databases.map((d) => [d.name, d.row_counts_match ? 'match' : 'DIFFER', d.figures_checked ? 'match' : '-', d.login === null ? '-' : d.login ? 'ok' : `FAILED ${d.login_error ?? ''}`.trim(), d.replaced ? 'yes' : 'no', String(d.seconds)]),
    )
    if (!this.jsonEnabled()) {
      this.log(`${r.to}: ${r.databases.length} database(s) of ${r.from} restored from snapshot ${r.snapshot} (${r.snapshotTime}${r.set ? `, nightly set ${r.set}` : ''}) in ${r.seconds} s`)
      if (r.kept.length) this.log(`kept before replacing: ${r.kept.join(', ')}`)
      if (r.lab) this.log(`lab VM ${r.lab.vmid} on ${r.lab.hypervisor}/${r.lab.node} (${r.lab.address}) serves ${r.from}'s databases; it is kept`)
      if (r.handoff) this.log(`new handoff for ${r.to}'s AMI: ${r.handoff}`)
    }
    if (!r.loginOk) this.status = ExitCode.FAILURE
    return r
  }
}
