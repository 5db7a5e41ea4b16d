import {join} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {handoffDirFlag, inventoryFlag, secretsDirFlag} from '../../src/cli/flags.js'
import type {CredentialsOverviewRow} from '../../src/credentials/service.js'

export default class CredentialsList extends BaseCommand<typeof CredentialsList> {
  static override summary = 'Show, per establishment, which secrets exist, unfinished rotations and handoff files.'
  static override description = `Reads only file names (no secret is decrypted, none is shown): for each establishment, whether its three secrets are in the store, whether a rotation was interrupted, when its handoff file was written, and what to run next. Every establishment when none is named.`
  static override examples = [
    {description: 'The whole inventory', command: '<%= config.bin %> <%= command.id %> -i inventory/'},
    {description: 'One group, as JSON', command: '<%= config.bin %> <%= command.id %> --group bts-cg --json'},
  ]

  static override strict = false
  static override args = {
    uai: Args.string({description: 'UAI of an establishment (several may be given; default: all).', required: false}),
  }

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    out: handoffDirFlag('Folder of the handoff files.'),
    group: Flags.string({char: 'g', summary: 'The establishments of a group (inventory `groups:`).'}),
  }

  async run(): Promise<CredentialsOverviewRow[]> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const [{credentialsOverview}, {FleetSession}] = await Promise.all([import('../../src/credentials/service.js'), import('../../src/fleet/open.js')])
    const {argv} = await this.parse(CredentialsList)
    const uais = argv as string[]
    // no hypervisor is asked: the overview reads the store's file names and the handoff folder
    const fleet = await FleetSession.open({
      inventory: this.flags.inventory,
      selection: {uais, group: this.flags.group, all: uais.length === 0 && this.flags.group === undefined},
      secretsDir: this.flags['secrets-dir'],
      store: 'always',
      warnRecipients: true,
      io: this.io,
    })
    const rows = await credentialsOverview({establishments: fleet.establishments, store: fleet.secrets, outDir: this.flags.out})
    this.table(
      ['UAI', 'Establishment', 'Secrets', 'Rotation', 'Handoff', 'Next'],
      rows.map((r) => [
        r.uai,
        r.name,
        r.missing.length === 0 ? 'all 3' : r.secrets.length === 0 ? 'none' : `missing ${r.missing.join(', ')}`,
        r.pending.length > 0 ? `unfinished (${r.pending.join(', ')})` : '',
        r.handoff ? r.handoff.written.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : 'not written',
        r.next ?? '',
      ]),
    )
    return rows
  }
}
