import {Flags} from '@oclif/core'

import {BaseCommand, inventoryFlag, secretsDirFlag} from '../../src/cli/base-command.js'
import {ErrorCode, UserError} from '../../src/errors.js'
import type {ReencryptResult} from '../../src/secrets/store.js'

export default class CredentialsReencrypt extends BaseCommand<typeof CredentialsReencrypt> {
  static override summary = "Re-encrypt the secret store to the inventory's current recipients."
  static override description = `Run it after a technician joins or leaves (inventory \`recipients:\`), or when the CI key changes: every file of the store is decrypted with your key and encrypted again to exactly the inventory's recipients (plus your own key). Someone who left can no longer read the new files — but they may have copied the old ones: rotate the secrets that matter (\`pgi credentials rotate\`, hypervisor tokens). Files your key cannot read are listed and left as they are.`
  static override examples = [
    {description: 'After editing recipients in the inventory', command: '<%= config.bin %> <%= command.id %> -i inventory/'},
    {description: 'Only the hypervisor tokens', command: '<%= config.bin %> <%= command.id %> --prefix hypervisors/'},
  ]

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    prefix: Flags.string({summary: 'Only the secrets whose name starts with this (e.g. establishments/0130040Y/).'}),
  }

  async run(): Promise<ReencryptResult & {store: string}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {FleetSession} = await import('../../src/fleet/open.js')
    // the store alone: no establishment is selected, no hypervisor asked
    const store = (await FleetSession.open({inventory: this.flags.inventory, secretsDir: this.flags['secrets-dir'], store: 'always', warnRecipients: true, io: this.io})).secrets
    const r = await store.reencrypt(this.flags.prefix)
    for (const f of r.failed) this.io.warn(`${f.key}: ${f.message}`)
    if (r.failed.length > 0 && r.reencrypted.length === 0) {
      throw new UserError(ErrorCode.SECRET_DECRYPT, `none of the ${r.failed.length} secret(s) could be read with your key`, {
        details: {failed: r.failed},
        suggestions: [`Your public key is ${store.ownRecipients.join(', ')}: ask a technician who can read the store to add it to the recipients and run this command.`],
      })
    }
    this.table(['Re-encrypted', 'Not readable with your key', 'Recipients per file'], [[r.reencrypted.length, r.failed.length, r.recipients]])
    if (r.failed.length > 0) this.status = 1
    return {store: store.dir, ...r}
  }
}
