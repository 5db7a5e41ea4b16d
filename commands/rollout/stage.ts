import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {ExitCodeValue} from '../../src/exit-codes.js'
import {rolloutFleet, stopSignal} from '../../src/cli/fleet.js'
import {bwlimitFlag, clockFromEnv, imageRefArg, imagesDirFlag, selectionFlags, totalBwlimitFlag, uaiArgs} from '../../src/cli/flags.js'
import type {StagePacing, StageRow} from '../../src/rollout/service.js'

export default class RolloutStage extends BaseCommand<typeof RolloutStage> {
  static override summary = 'Put an image version within reach of every establishment of the selection ahead of a rollout, whole or by delta; no service is stopped.'

  static override description = `The image is verified locally first (signature by a trusted key, size, sha256). Then, per establishment:

--transfer full: the qcow2 is uploaded once per node to its import storage (at most --bwlimit per node; or pulled with --image-url), PVE checking the sha256 on arrival and pgi the stored size after.

--transfer delta: pgi reads the version's delivery.json from the chunk store written by \`pgi image publish\` and checks its signature with the trusted image keys, hot-plugs a blank disk (serial pgi-stage, on the OS disks' storage) into the running VM, and has the guest assemble the new OS disk on it with pgi-stage-delta — only the chunks its current OS disk lacks cross the link, at most --bwlimit per establishment — then read it back against the signed raw sha256. The staged disk is recorded on the VM: \`pgi rollout start\` then only switches disks. An image without pgi-stage-delta, or a guest that cannot reach the store, fails.

--transfer auto (the default when a store is known): delta where the guest has pgi-stage-delta and reaches the store, the full transfer elsewhere, with the reason shown.

Running it again resumes: what is staged is skipped, and a delta staging cut mid-way continues from what its staging disk already holds.

Pacing a Région (docs/delivery.md): --total-bwlimit caps the Région's uplink across all the establishments staged; pgi runs at most total ÷ --bwlimit delta transfers at once (at most --max-parallel), each capped at its share, and hands a finished one's share to the others (a running guest is re-capped by stopping and restarting its transfer, which continues where it was). --transfer-window (e.g. "mon-fri 19:00-07:00,sat-sun", in the inventory's delivery.timezone, Europe/Paris by default) confines transfers: outside it nothing is started, and a running delta transfer is stopped at the close and continued at the next opening. With --no-wait, a closed window returns at once with each establishment waiting and the next opening, and only the transfers the total cap has room for are started.

Exit codes: 0 staged everywhere, 4 some establishments failed, 1 all failed, 2 bad flags, 7 a delivery.json that does not verify.`

  static override examples = [
    {description: 'Stage 2026.12.0 on every node, days before the rollout.', command: '<%= config.bin %> rollout stage 2026.12.0 --all'},
    {description: 'By delta where the guests can, from the Région\'s store, at most 2 Mbit/s per school.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer auto --store-url https://pgi-store.region.example/ --bwlimit 256K'},
    {description: 'Stage over slow school links, at most 2 MiB/s per node, two nodes at a time.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer full --bwlimit 2M --max-parallel 2'},
    {description: 'Pace a Région: 200 Mbit/s in all, 2 Mbit/s per school, on weekday nights and weekends only.', command: '<%= config.bin %> rollout stage 2026.12.0 --all --transfer auto --total-bwlimit 25M --bwlimit 256K --max-parallel 100 --transfer-window "mon-fri 19:00-07:00,sat-sun"'},
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
    'total-bwlimit': totalBwlimitFlag,
    'transfer-window': Flags.string({summary: 'Transfer only inside this window, e.g. "22:00-06:00" or "mon-fri 19:00-07:00,sat-sun" (default: delivery.transfer_window of the inventory, else any time).', helpValue: '<window>'}),
    wait: Flags.boolean({summary: 'Wait until each delta disk is assembled and verified, and for a closed transfer window (--no-wait: return once started, or at once with each establishment waiting; `pgi rollout status` follows them).', default: true, allowNo: true}),
    'max-parallel': Flags.integer({summary: 'Establishments staged at once (a full transfer: one node at a time per hypervisor).', default: 4, min: 1}),
  }

  public async run(): Promise<{version: string; transfer: string; rows: StageRow[]; pacing: StagePacing}> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {stageRollout} = await import('../../src/rollout/service.js')
    const f = this.flags
    const r = await stageRollout({
      ...rolloutFleet(f, this.positionals, this.args.version, this.io),
      imagesRoot: f['images-dir'],
      imageUrl: f['image-url'],
      bwlimitKiB: f.bwlimit,
      totalBwlimitKiB: f['total-bwlimit'],
      transferWindow: f['transfer-window'],
      now: clockFromEnv(process.env),
      maxParallel: f['max-parallel'],
      transfer: f.transfer as 'delta' | 'full' | 'auto' | undefined,
      storeUrl: f['store-url'],
      store: f.store,
      wait: f.wait,
      signal: stopSignal(this.io),
    })
    this.status = r.exitCode as ExitCodeValue
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`
    const rate = (bps: number) => `${Math.round(bps / 1024)} KiB/s`
    const w = r.pacing.window
    if (w && !w.open) this.io.info(`transfer window ${w.spec} (${w.timezone}) closed now${w.nextOpening ? `, next opening ${w.nextOpening}` : ''}`)
    if (r.pacing.totalBps) this.io.info(`total cap ${rate(r.pacing.totalBps)}: ${r.pacing.slots} delta transfers at once, ${r.pacing.shareBps ? rate(r.pacing.shareBps) : 'no cap'} each`)
    this.table(
      ['UAI', 'hypervisor/node', 'transfer', 'outcome', 'bytes', 'cap', 'why full', 'detail'],
      r.rows.map((x) => [x.uai, `${x.hypervisor}/${x.node}`, x.transfer, x.outcome, x.bytes ? `${mb(x.bytes.done)}/${mb(x.bytes.total)} (${mb(x.bytes.fetched)} fetched)` : '', x.capBps ? rate(x.capBps) : '', x.fallback ?? '', x.detail]),
    )
    return {version: r.version, transfer: r.transfer, rows: r.rows, pacing: r.pacing}
  }
}
