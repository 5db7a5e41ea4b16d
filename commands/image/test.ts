import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../src/cli/base-command.js'
import {imagesDirFlag, secondsFlag} from '../../src/cli/flags.js'
import type {BootTestResult} from '../../src/image/boottest.js'

export default class ImageTest extends BaseCommand<typeof ImageTest> {
  static override summary = 'Boot an image under QEMU and check the guest contract end to end.'
  static override description = `Verifies the image, boots it (on a copy-on-write overlay) with a blank data disk and a cloud-init seed, waits for pgi-health to be healthy, applies pgi-configure with generated passwords through the guest agent, creates a Tryton database with the French chart of accounts, logs in as admin over JSON-RPC through the forwarded port, reboots and checks the database is still there. Uses KVM when it works, else software emulation (TCG).`
  static override examples = [
    {description: 'Test version 1.0.0 of the reference image:', command: '<%= config.bin %> <%= command.id %> 1.0.0'},
    {description: 'Boot, health and reboot only (no database), keeping the VM folder:', command: '<%= config.bin %> <%= command.id %> 1.0.0 --quick --keep'},
  ]

  static override args = {
    version: Args.string({description: 'Image version (1.0.0), or NAME@VERSION.', required: true}),
  }

  static override flags = {
    'images-dir': imagesDirFlag,
    'data-disk': Flags.string({summary: 'Attach this qcow2 as the data disk instead of a blank one (used in place).'}),
    quick: Flags.boolean({summary: 'Skip the database creation and Tryton login.', default: false}),
    keep: Flags.boolean({summary: 'Keep the VM folder (disks, serial log) afterwards.', default: false}),
    'health-timeout': secondsFlag({summary: 'Seconds to wait for pgi-health after each boot.', default: 480}),
  }

  public async run(): Promise<BootTestResult> {
    const {testImage} = await import('../../src/image/boottest.js')
    const r = await testImage({
      version: this.args.version,
      root: this.flags['images-dir'],
      dataDisk: this.flags['data-disk'],
      quick: this.flags.quick,
      keep: this.flags.keep,
      healthTimeoutMs: this.flags['health-timeout'],
      io: this.io,
    })
    this.table(['Image', 'Version', 'Accel', 'Boot to healthy (s)', 'Database', 'After reboot'], [[r.image, r.version, r.accel, r.bootToHealthyS, r.database ?? '—', r.rebootedHealthy ? 'healthy' : 'NOT healthy']])
    return r
  }
}
