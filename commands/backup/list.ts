import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {humanBytes, uaiArg} from '../../src/cli/db.js'
import {inventoryFlag, secretsDirFlag} from '../../src/cli/flags.js'
import {ExitCode} from '../../src/exit-codes.js'
import type {BackupListResult} from '../../src/backup/service.js'

export default class BackupList extends BaseCommand<typeof BackupList> {
  static override summary = "List an establishment's backups: on its data disk and off-site, newest first."
  static override description = `Local: the nightly sets (every database) and the per-database dumps on the server's data disk, read over the guest agent (the VM must run). Off-site: the snapshots in the establishment's repository (inventory \`offsite:\`), read with restic on this machine with the key in the secret store — they are listed even when the server is gone. VERIFIED is the restore check of the set (pgi-backup --verify); for a snapshot, that of the set it holds while that set is still on the data disk. Exit 4 when one of the two places could not be read (the other is listed).`
  static override examples = [
    {description: 'Both places', command: '<%= config.bin %> <%= command.id %> 0130040Y'},
    {description: 'Only the off-site copies, as JSON', command: '<%= config.bin %> <%= command.id %> 0130040Y --no-local --json'},
  ]

  static override args = {uai: uaiArg}
  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    local: Flags.boolean({summary: 'Read the local backups (over the guest agent).', default: true, allowNo: true}),
    offsite: Flags.boolean({summary: 'Read the off-site snapshots (restic, on this machine).', default: true, allowNo: true}),
  }

  async run(): Promise<BackupListResult> {
    const {listBackups} = await import('../../src/backup/service.js')
    const r = await listBackups({inventoryPath: this.flags.inventory, secretsDir: this.flags['secrets-dir'], io: this.io, uai: this.args.uai, local: this.flags.local, offsite: this.flags.offsite})
    this.table(
      ['where', 'id', 'kind', 'date', 'size', 'databases', 'verified'],
      r.backups.map((b) => [
        b.where,
        b.id,
        b.kind === 'snapshot' && b.set ? `snapshot of ${b.set}` : b.kind,
        b.date,
        b.size === null ? '' : humanBytes(b.size),
        b.databases.length > 3 ? `${b.databases.slice(0, 3).join(', ')} +${b.databases.length - 3}` : b.databases.join(', '),
        b.verified ? (b.verified.ok ? `ok (${b.verified.method})` : 'FAILED') : '',
      ]),
    )
    // what was asked and could not be read: the listing is partial
    if (r.localError || r.offsiteError) this.status = ExitCode.PARTIAL
    if (!this.jsonEnabled()) {
      if (r.localError) this.warn(`${r.uai}: local backups not read: ${r.localError}`)
      if (r.offsiteError) this.warn(`${r.uai}: off-site snapshots not read: ${r.offsiteError}`)
      if (r.backups.length === 0 && !r.localError && !r.offsiteError) this.log(`${r.uai}: no backup yet`)
    }
    return r
  }
}
