import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {LabSummary} from '../../src/lab/lab.js'

export default class LabStatus extends BaseCommand<typeof LabStatus> {
  static override summary = 'Show the local lab: its nodes, their VMs and how to reach each VM.'
  static override description = `Says whether the lab daemon runs, lists each lab node (URL, certificate fingerprint, daemon pid, VMs) and each VM with its state and, for the qemu backend, the forwarded loopback ports that reach it. The lab is for training and tests; production runs real Proxmox VE.`

  static override examples = [
    {description: 'Status of the default lab:', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'As JSON, for a lab in another folder:', command: '<%= config.bin %> <%= command.id %> --dir /tmp/lab --json'},
  ]

  static override flags = {
    dir: Flags.string({summary: 'Lab folder.', env: 'PGI_LAB_DIR'}),
  }

  public async run(): Promise<LabSummary> {
    const {labStatus} = await import('../../src/lab/lab.js')
    const s = await labStatus({dir: this.flags.dir})
    if (!this.jsonEnabled()) {
      this.log(`LAB in ${s.dir}: ${s.running ? `running (daemon pid ${s.daemon?.pid})` : 'stopped'} — ${s.backend} backend, behaves as PVE ${s.pveVersion}; not production.`)
    }
    this.table(['Node', 'URL', 'Fingerprint (SHA-256)', 'PID', 'VMs', 'Running'], s.nodes.map((n) => [n.name, n.url, n.fingerprint, n.pid, n.vms, n.running]))
    if (s.vms.length > 0) {
      this.table(['Node', 'VM id', 'Name', 'Status', 'Reach it'], s.vms.map((v) => [v.node, v.vmid, v.name, v.lock ? `${v.status} (lock ${v.lock})` : v.status, v.access ? Object.entries(v.access.endpoints).map(([k, e]) => `${k} ${e}`).join(', ') || v.access.note : '']))
    }
    if (!this.jsonEnabled()) this.log(`Inventory: ${s.inventory}   (export PGI_INVENTORY=${s.env.PGI_INVENTORY} PGI_SECRETS_DIR=${s.env.PGI_SECRETS_DIR})`)
    return s
  }
}
