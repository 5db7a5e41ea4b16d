import {Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'

export default class LabStop extends BaseCommand<typeof LabStop> {
  static override summary = 'Stop the local lab: the daemon and every VM it started.'
  static override description = `Ends the lab daemon, which stops every VM process of its backend first. Files stay in the lab folder (certificates, inventory, logs); nothing is left outside it. A later \`pgi lab start\` starts with no VMs.`

  static override examples = [
    {description: 'Stop the default lab:', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'Stop a lab in another folder:', command: '<%= config.bin %> <%= command.id %> --dir /tmp/lab'},
  ]

  static override flags = {
    dir: Flags.string({summary: 'Lab folder.', env: 'PGI_LAB_DIR'}),
  }

  public async run(): Promise<{stopped: boolean; dir: string; pid?: number}> {
    const {stopLab} = await import('../../src/lab/lab.js')
    const r = await stopLab({dir: this.flags.dir, io: this.io})
    if (!this.jsonEnabled()) this.log(r.stopped ? `lab in ${r.dir} stopped (daemon pid ${r.pid})` : `no lab daemon was running in ${r.dir}`)
    return r
  }
}
