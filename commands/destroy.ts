import {Args, Flags} from '@oclif/core'
import {join} from 'node:path'

import {BaseCommand, inventoryFlag, secretsDirFlag} from '../src/cli/base-command.js'
import {secondsFlag} from '../src/cli/flags.js'
import type {DestroyResult} from '../src/deploy/destroy.js'
import {FlagRequiredError, SafetyRefusal} from '../src/errors.js'
import {stateDir} from '../src/paths.js'

export default class Destroy extends BaseCommand<typeof Destroy> {
  static override summary = 'Delete an establishment\'s VM and its data disk, after a final verified backup.'

  static override description = `Refuses (exit 7) unless --destroy-data is given AND the UAI is typed to confirm (or --yes in non-interactive use). Before anything is deleted it takes a final backup of every database in the guest (pgi-backup), verifies it there (restore + row counts), copies it off the VM into --backup-dir and checks every file's sha256. Only then is the VM stopped and deleted with its disks (purge). Only VMs pgi created for this UAI are touched.`

  static override examples = [
    {description: 'Delete the VM of one establishment (asks you to type the UAI).', command: '<%= config.bin %> destroy 0130040Y --destroy-data'},
    {description: 'The same in CI.', command: '<%= config.bin %> destroy 0130040Y --destroy-data --yes'},
  ]

  static override args = {
    uai: Args.string({description: 'UAI of the establishment whose VM is deleted.', required: true}),
  }

  static override flags = {
    inventory: inventoryFlag,
    'secrets-dir': secretsDirFlag,
    'destroy-data': Flags.boolean({summary: 'Required: you accept that the data disk and every database on it are deleted (after the final backup).', default: false}),
    'backup-dir': Flags.string({summary: 'Where the final backup is copied (default <state dir>/final-backups).', env: 'PGI_BACKUP_DIR'}),
    'agent-timeout': secondsFlag({summary: 'Seconds to wait for the guest agent (the VM is started for its backup if stopped).', default: 600}),
  }

  public async run(): Promise<DestroyResult> {
    const f = this.flags
    if (!f['destroy-data']) {
      throw new SafetyRefusal(`destroying ${this.args.uai} deletes its data disk and every database on it: refused without --destroy-data`, {
        where: {uai: this.args.uai},
        suggestions: [`If you really mean it: pgi destroy ${this.args.uai} --destroy-data (a final backup is taken and copied here first).`],
      })
    }
    // the engine is loaded when the command runs, not with every command (start-up time)
    const [{destroyEstablishment}, {FleetSession}] = await Promise.all([import('../src/deploy/destroy.js'), import('../src/fleet/open.js')])
    const fleet = await FleetSession.open({inventory: f.inventory, selection: {uais: [this.args.uai]}, secretsDir: f['secrets-dir'], store: 'always', io: this.io})
    const {hypervisors} = fleet
    const est = fleet.establishments[0]!
    let r: DestroyResult
    try {
      // no progress renderer here: the typed confirmation needs the terminal to itself
      r = await destroyEstablishment(est, {
        hypervisors,
        io: this.io,
        destroyData: f['destroy-data'],
        confirm: async (question, expected) => {
          try {
            await this.confirmTyped(question, expected)
          } catch (err) {
            if (err instanceof FlagRequiredError) {
              throw new SafetyRefusal(`destroying ${expected} needs a typed confirmation, and there is no terminal to type it: refused`, {
                where: {uai: expected},
                suggestions: ['In non-interactive use, pass --yes together with --destroy-data.'],
              })
            }
            throw err
          }
        },
        backupDir: f['backup-dir'] ?? join(stateDir(), 'final-backups'),
        agentTimeoutMs: f['agent-timeout'],
        update: (text) => this.io.info(`${est.uai}: ${text}`),
      })
    } finally {
      await fleet.close()
    }
    this.table(['UAI', 'VM', 'destroyed', 'detail'], [[r.uai, `${r.hypervisor}/${r.node}/${r.vmid}`, r.destroyed ? 'yes' : 'no', r.detail]])
    return r
  }
}
