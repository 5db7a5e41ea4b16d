import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {ExitCodeValue} from '../../src/exit-codes.js'
import {rolloutFleet} from '../../src/cli/fleet.js'
import {bwlimitFlag, imageRefArg, imagesDirFlag, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import type {StageRow} from '../../src/rollout/service.js'

export default class RolloutStage extends BaseCommand<typeof RolloutStage> {
  static override summary = 'Put an image version on every node of the selection ahead of a rollout; no VM is touched.'

  static override description = `The image is verified locally first (signature by a trusted key, size, sha256), then uploaded once per node to its import storage (at most --bwlimit per node; or pulled with --image-url), PVE checking the sha256 on arrival and pgi the stored size after. Nodes that already hold it are skipped, so running it again resumes an interrupted staging. No VM is read or changed.

Exit codes: 0 staged everywhere, 4 some nodes failed, 1 all failed.`

  static override examples = [
    {description: 'Stage 2026.12.0 on every node, days before the rollout.', command: '<%= config.bin %> rollout stage 2026.12.0 --all'},
    {description: 'Stage over slow school links, at most 2 MiB/s per node, two nodes at a time.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --bwlimit 2M --max-parallel 2'},
    {description: 'Let each node pull it from a mirror.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --image-url https://mirror.example/pgi/{file}'},
  ]

  static override strict = false
  static override args = {...imageRefArg, ...uaiArgs}
  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    'image-url': Flags.string({summary: 'Stage with download-url from this URL ({file} = image file name) instead of uploading.'}),
    bwlimit: bwlimitFlag,
    'max-parallel': Flags.integer({summary: 'Nodes staged at once (one at a time per hypervisor).', default: 4, min: 1}),
  }

  public async run(): Promise<{version: string; rows: StageRow[]}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {stageRollout} = await import('../../src/rollout/service.js')
    const f = this.flags
    const r = await stageRollout({
      ...rolloutFleet(f, this.positionals, this.args.version, this.io),
      imageUrl: f['image-url'],
      bwlimitKiB: f.bwlimit,
      maxParallel: f['max-parallel'],
    })
    this.status = r.exitCode as ExitCodeValue
    this.table(['hypervisor/node', 'establishments', 'outcome', 'detail'], r.rows.map((x) => [`${x.hypervisor}/${x.node}`, x.establishments, x.outcome, x.detail]))
    return {version: r.version, rows: r.rows}
  }
}
