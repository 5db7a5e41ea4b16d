import {Args, Flags} from '@oclif/core'

import {BaseCommand, inventoryFlag, secretsDirFlag} from '../src/cli/base-command.js'
import {UsageError} from '../src/errors.js'
import {reportFlag, secondsFlag} from '../src/cli/flags.js'
import {statusSuite} from '../src/report/suites.js'
import {STATUS_DEFAULTS} from '../src/status/collect.js'
import {detailLines, refusalNotes, renderPrometheus, renderTable, useColour, writeTextfile} from '../src/status/format.js'
import {DEFAULT_POLICY} from '../src/status/verdict.js'
import {statusExitCode} from '../src/status/verdict.js'
import type {StatusService} from '../src/status/service.js'
import type {StatusReport} from '../src/status/types.js'
import {watchStatus, type WatchMode} from '../src/status/watch.js'

/**
 * The variable the secret of --token-id comes from: src/status/service.ts's TOKEN_SECRET_ENV, which
 * reads it. Repeated here (a unit test checks they agree) because importing service.ts for a
 * string would load the Proxmox client with every command (the CLI is one bundle: start-up time).
 */
const TOKEN_SECRET_ENV = 'PGI_TOKEN_SECRET'

export default class Status extends BaseCommand<typeof Status> {
  static override summary = 'Show whether each establishment\'s PGI server is healthy, and why not.'

  static override description = `For each establishment: is its hypervisor reachable (and its TLS certificate still the pinned one), does its VM exist and run (uptime), which image version runs and which one the inventory wants, does the guest agent answer, what the server's own health check says (PostgreSQL, Tryton, web client, data-disk usage, databases, age of the last backup), and whether an update is half-way or failed. Then one verdict — healthy, degraded, down or unknown — with the reason in plain words.

Without UAI, --group or --all, every establishment of the inventory is shown. Problems come first. Hypervisors are asked in parallel (a bounded number of requests each); every request has a deadline (--timeout), so a dead hypervisor only makes its own lines "unknown".

An AMI can use their own API token, which only sees their VM: --token-id ID with the secret in ${TOKEN_SECRET_ENV} (never on the command line). When the token may read files in the VM but not run commands (the PGI-AMI role on PVE 9), the health the server records every 2 minutes is read instead, its age shown (stale past --health-max-age). What such a token may not read is named (the missing privilege) and the rest is still shown.

--format prometheus writes the node-exporter textfile format (with --output, atomically to a file). --watch N repeats every N seconds: redrawn in place on a terminal, only the changes otherwise.

Exit codes: 0 every selected establishment is healthy; 5 at least one is degraded, down or unknown (among them, those of a hypervisor that could not be reached or whose certificate does not match the pin); 8 none could be checked: the hypervisor of every selected establishment is unreachable or its TLS certificate does not match the pin.`

  static override examples = [
    {description: 'Every establishment, problems first.', command: '<%= config.bin %> status'},
    {description: 'One establishment, with the details (what an AMI runs).', command: '<%= config.bin %> status 0130040Y'},
    {description: 'An AMI with their own token (secret read from the environment, never a flag).', command: `read -rs ${TOKEN_SECRET_ENV}; export ${TOKEN_SECRET_ENV}; <%= config.bin %> status 0130040Y --token-id ami-0130040y@pve!status`},
    {description: 'A group, as JSON for a script.', command: '<%= config.bin %> status --group vaucluse --json'},
    {description: 'For node-exporter\'s textfile collector, every minute (e.g. from a systemd service).', command: '<%= config.bin %> status --all --format prometheus --output /var/lib/prometheus/node-exporter/pgi.prom --watch 60'},
    {description: 'Watch the fleet, redrawn every 30 s (Ctrl-C to stop).', command: '<%= config.bin %> status --all --watch 30'},
  ]

  static override strict = false

  static override args = {
    uai: Args.string({description: 'UAI(s) of the establishments to show (default: all).', required: false}),
  }

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    all: Flags.boolean({summary: 'Every establishment of the inventory (the default when none is named).', default: false}),
    group: Flags.string({summary: 'The establishments of a group (`groups:` in the inventory).'}),
    format: Flags.string({
      summary: 'Output: table (people), json (same as --json), prometheus (node-exporter textfile).',
      options: ['table', 'json', 'prometheus'],
      default: 'table',
      env: 'PGI_STATUS_FORMAT',
    }),
    output: Flags.string({summary: 'Write the prometheus output to this file (atomically: temp file, then rename).', dependsOn: ['format']}),
    watch: Flags.integer({summary: 'Repeat every N seconds until Ctrl-C (redrawn on a terminal, only changes otherwise).', min: 1}),
    timeout: secondsFlag({summary: 'Deadline of each API request, in seconds; a hypervisor that misses it is reported unreachable.', default: STATUS_DEFAULTS.requestTimeoutMs / 1000, env: 'PGI_STATUS_TIMEOUT'}),
    'health-timeout': secondsFlag({summary: 'Deadline of the health check inside each VM, in seconds.', default: STATUS_DEFAULTS.healthTimeoutMs / 1000}),
    'max-parallel': Flags.integer({summary: 'API requests in flight overall.', default: STATUS_DEFAULTS.maxParallel, min: 1}),
    'max-per-hypervisor': Flags.integer({summary: 'API requests in flight on one hypervisor.', default: STATUS_DEFAULTS.perHypervisor, min: 1}),
    'health-max-age': Flags.integer({
      summary: 'When the token may not run the health check in the VM (an AMI\'s, PVE 9), the server\'s own record of it is read: older than this many seconds, it is stale (the verdict is unknown).',
      default: DEFAULT_POLICY.healthRecordMaxAgeS,
      min: 1,
      env: 'PGI_STATUS_HEALTH_MAX_AGE',
    }),
    'token-id': Flags.string({summary: `Use this API token (USER@REALM!TOKENID) for every hypervisor instead of the inventory's; its secret comes from ${TOKEN_SECRET_ENV}.`, env: 'PGI_TOKEN_ID'}),
    report: reportFlag,
  }

  /** `--format json` is the same as `--json` (the BaseCommand envelope). */
  public override jsonEnabled(): boolean {
    if (super.jsonEnabled()) return true
    const a = this.argv
    const i = a.indexOf('--format')
    return a.includes('--format=json') || (i >= 0 && a[i + 1] === 'json') || (i < 0 && !a.some((x) => x.startsWith('--format=')) && process.env.PGI_STATUS_FORMAT === 'json')
  }

  public async run(): Promise<StatusReport | undefined> {
    const f = this.flags
    const {argv} = await this.parse(Status)
    const uais = argv.map(String)
    if (f.output && f.format !== 'prometheus') throw new UsageError('--output is for --format prometheus', {suggestions: ['Redirect stdout for the other formats.']})
    if (f.report && f.watch) throw new UsageError('--report writes the result of one run: it cannot be used with --watch', {where: {flag: 'report'}, suggestions: ['Run `pgi status --report …` from a scheduled job instead.']})

    // the engine (inventory loader, Proxmox client) is loaded when the command runs, not with every command
    const {openStatus} = await import('../src/status/open.js')
    const svc = await openStatus({
      inventoryPath: f.inventory,
      selection: {uais, all: f.all, group: f.group},
      secretsDir: f['secrets-dir'],
      io: this.io,
      tokenId: f['token-id'],
      requestTimeoutMs: f.timeout,
      healthTimeoutMs: f['health-timeout'],
      maxParallel: f['max-parallel'],
      perHypervisor: f['max-per-hypervisor'],
      healthMaxAgeS: f['health-max-age'],
      watch: f.watch !== undefined,
    })
    try {
      const report = f.watch ? await this.watch(svc, f.watch) : await svc.collect()
      if (!report) return undefined
      this.status = statusExitCode(report.establishments)
      this.explainRefusals(report)
      if (!f.watch) await this.show(report)
      await this.writeReports(statusSuite(this.commandLine(), report, this.status))
      return report
    } finally {
      await svc.close()
    }
  }

  private async show(report: StatusReport): Promise<void> {
    if (this.jsonEnabled()) return
    if (this.flags.format === 'prometheus') {
      await this.writePrometheus(report)
      return
    }
    this.log(renderTable(report, {colour: useColour(process.stdout), width: process.stdout.isTTY ? process.stdout.columns : undefined}))
    // one establishment (an AMI's): everything known about it
    if (report.establishments.length === 1) for (const l of detailLines(report.establishments[0])) this.log(l)
  }

  private async writePrometheus(report: StatusReport): Promise<void> {
    const text = renderPrometheus(report)
    const out = this.flags.output
    if (!out) {
      process.stdout.write(text)
      return
    }
    await writeTextfile(out, text)
  }

  /** A refused call is not a crash: say once which privilege the token lacks, and where. */
  private explainRefusals(report: StatusReport): void {
    const notes = refusalNotes(report)
    for (const w of notes.warnings) this.io.warn(w)
    if (notes.advice) this.io.info(notes.advice)
  }

  private async watch(svc: StatusService, intervalS: number): Promise<StatusReport | undefined> {
    const ac = new AbortController()
    const onSigint = () => ac.abort()
    process.once('SIGINT', onSigint)
    process.once('SIGTERM', onSigint)
    const prom = this.flags.format === 'prometheus'
    const tty = Boolean(process.stdout.isTTY) && !this.jsonEnabled() && !prom
    const mode: WatchMode = prom ? 'each' : this.jsonEnabled() ? 'json' : tty ? 'redraw' : 'changes'
    try {
      return await watchStatus({
        intervalS,
        mode,
        collect: () => svc.collect(),
        write: (t) => process.stdout.write(t),
        render: async (r) => {
          if (prom) {
            if (this.flags.output) {
              await this.writePrometheus(r)
              return ''
            }
            return renderPrometheus(r)
          }
          return renderTable(r, {colour: useColour(process.stdout), width: process.stdout.columns})
        },
        signal: ac.signal,
        onRound: (r) => {
          this.status = statusExitCode(r.establishments)
        },
      })
    } finally {
      process.off('SIGINT', onSigint)
      process.off('SIGTERM', onSigint)
    }
  }
}
