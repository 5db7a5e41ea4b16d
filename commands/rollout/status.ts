import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {ExitCode} from '../../src/exit-codes.js'
import {clockFromEnv, selectionFlags, uaiArgs} from '../../src/cli/flags.js'
import {stopSignal} from '../../src/cli/fleet.js'
import type {RolloutStatus, StagingStatus} from '../../src/rollout/service.js'

export default class RolloutStatusCommand extends BaseCommand<typeof RolloutStatusCommand> {
  static override summary = 'Where rollouts stand: the local journal and the rollout mark of each VM.'

  static override description = `Reads the rollout mark on each selected VM (default: all): rollout id, from → to, last step, runner, when, and why it failed or rolled back. Also shows the newest rollout of this machine's journal (state, pause/abort requests).

The staging column shows a next version being staged (pgi rollout stage): the transfer (delta or full), its state, disk bytes assembled / total, bytes fetched from the store, an ETA from the rate observed in the guest, and why a full transfer was chosen or a delta staging failed. --follow shows each delta staging still running until it ends.

Exit codes: 0 nothing mid-way or failed, 4 some establishment is mid-way, failed or unknown.`

  static override examples = [
    {description: 'Every establishment.', command: '<%= config.bin %> rollout status'},
    {description: 'One rollout, as JSON.', command: '<%= config.bin %> rollout status --id 20261122T081500Z-a1b2c3 --json'},
  ]

  static override strict = false
  static override args = uaiArgs
  static override flags = {
    ...selectionFlags,
    id: Flags.string({summary: 'Only this rollout.'}),
    follow: Flags.boolean({summary: 'Follow the delta stagings still running (progress per establishment) until they end, then show the status.'}),
  }

  public async run(): Promise<RolloutStatus> {
    // the engine is loaded when the command runs, not with every command (start-up time)
    const {followStaging, rolloutStatus} = await import('../../src/rollout/service.js')
    const f = this.flags
    const uais = this.positionals
    const req = {inventoryPath: f.inventory, selection: {uais, all: f.all || (uais.length === 0 && !f.group), group: f.group}, secretsDir: f['secrets-dir'], io: this.io, id: f.id, now: clockFromEnv(process.env)}
    const s = f.follow ? await followStaging({...req, signal: stopSignal(this.io)}) : await rolloutStatus(req)
    if (s.journal) this.io.info(`rollout ${s.journal.id} (${s.journal.version}): ${s.journal.state}${s.journal.control ? `, ${s.journal.control} requested` : ''}${s.journal.reason ? ` — ${s.journal.reason}` : ''}`)
    this.table(['UAI', 'image', 'rollout', 'from → to', 'step', 'state', 'runner', 'at', 'why', 'staging'], s.establishments.map((e) => [e.uai, e.image, e.rollout, e.from ? `${e.from} → ${e.to}` : '', e.step, e.state, e.runner, e.at, e.reason, e.staging ? describeStaging(e.staging) : '']))
    if (s.establishments.some((e) => e.state === 'in-progress' || e.state === 'failed' || e.state === 'unknown')) this.status = ExitCode.PARTIAL
    return s
  }
}

/** One cell: `delta 1.0.1 running extract 42% 1.3/3.2 GB, 12.1 MB fetched, ETA 9 min` or `full 1.0.1 uploaded (why)`. */
function describeStaging(st: StagingStatus): string {
  const gb = (n: number) => (n / 1e9).toFixed(2)
  const bytes = st.total ? ` ${st.total > 0 ? Math.floor((100 * (st.done ?? 0)) / st.total) : 0}% ${gb(st.done ?? 0)}/${gb(st.total)} GB${st.fetched !== undefined ? `, ${(st.fetched / 1e6).toFixed(1)} MB fetched` : ''}` : ''
  const eta = st.etaS !== undefined ? `, ETA ${st.etaS >= 3600 ? `${(st.etaS / 3600).toFixed(1)} h` : st.etaS >= 60 ? `${Math.round(st.etaS / 60)} min` : `${st.etaS} s`}` : ''
  const cap = st.capBps ? `, at ${Math.round(st.capBps / 1024)} KiB/s${st.totalBps ? ` (${Math.round((100 * st.capBps) / st.totalBps)}% of the total cap)` : ''}` : ''
  return `${st.transfer} ${st.version} ${st.state}${st.phase && st.phase !== st.state ? ` ${st.phase}` : ''}${bytes}${cap}${eta}${st.reason ? ` (${st.reason})` : ''}`
}
