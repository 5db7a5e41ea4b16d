import {Flags} from '@oclif/core'

import {BaseCommand, secretsDirFlag} from '../../src/cli/base-command.js'
import {imageRefArgument, imagesDirFlag} from '../../src/cli/flags.js'
import type {PublishResult} from '../../src/image/publish.js'

export default class ImagePublish extends BaseCommand<typeof ImagePublish> {
  static override summary = 'Publish an image as a chunk store and a signed index, for delivery by delta over slow links.'
  static override description = `Verifies the image, converts it to its raw disk (checked against the manifest's signed raw sha256), and chunks it with casync into STORE/default.castr (content-defined chunks, zstd; chunks already there are not written again). STORE/<name>/<version>/ gets the index (disk.caibx), the image's manifest and delivery.json signed with the image key. STORE is plain files: serve it with any static web server (nginx, an object store, a CDN). A published version never changes. It also writes a binary patch (from-<old>.pgipatch, listed in delivery.json) from the newest older version of the same line published in the store, when the images folder holds that version: a guest running it then rebuilds most of the new chunks from its own files instead of fetching them (--patch-from to choose, --no-patch for none). See docs/delivery.md.`

  static override examples = [
    {description: 'Publish 1.1.0 into the folder the Région\'s web server serves:', command: '<%= config.bin %> <%= command.id %> 1.1.0 --store /srv/pgi-store'},
    {description: 'With a patch for guests still on 1.0.0 (besides the default, the newest older 1.x):', command: '<%= config.bin %> <%= command.id %> 1.2.0 --store /srv/pgi-store --patch-from 1.1.0 --patch-from 1.0.0'},
    {description: 'As JSON (how many chunks and bytes the store gained):', command: '<%= config.bin %> <%= command.id %> pgi-tryton@2.0.0 --store /srv/pgi-store --json'},
  ]

  static override args = {
    version: imageRefArgument('Image version (1.0.0), or NAME@VERSION.'),
  }

  static override flags = {
    store: Flags.string({summary: 'Chunk store folder (created if missing).', required: true, env: 'PGI_IMAGE_STORE'}),
    'patch-from': Flags.string({summary: 'Write a binary patch from this published version (repeatable; default: the newest older version of the same line).', multiple: true, exclusive: ['no-patch']}),
    'no-patch': Flags.boolean({summary: 'Write no binary patch (guests fetch chunks only).', exclusive: ['patch-from']}),
    'images-dir': imagesDirFlag,
    'secrets-dir': secretsDirFlag,
  }

  public async run(): Promise<PublishResult> {
    const {publishImage} = await import('../../src/image/publish.js')
    const r = await publishImage({ref: this.args.version, store: this.flags.store, imagesRoot: this.flags['images-dir'], secretsDir: this.flags['secrets-dir'], patchFrom: this.flags['no-patch'] ? [] : this.flags['patch-from'], io: this.io})
    this.table(
      ['Image', 'Version', 'Published', 'Chunks', 'New chunks', 'New (MB)', 'Stored (MB)', 'qcow2 (MB)'],
      [[r.name, r.version, r.published ? 'yes' : 'already', r.chunks.distinct, r.chunks.newChunks, (r.chunks.newBytes / 1e6).toFixed(1), (r.chunks.storedBytes / 1e6).toFixed(1), (r.imageBytes / 1e6).toFixed(1)]],
    )
    if (r.patches.length > 0) {
      this.table(
        ['Patch from', 'Chunks rebuilt', 'Of (MB)', 'Patch (MB)'],
        r.patches.map((p) => [p.from, p.chunks, (p.chunkBytes / 1e6).toFixed(1), (p.sizeBytes / 1e6).toFixed(1)]),
      )
    }
    return r
  }
}
