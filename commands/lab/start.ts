import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import type {LabSummary} from '../../src/lab/lab.js'

export default class LabStart extends BaseCommand<typeof LabStart> {
  static override summary = 'Start a local Proxmox-VE-compatible lab (for training and tests, not production).'
  static override description = `Runs one or more lab "nodes" in the background on 127.0.0.1: each answers the Proxmox VE API over HTTPS with its own self-signed certificate. VMs are real QEMU VMs (--backend qemu) or a model (--backend simulated, for scale tests). Start creates an API token with pgi's least-privilege role (its secret goes to the secret store), and writes a ready-to-use inventory of --sites establishments (<dir>/inventory/lab.yaml) plus a sample AMI age identity (<dir>/ami-identity.txt). Production hypervisors run real Proxmox VE 8.4+/9.x. See docs/lab.md.`

  static override examples = [
    {description: 'A simulated lab of 2 nodes and 6 establishments:', command: '<%= config.bin %> <%= command.id %> --backend simulated --nodes 2 --sites 6'},
    {description: 'A lab of real QEMU VMs pretending to be PVE 8.4:', command: '<%= config.bin %> <%= command.id %> --backend qemu --pve-version 8.4'},
    {description: 'A lab with injected faults, replayable with its seed:', command: '<%= config.bin %> <%= command.id %> --backend simulated --faults faults.yaml --seed 42'},
    {description: 'Faults from flags: 5% of tasks fail, node lab3 hangs:', command: '<%= config.bin %> <%= command.id %> --backend simulated --nodes 3 --task-failure-rate 0.05 --dead-node lab3 --seed 7'},
  ]

  static override flags = {
    nodes: Flags.integer({summary: 'Number of lab nodes (each is one hypervisor in the inventory).', default: 1, min: 1, max: 200}),
    sites: Flags.integer({summary: 'Number of establishments in the generated inventory.', default: 3, min: 0}),
    backend: Flags.string({summary: 'qemu (real VMs) or simulated (no VMs).', options: ['qemu', 'simulated'], default: 'qemu', env: 'PGI_LAB_BACKEND'}),
    'pve-version': Flags.string({summary: 'Proxmox VE version the lab behaves as.', options: ['8.4', '9.1'], default: '9.1'}),
    dir: Flags.string({summary: 'Lab folder (state, disks, certificates, inventory).', env: 'PGI_LAB_DIR'}),
    faults: Flags.string({summary: 'YAML file of faults to inject (see docs/lab.md).'}),
    seed: Flags.integer({summary: 'Seed of the fault injection (replays the same faults).'}),
    'time-scale': Flags.string({summary: 'Simulated backend: multiply task durations by this factor (0 = instant).', default: '1'}),
    'auth-fail-delay': Flags.integer({summary: 'Delay before a 401 answer, in ms (PVE: 3000).', default: 3000}),
    'secrets-dir': Flags.string({summary: 'Secret store for the lab token (default <dir>/secrets).'}),
    'task-failure-rate': Flags.string({summary: 'Fault: fraction (0-1) of async tasks that fail.', helpGroup: 'FAULTS'}),
    'http-500-rate': Flags.string({summary: 'Fault: fraction (0-1) of requests answered 500.', helpGroup: 'FAULTS'}),
    'latency-ms': Flags.string({summary: 'Fault: latency added to every request, "N" or "MIN-MAX" ms.', helpGroup: 'FAULTS'}),
    'lock-contention-rate': Flags.string({summary: 'Fault: fraction (0-1) of config writes that hit "can\'t lock file … got timeout".', helpGroup: 'FAULTS'}),
    'dead-node': Flags.string({summary: 'Fault: a node that accepts connections but never answers (repeatable).', multiple: true, helpGroup: 'FAULTS'}),
    'unhealthy-vm': Flags.string({summary: 'Fault: NODE/VMID whose PGI never becomes healthy (repeatable).', multiple: true, helpGroup: 'FAULTS'}),
    'unhealthy-rate': Flags.string({summary: 'Fault: fraction (0-1) of guests whose PGI never becomes healthy.', helpGroup: 'FAULTS'}),
  }

  public async run(): Promise<LabSummary> {
    const {startLab} = await import('../../src/lab/lab.js')
    const {faultConfigFrom, faultConfigToObject, loadFaultFile} = await import('../../src/lab/faults.js')
    const f = this.flags
    // Flags override the file's keys (same names, snake_case in the file).
    const overrides: Record<string, unknown> = {}
    const num = (v: string | undefined) => (v === undefined ? undefined : Number(v))
    if (f['task-failure-rate'] !== undefined) overrides.task_failure_rate = num(f['task-failure-rate'])
    if (f['http-500-rate'] !== undefined) overrides.http_500_rate = num(f['http-500-rate'])
    if (f['lock-contention-rate'] !== undefined) overrides.lock_contention_rate = num(f['lock-contention-rate'])
    if (f['unhealthy-rate'] !== undefined) overrides.unhealthy_rate = num(f['unhealthy-rate'])
    if (f['latency-ms'] !== undefined) {
      const [min, max] = f['latency-ms'].split('-').map(Number)
      overrides.latency_ms = {min, max: max ?? min}
    }
    if (f['dead-node']) overrides.dead_nodes = f['dead-node']
    if (f['unhealthy-vm']) overrides.unhealthy_vms = f['unhealthy-vm']
    if (f.seed !== undefined) overrides.seed = f.seed
    const fromFile = f.faults ? faultConfigToObject(await loadFaultFile(f.faults)) : {}
    const faults = f.faults || Object.keys(overrides).length > 0 ? faultConfigFrom({...fromFile, ...overrides}, f.faults ?? 'flags') : undefined
    const s = await startLab({
      dir: f.dir,
      nodes: f.nodes,
      sites: f.sites,
      backend: f.backend as 'qemu' | 'simulated',
      pveVersion: f['pve-version'] as '8.4' | '9.1',
      faults,
      seed: f.seed,
      timeScale: Number(f['time-scale']),
      authFailDelayMs: f['auth-fail-delay'],
      secretsDir: f['secrets-dir'],
      io: this.io,
    })
    this.table(['Node', 'URL', 'Fingerprint (SHA-256)'], s.nodes.map((n) => [n.name, n.url, n.fingerprint]))
    if (!this.jsonEnabled()) {
      this.log(`\nThis is a LAB (${s.backend} backend, behaves as PVE ${s.pveVersion}), not production.`)
      this.log(`Inventory: ${s.inventory}`)
      this.log(`Use it:    export PGI_INVENTORY=${s.env.PGI_INVENTORY} PGI_SECRETS_DIR=${s.env.PGI_SECRETS_DIR}`)
      this.log(`Stop it:   pgi lab stop --dir ${s.dir}`)
    }
    return s
  }
}
