import {join, resolve} from 'node:path'

import {BaseCommand} from '../../src/cli/base-command.js'
import {imagesDirFlag} from '../../src/cli/flags.js'
import type {ImageEntry} from '../../src/image/images.js'

export default class ImageList extends BaseCommand<typeof ImageList> {
  static override summary = 'List the published images (not verified: see `pgi image verify`).'
  static override description = 'One line per image version found under the images folder (<state dir>/images, PGI_IMAGES_DIR or --images-dir): name, version, build time, qcow2 size, sha256 and signing key.'
  static override examples = [
    {description: 'Every image built on this machine:', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'As JSON, from another folder:', command: '<%= config.bin %> <%= command.id %> --images-dir /srv/images --json'},
  ]

  static override flags = {
    'images-dir': imagesDirFlag,
  }

  public async run(): Promise<ImageEntry[]> {
    const {listImages} = await import('../../src/image/images.js')
    const {stateDir} = await import('../../src/paths.js')
    const root = this.flags['images-dir']
    // named: given by --images-dir or PGI_IMAGES_DIR, not the default <state dir>/images
    const rows = await listImages({root, named: resolve(root) !== join(stateDir(), 'images')})
    this.table(
      ['Image', 'Version', 'Built', 'Size (MB)', 'sha256', 'Key'],
      rows.map((r) => [r.name, r.version, r.buildTime, r.sizeBytes === undefined ? '?' : (r.sizeBytes / 1e6).toFixed(0), r.sha256?.slice(0, 16), r.keyId]),
    )
    if (!this.jsonEnabled() && rows.length === 0) this.io.info('no image yet: build one with `sudo pgi image build`')
    return rows
  }
}
