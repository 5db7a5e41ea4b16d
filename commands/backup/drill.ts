import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {scratchImageResolver} from '../../src/cli/fleet.js'
import {imageRefFlag, imagesDirFlag, inventoryFlag, secondsFlag, secretsDirFlag} from '../../src/cli/flags.js'
import type {DrillResult} from '../../src/backup/drill.js'

export default class BackupDrill extends BaseCommand<typeof BackupDrill> {
  static override summary = 'Prove that off-site copies become working servers: restore them into scratch VMs, check, remove.'
  static override description = `For each establishment drilled (every one named, or --sample N of --all / a group chosen at random; --all when none is named), the latest off-site snapshot is restored into a scratch VM created from an image on the hypervisor of the inventory's offsite.drill, booted, and checked as \`pgi backup restore\` checks a restore: each dump's sha256 against the manifest, every database restored, its row counts and figures equal to the manifest's, a Tryton login on each. The outcome (date, snapshot, databases, pass or the reason of the failure) is recorded for \`pgi status\` (age of the last good drill). The scratch VM and its disks are then removed, also after a failure; one left by a killed drill is removed by the next.

Exit 5 when a drill failed, 4 when every drill passed but a scratch VM could not be removed.`
  static override examples = [
    {description: 'The weekly drill of one establishment chosen at random', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'Three of a group', command: '<%= config.bin %> <%= command.id %> --group nord --sample 3'},
    {description: 'Given establishments, as JSON', command: '<%= config.bin %> <%= command.id %> 0130040Y 0130099K --json'},
  ]

  static override strict = false
  static override args = {uai: Args.string({description: 'UAI of an establishment to drill (several may be given: all are drilled).', required: false})}
  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    all: Flags.boolean({summary: 'Sample among every establishment of the inventory (the default when none is named).'}),
    group: Flags.string({char: 'g', summary: 'Sample among the establishments of a group (inventory `groups:`).'}),
    sample: Flags.integer({summary: 'How many establishments to drill, chosen at random (ignored when UAIs are named).', default: 1}),
    image: imageRefFlag({summary: "The image of the scratch VMs (default: each establishment's inventory image, else the newest built)."}),
    'images-dir': imagesDirFlag,
    'agent-timeout': secondsFlag({summary: "Seconds to wait for a scratch VM's guest agent.", default: 600}),
    'health-timeout': secondsFlag({summary: 'Seconds to wait for pgi-health to report healthy.', default: 1200}),
  }

  async run(): Promise<DrillResult> {
    const {argv} = await this.parse(BackupDrill)
    const uais = argv as string[]
    const f = this.flags
    const {runDrill} = await import('../../src/backup/drill.js')
    const r = await runDrill({
      inventoryPath: f.inventory,
      secretsDir: f['secrets-dir'],
      io: this.io,
      selection: uais.length > 0 ? {uais} : f.group !== undefined ? {group: f.group} : {all: true},
      sample: f.sample,
      resolveImage: scratchImageResolver(f['images-dir'], this.io, f.image),
      agentTimeoutMs: f['agent-timeout'],
      healthTimeoutMs: f['health-timeout'],
    })
    this.table(
      ['UAI', 'drill', 'snapshot', 'databases', 'scratch VM', 'seconds', 'reason'],
      r.drills.map((d) => [
        d.uai,
        d.ok ? 'passed' : 'FAILED',
        d.snapshot ? `${d.snapshot} (${d.snapshotTime ?? ''})` : '-',
        d.databases.map((x) => x.name).join(' ') || '-',
        d.scratch.vmid === null ? '-' : `${d.scratch.vmid} ${d.scratch.removed ? 'removed' : `NOT REMOVED: ${d.scratch.removeError ?? ''}`}`,
        String(d.seconds),
        d.reason ?? '',
      ]),
    )
    if (!this.jsonEnabled() && r.leftoversRemoved.length) this.log(`scratch VMs left by an earlier drill removed: ${r.leftoversRemoved.join(', ')}`)
    this.status = r.exitCode
    return r
  }
}
