import {Flags} from '@oclif/core'

import {BaseCommand, inventoryFlag} from '../../src/cli/base-command.js'
import type {EstablishmentRow} from '../../src/inventory/report.js'

export default class InventoryList extends BaseCommand<typeof InventoryList> {
  static override summary = 'List the establishments of the inventory.'
  static override description = `One line per establishment: UAI, name, hypervisor/node, VM id, address, rollout ring and the image version the inventory wants. Filters combine (AND). The inventory must be valid (see \`pgi inventory validate\`).`

  static override examples = [
    {description: 'Every establishment:', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'The establishments of a group, in the example inventory:', command: '<%= config.bin %> <%= command.id %> -i inventory/example --group vaucluse'},
    {description: 'The canary ring, as JSON:', command: '<%= config.bin %> <%= command.id %> --ring canary --json'},
    {description: 'The establishments on one hypervisor:', command: '<%= config.bin %> <%= command.id %> --hypervisor hv-marseille'},
  ]

  static override flags = {
    inventory: inventoryFlag,
    group: Flags.string({char: 'g', summary: 'Only the members of this group (from `groups:`).'}),
    ring: Flags.string({char: 'r', summary: 'Only the establishments in this rollout ring.'}),
    hypervisor: Flags.string({summary: 'Only the establishments on this hypervisor.'}),
  }

  public async run(): Promise<EstablishmentRow[]> {
    const [{loadValidInventory}, {listEstablishments}] = await Promise.all([
      import('../../src/inventory/load.js'),
      import('../../src/inventory/report.js'),
    ])
    const inv = await loadValidInventory(this.flags.inventory)
    const rows = listEstablishments(inv, {group: this.flags.group, ring: this.flags.ring, hypervisor: this.flags.hypervisor})
    this.table(
      ['UAI', 'Name', 'Hypervisor/node', 'VM id', 'Address', 'Ring', 'Image'],
      rows.map((r) => [r.uai, r.name, `${r.hypervisor}/${r.node}`, r.vmid, r.address, r.ring, r.image ?? '—']),
    )
    if (!this.jsonEnabled() && rows.length === 0) this.io.info('no establishment matches')
    return rows
  }
}
