import {Args, Flags} from '@oclif/core'

import {BaseCommand, secretsDirFlag} from '../../src/cli/base-command.js'
import type {BuildResult} from '../../src/image/build.js'

export default class ImageBuild extends BaseCommand<typeof ImageBuild> {
  static override summary = 'Build, sign and publish a VM image from a recipe (needs root).'
  static override description = `Installs the recipe's packages with mmdebstrap from this host's apt sources (or --mirror; sources for the recipe's Debian suite are derived from them when they list another release), pinned by the recipe's image.lock (written by the first build), configures the guest, assembles a BIOS-bootable disk, converts it to a zstd-compressed qcow2, and writes manifest.json signed with the Ed25519 key kept in the secret store (image-signing/ed25519, created on first use). The image goes to <images dir>/<name>/<version>/. A published version is never overwritten. Set SOURCE_DATE_EPOCH for reproducible builds. Recipe format: docs/image.md.`

  static override examples = [
    {description: 'Build the reference PGI image (line 1.x: Debian 12, Tryton 6.0) at its recipe\'s version:', command: 'sudo <%= config.bin %> <%= command.id %>'},
    {description: 'Build the 2.x line (Debian 13, Tryton 7.0, PostgreSQL 17) at its recipe\'s version, or at 2.0.1:', command: 'sudo <%= config.bin %> <%= command.id %> pgi-tryton@2\nsudo <%= config.bin %> <%= command.id %> pgi-tryton@2.0.1'},
    {description: 'Build version 1.1.0, reproducibly, into a folder of your choice:', command: 'sudo SOURCE_DATE_EPOCH=1767225600 <%= config.bin %> <%= command.id %> pgi-tryton --version 1.1.0 --out /srv/images'},
    {description: 'Build although Debian replaced some locked versions since image.lock was written (differences recorded in the manifest):', command: 'sudo <%= config.bin %> <%= command.id %> --allow-lock-drift'},
    {description: 'Build from another mirror (a deb822 .sources file) and take the current package versions:', command: 'sudo <%= config.bin %> <%= command.id %> --mirror ./snapshot.sources --update-lock'},
  ]

  static override args = {
    recipe: Args.string({description: 'Recipe shipped with pgi (pgi-tryton: line 1.x; pgi-tryton@2: line 2.x; pgi-tryton@2.0.1: that version; lab-test) or path to an image.yaml.', default: 'pgi-tryton'}),
  }

  static override flags = {
    version: Flags.string({char: 'v', summary: 'Version to build (default: the recipe\'s version).'}),
    mirror: Flags.string({summary: 'apt sources: a deb822 .sources file, a sources.list file or a mirror URL (default: this host\'s).', env: 'PGI_IMAGE_MIRROR'}),
    out: Flags.string({char: 'o', summary: 'Images folder (default: <state dir>/images).', env: 'PGI_IMAGES_DIR'}),
    'update-lock': Flags.boolean({summary: 'Resolve the packages again and rewrite image.lock.', default: false, exclusive: ['allow-lock-drift']}),
    'allow-lock-drift': Flags.boolean({
      summary: 'Where the archive no longer has a locked version, take its current one (warned, recorded in the manifest) instead of failing.',
      description: 'Debian keeps only the latest version of each package on its mirrors: after a point or security release, a strict build from an older image.lock fails. This builds anyway without rewriting image.lock; the manifest lists every difference (lock.drift).',
      default: false,
    }),
    'keep-work': Flags.boolean({summary: 'Keep the work folder (rootfs, raw disk) for inspection.', default: false}),
    'secrets-dir': secretsDirFlag,
  }

  public async run(): Promise<BuildResult> {
    const {buildImage} = await import('../../src/image/build.js')
    const r = await buildImage({
      recipe: this.args.recipe,
      version: this.flags.version,
      mirror: this.flags.mirror,
      out: this.flags.out,
      updateLock: this.flags['update-lock'],
      allowLockDrift: this.flags['allow-lock-drift'],
      keepWork: this.flags['keep-work'],
      secretsDir: this.flags['secrets-dir'],
      signal: this.interruptSignal(),
      io: this.io,
    })
    this.table(['Image', 'Version', 'qcow2', 'Size (MB)', 'sha256', 'Key', 'Time (s)'], [[r.name, r.version, r.disk, (r.sizeBytes / 1e6).toFixed(0), r.sha256.slice(0, 16), r.keyId, r.seconds]])
    return r
  }
}
