import {BaseCommand} from '../../src/cli/base-command.js'
import {imageRefArgument, imagesDirFlag} from '../../src/cli/flags.js'

export interface VerifyResult {
  name: string
  version: string
  disk: string
  sha256: string
  keyId: string
  verified: true
}

export default class ImageVerify extends BaseCommand<typeof ImageVerify> {
  static override summary = 'Check an image\'s signature and checksum before using it.'
  static override description = 'Verifies the Ed25519 signature of manifest.json against the trusted keys (<images dir>/trusted-keys/*.pem), then the qcow2 file\'s size and sha256 against the manifest. A modified image or manifest is refused (PGI_IMAGE_INVALID, exit 7).'
  static override examples = [
    {description: 'Verify version 1.0.0 of the reference image:', command: '<%= config.bin %> <%= command.id %> 1.0.0'},
    {description: 'Verify another image, as JSON:', command: '<%= config.bin %> <%= command.id %> lab-test@0.1.0 --json'},
  ]

  static override args = {
    version: imageRefArgument('Image version (1.0.0), or NAME@VERSION.'),
  }

  static override flags = {
    'images-dir': imagesDirFlag,
  }

  public async run(): Promise<VerifyResult> {
    const {verifyImage} = await import('../../src/image/images.js')
    const {manifest, diskPath} = await verifyImage(this.args.version, {root: this.flags['images-dir']})
    this.table(['Image', 'Version', 'qcow2', 'sha256', 'Key', 'Verified'], [[manifest.name, manifest.version, diskPath, manifest.disk.sha256.slice(0, 16), manifest.signing.key_id, 'yes']])
    return {name: manifest.name, version: manifest.version, disk: diskPath, sha256: manifest.disk.sha256, keyId: manifest.signing.key_id, verified: true}
  }
}
