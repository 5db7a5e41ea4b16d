import {dirname} from 'node:path'

import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../src/cli/base-command.js'
import {handoffTarget, imageResolver} from '../src/cli/fleet.js'
import {bwlimitFlag, handoffTargetFlags, imageRefFlag, imagesDirFlag, reportFlag, secondsFlag, selectionFlags} from '../src/cli/flags.js'
import type {DeployReport, PlanRow} from '../src/deploy/service.js'
import {deploySuite} from '../src/report/suites.js'

export default class Deploy extends BaseCommand<typeof Deploy> {
  static override summary = 'Deploy the PGI image to establishments: plan, then create or fix their VMs.'

  static override description = `Compares the inventory with what each hypervisor holds and prints the plan (create / continue / drifted / up to date / blocked), then — after confirmation — stages the signed image on each node once, creates the VMs (OS disk imported, data disk, cloud-init), starts them, waits for the guest agent and pgi-health, sets each establishment's secrets through the guest agent, creates the establishment's declared databases that are missing (inventory databases:, default one database pgi: a copy of the image's template with the company, French chart of accounts and fiscal year; an existing database is never touched) and logs into each, then writes the AMI handoff files, which list the databases the VM has.

Establishments run in parallel (--max-parallel, and at most --max-per-hypervisor on one hypervisor); one failing does not stop the others. Running deploy again after success changes nothing and says so; after an interruption it continues each VM from where it really is.

Exit codes: 0 all done or up to date, 4 some establishments failed (see the summary), 8 every hypervisor unreachable or its certificate does not match the pin.`

  static override examples = [
    {description: 'Show what would be done for every establishment, change nothing.', command: '<%= config.bin %> deploy --all --dry-run'},
    {description: 'Deploy two establishments.', command: '<%= config.bin %> deploy 0130040Y 0840004Y'},
    {description: 'Deploy a group, 20 at a time, without questions (CI).', command: '<%= config.bin %> deploy --group vaucluse --max-parallel 20 --yes'},
    {description: 'Deploy a given image version, staged from a mirror.', command: '<%= config.bin %> deploy --all --image 2026.11.0 --image-url https://mirror.example/pgi/{file} --yes'},
    {description: 'Deploy an image other than the reference one (NAME@VERSION).', command: '<%= config.bin %> deploy 0130040Y --image pgi-tryton-lab@2026.11.0'},
  ]

  static override strict = false

  static override args = {
    uai: Args.string({description: 'UAI(s) of the establishments to deploy.', required: false}),
  }

  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    image: imageRefFlag({summary: 'Image to deploy: VERSION (of pgi-tryton) or NAME@VERSION (default: each establishment\'s `image:`, else the newest built pgi-tryton).', env: 'PGI_IMAGE'}),
    'image-url': Flags.string({summary: 'Stage the image on nodes with download-url from this URL ({file} = image file name) instead of uploading it.'}),
    bwlimit: bwlimitFlag,
    'dry-run': Flags.boolean({summary: 'Print the plan and stop: nothing is sent to any hypervisor but reads.', default: false}),
    'max-parallel': Flags.integer({summary: 'Establishments deployed at once.', default: 10, min: 1}),
    'max-per-hypervisor': Flags.integer({summary: 'Establishments deployed at once on one hypervisor.', default: 4, min: 1}),
    ...handoffTargetFlags,
    'agent-timeout': secondsFlag({summary: 'Seconds to wait for a new VM\'s guest agent (software-emulated boots are slow).', default: 600}),
    'health-timeout': secondsFlag({summary: 'Seconds to wait for pgi-health to report healthy.', default: 1200}),
    report: reportFlag,
  }

  public async run(): Promise<DeployReport> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const [{newestImage}, {planExitCode, runDeploy}] = await Promise.all([import('../src/deploy/image.js'), import('../src/deploy/service.js')])
    const f = this.flags
    const report = await runDeploy({
      inventoryPath: f.inventory,
      // the UAIs are every positional argument (strict = false)
      selection: {uais: this.positionals, all: f.all, group: f.group},
      secretsDir: f['secrets-dir'],
      // no --image: each establishment's `image:`, else the newest built image
      image: f.image,
      defaultImage: f.image ? undefined : await newestImage(f['images-dir']),
      resolveImage: imageResolver(f['images-dir'], this.io),
      imageUrl: f['image-url'],
      bwlimitKiB: f.bwlimit,
      dryRun: f['dry-run'],
      maxParallel: f['max-parallel'],
      maxPerHypervisor: f['max-per-hypervisor'],
      agentTimeoutMs: f['agent-timeout'],
      healthTimeoutMs: f['health-timeout'],
      io: this.io,
      confirm: (q) => this.confirm(q),
      ...(await handoffTarget(f, this.io)),
      showPlan: (rows) => this.showPlan(rows),
    })
    if (report.result) {
      this.status = report.result.exitCode
      this.table(
        ['UAI', 'hypervisor/node', 'VM', 'outcome', 'detail'],
        report.result.outcomes.map((o) => [o.uai, `${o.hypervisor}/${o.node}`, o.vmid, o.outcome, o.error ? `[${o.error.code}] ${o.detail}` : o.detail]),
      )
      const c = report.result.counts
      const dirs = [...new Set(report.result.outcomes.flatMap((o) => (o.handoff ? [dirname(o.handoff)] : [])))]
      this.io.info(`summary: ${c.created} created, ${c.updated} updated, ${c['up-to-date']} up to date, ${c.drifted} drifted (left as is), ${c.failed} failed, ${c.blocked} blocked; handoffs in ${dirs.length > 0 ? dirs.join(', ') : report.handoffDir}`)
    } else if (report.dryRun) {
      this.status = planExitCode(report.plan)
      this.io.info('dry run: nothing was changed')
    }
    await this.writeReports(deploySuite(this.commandLine(), report, this.startedAt, this.status))
    return report
  }

  private showPlan(rows: PlanRow[]): void {
    this.table(
      ['UAI', 'name', 'hypervisor/node', 'VM', 'image', 'plan', 'detail'],
      rows.map((r) => [r.uai, r.name, `${r.hypervisor}/${r.node}`, r.vmid, r.image, r.action, r.blocked ? `[${r.blocked.code}] ${r.blocked.message}` : r.detail]),
    )
  }
}
