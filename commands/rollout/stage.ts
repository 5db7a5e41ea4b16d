import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {ExitCodeValue} from '../../src/exit-codes.js'
import {rolloutFleet, stopSignal} from '../../src/cli/fleet.js'
import {bwlimitFlag, imageRefArg, imagesDirFlag, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import type {StageRow} from '../../src/rollout/service.js'

export default class RolloutStage extends BaseCommand<typeof RolloutStage> {
  static override summary = 'Put an image version within reach of every establishment of the selection ahead of a rollout, whole or by delta; no service is stopped.'

  static override description = `The image is verified locally first (signature by a trusted key, size, sha256). Then, per establishment:

--transfer full: the qcow2 is uploaded once per node to its import storage (at most --bwlimit per node; or pulled with --image-url), PVE checking the sha256 on arrival and pgi the stored size after.

--transfer delta: pgi reads the version's delivery.json from the chunk store written by \`pgi image publish\` and checks its signature with the trusted image keys, hot-plugs a blank disk (serial pgi-stage, on the OS disks' storage) into the running VM, and has the guest assemble the new OS disk on it with pgi-stage-delta — only the chunks its current OS disk lacks cross the link, at most --bwlimit per establishment — then read it back against the signed raw sha256. The staged disk is recorded on the VM: \`pgi rollout start\` then only switches disks. An image without pgi-stage-delta, or a guest that cannot reach the store, fails.

--transfer auto (the default when a store is known): delta where the guest has pgi-stage-delta and reaches the store, the full transfer elsewhere, with the reason shown.

Running it again resumes: what is staged is skipped, and a delta staging cut mid-way continues from what its staging disk already holds.

Exit codes: 0 staged everywhere, 4 some establishments failed, 1 all failed, 2 bad flags, 7 a delivery.json that does not verify.`

  static override examples = [
    {description: 'Stage 2026.12.0 on every node, days before the rollout.', command: '<%= config.bin %> rollout stage 2026.12.0 --all'},
    {description: 'By delta where the guests can, from the Région\'s store, at most 2 Mbit/s per school.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer auto --store-url https://pgi-store.region.example/ --bwlimit 256K'},
    {description: 'Stage over slow school links, at most 2 MiB/s per node, two nodes at a time.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer full --bwlimit 2M --max-parallel 2'},
    {description: 'Let each node pull it from a mirror.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer full --image-url https://mirror.example/pgi/{file}'},
  ]

  static override strict = false
  static override args = {...imageRefArg, ...uaiArgs}
  static override flags = {
    ...selectionFlags,
    'images-dir': imagesDirFlag,
    transfer: Flags.string({summary: 'delta: the guest assembles the new disk from the chunk store; full: the whole qcow2 to each node; auto: delta where possible.', options: ['delta', 'full', 'auto'], defaultHelp: async () => 'auto when a store URL is known, else full'}),
    'store-url': Flags.string({summary: 'The chunk store as the VMs reach it (http(s)://…/; default: delivery.store_url of the inventory).'}),
    store: Flags.string({summary: 'The same store as this machine reads it: a URL or an absolute folder (default: delivery.region_store, else --store-url).'}),
    'image-url': Flags.string({summary: 'Full transfer: download-url from this URL ({file} = image file name) instead of uploading.'}),
    bwlimit: bwlimitFlag,
    wait: Flags.boolean({summary: 'Delta: wait until each disk is assembled and verified (--no-wait: return once started; `pgi rollout status` follows them).', default: true, allowNo: true}),
    'max-parallel': Flags.integer({summary: 'Establishments staged at once (a full transfer: one node at a time per hypervisor).', default: 4, min: 1}),
  }

  public async run(): Promise<{version: string; transfer: string; rows: StageRow[]}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {stageRollout} = await import('../../src/rollout/service.js')
    const f = this.flags
    const r = await stageRollout({
      ...rolloutFleet(f, this.positionals, this.args.version, this.io),
      imagesRoot: f['images-dir'],
      imageUrl: f['image-url'],
      bwlimitKiB: f.bwlimit,
      maxParallel: f['max-parallel'],
      transfer: f.transfer as 'delta' | 'full' | 'auto' | undefined,
      storeUrl: f['store-url'],
      store: f.store,
      wait: f.wait,
      signal: stopSignal(this.io),
    })
    this.status = r.exitCode as ExitCodeValue
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`
    this.table(
      ['UAI', 'hypervisor/node', 'transfer', 'outcome', 'bytes', 'why full', 'detail'],
      r.rows.map((x) => [x.uai, `${x.hypervisor}/${x.node}`, x.transfer, x.outcome, x.bytes ? `${mb(x.bytes.done)}/${mb(x.bytes.total)} (${mb(x.bytes.fetched)} fetched)` : '', x.fallback ?? '', x.detail]),
    )
    return {version: r.version, transfer: r.transfer, rows: r.rows}
  }
}
