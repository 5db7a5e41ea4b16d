import {Args} from '@oclif/core'

import {BaseCommand, inventoryFlag} from '../../src/cli/base-command.js'
import type {EstablishmentDetail, HypervisorDetail} from '../../src/inventory/report.js'

export default class InventoryShow extends BaseCommand<typeof InventoryShow> {
  static override summary = 'Show one establishment (by UAI) or one hypervisor (by name), resolved.'
  static override description = `Shows the values pgi will use, with the inventory's defaults applied and where the entry is defined (file:line:column). Secrets are never shown: only where they come from (an environment variable, and whether it is set here, or a key of the secret store).`

  static override examples = [
    {description: 'An establishment of the example inventory:', command: '<%= config.bin %> <%= command.id %> 0130040Y -i inventory/example'},
    {description: 'A hypervisor, and where its API token secret comes from:', command: '<%= config.bin %> <%= command.id %> hv-avignon -i inventory/example'},
    {description: 'As JSON:', command: '<%= config.bin %> <%= command.id %> 0840004Y --json'},
  ]

  static override args = {
    target: Args.string({description: 'UAI of an establishment, or name of a hypervisor.', required: true}),
  }

  static override flags = {inventory: inventoryFlag}

  public async run(): Promise<EstablishmentDetail | HypervisorDetail> {
    const [{loadValidInventory}, {describeTarget}] = await Promise.all([
      import('../../src/inventory/load.js'),
      import('../../src/inventory/report.js'),
    ])
    const inv = await loadValidInventory(this.flags.inventory)
    const d = describeTarget(inv, this.args.target)
    if (!this.jsonEnabled()) this.log(render(d))
    return d
  }
}

function render(d: EstablishmentDetail | HypervisorDetail): string {
  const rows: [string, string][] = []
  if (d.kind === 'establishment') {
    const w = d.maintenanceWindow
    rows.push(
      ['UAI', d.uai],
      ['Name', d.name],
      ['Académie', d.academie],
      ['Hypervisor/node', `${d.hypervisor}/${d.node}`],
      ['VM id', String(d.vmid)],
      ['Ring', d.ring],
      ['Image', d.image ?? '—'],
      ['Groups', d.groups.join(', ') || '—'],
      ['Address', d.network.address],
      ['Gateway', d.network.gateway],
      ['DNS', d.network.dns.join(', ') || '—'],
      ['Search domain', d.network.searchdomain ?? '—'],
      ['Disks', `OS ${d.osDiskGb} GiB, data ${d.dataDiskGb} GiB`],
      ['CPU/memory', `${d.cores} vCPU, ${d.memoryMb} MiB`],
      ['AMI', `${d.ami.name}${d.ami.email ? ` <${d.ami.email}>` : ''} (login ${d.ami.login})`],
      ['AMI age key', d.ami.ageRecipient],
      ['AMI SSH key', d.ami.sshKey ?? '—'],
      ['Maintenance', w ? `${w.days.join(',')} ${w.start}–${w.end} ${w.timezone}` : 'any time'],
      ['Databases', d.databases.map((b) => `${b.name} (company "${b.company}", fiscal year ${b.fiscalYear ?? 'current'}, chart ${b.chart}, ${b.currency})`).join('; ') || 'none declared'],
      ['Defined at', d.source],
    )
  } else {
    const s = d.token.secret
    rows.push(
      ['Hypervisor', d.name],
      ['API URL', d.url],
      ['Nodes', d.nodes.join(', ')],
      ['PVE version', d.pveVersion ?? 'unknown'],
      ['TLS', [d.tls.fingerprint && `pinned SHA-256 ${d.tls.fingerprint}`, d.tls.caFile && `CA ${d.tls.caFile}`].filter(Boolean).join('; ')],
      ['Token id', d.token.id],
      ['Token secret', s.from === 'env' ? `environment variable ${s.name} (${s.set ? 'set' : 'NOT set'} here)` : `secret store key ${s.key}`],
      ['Storage', `OS ${d.storage.os}, data ${d.storage.data}, import ${d.storage.import}`],
      ['Bridge', d.bridge],
      ['SSH', d.ssh ? `${d.ssh.user}@${d.ssh.host}:${d.ssh.port}` : '—'],
      ['Establishments', d.establishments.join(', ') || '—'],
      ['Defined at', d.source],
    )
  }
  const width = Math.max(...rows.map(([k]) => k.length))
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n')
}
