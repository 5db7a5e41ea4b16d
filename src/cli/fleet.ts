/**
 * What the fleet commands (deploy, rollout …) share at the edge: how an image reference becomes a
 * verified image, the per-establishment result table of a rollout, and Ctrl-C between steps.
 */
import type {DeployImage} from '../deploy/desired.js'
import type {ImageRef} from '../image/images.js'
import type {ConnectionSource} from '../fleet/credentials.js'
import type {Io} from '../io.js'

/** Verifies the image `ref` in `dir` (signature, size, sha256) and describes it for staging. */
export function imageResolver(dir: string, io: Io): (ref: ImageRef) => Promise<DeployImage> {
  // loaded when an image is resolved: commands.js (every command's flags) must not load the engine
  return async (ref) => (await import('../deploy/image.js')).resolveDeployImage(ref, {imagesDir: dir, io})
}

/**
 * The image of a scratch or lab VM (`pgi backup drill`, `restore --to-lab`): --image when given,
 * else the establishment's inventory version, else the newest built; verified before use.
 */
export function scratchImageResolver(dir: string, io: Io, flag: ImageRef | undefined): (version: string | undefined) => Promise<DeployImage> {
  return async (version) => {
    const {newestImage, resolveDeployImage} = await import('../deploy/image.js')
    const {DEFAULT_IMAGE} = await import('../image/images.js')
    const ref = flag ?? (version ? {name: DEFAULT_IMAGE, version} : await newestImage(dir))
    if (!ref) {
      const {UserError, ErrorCode} = await import('../errors.js')
      const {ExitCode} = await import('../exit-codes.js')
      throw new UserError(ErrorCode.IMAGE_NOT_FOUND, `no image is built in ${dir}: a scratch VM is made from one`, {exitCode: ExitCode.INVALID_INPUT, where: {flag: 'image'}, suggestions: ['Give --image VERSION and --images-dir, or build one (pgi image build).']})
    }
    return resolveDeployImage(ref, {imagesDir: dir, io})
  }
}

/**
 * The fleet and image of a rollout command (`<version> [UAI…]` with the selection flags and
 * --images-dir), as every rollout service takes them: one place that reads them from the flags.
 */
export function rolloutFleet(
  f: {inventory: string; 'secrets-dir': string; 'images-dir': string; all: boolean; group?: string},
  positionals: string[],
  version: ImageRef,
  io: Io,
): {inventoryPath: string; selection: {uais: string[]; all: boolean; group?: string}; secretsDir: string; io: Io; image: ImageRef; resolveImage: (ref: ImageRef) => Promise<DeployImage>} {
  return {
    inventoryPath: f.inventory,
    // the version is the first positional argument, the UAIs the rest (the commands are not strict)
    selection: {uais: positionals.slice(1), all: f.all, group: f.group},
    secretsDir: f['secrets-dir'],
    io,
    image: version,
    resolveImage: imageResolver(f['images-dir'], io),
  }
}

/** The per-establishment table of a rollout start/resume. */
export function resultTable(r: {establishments: {uai: string; ring: string; hypervisor: string; node: string; vmid: number; from?: string; to: string; outcome: string; step?: string; reason?: string}[]}): {head: string[]; rows: (string | number)[][]} {
  return {
    head: ['UAI', 'wave', 'hypervisor/node', 'VM', 'from → to', 'outcome', 'step', 'why'],
    rows: r.establishments.map((e) => [e.uai, e.ring, `${e.hypervisor}/${e.node}`, e.vmid, `${e.from ?? '?'} → ${e.to}`, e.outcome, e.step ?? '', e.reason ?? '']),
  }
}

/** SIGINT/SIGTERM stop the rollout runner between steps (marks stay on the VMs: `pgi rollout resume` continues). */
export function stopSignal(io: Io): AbortSignal {
  // (the rollout service allows it any number of listeners: every wait in flight listens on it)
  const ac = new AbortController()
  const stop = (sig: string) => {
    io.warn(`${sig}: stopping after the current step of each establishment in flight; run \`pgi rollout resume\` to continue`)
    ac.abort(new Error(sig))
  }
  process.once('SIGINT', () => stop('SIGINT'))
  process.once('SIGTERM', () => stop('SIGTERM'))
  // a second signal ends pgi at once (SIGKILL-like): the marks on the VMs still say where each stands
  return ac.signal
}

/**
 * The last lines of a rollout a signal stopped: that nothing new was started, where each
 * establishment left mid-way stands (the step its VM's mark records), and the command that
 * finishes the rollout.
 */
export function stoppedLines(r: {id: string; stopped?: string; establishments: {uai: string; outcome: string; step?: string}[]}): string[] {
  if (!r.stopped) return []
  const midway = r.establishments.filter((e) => e.outcome === 'interrupted')
  const notStarted = r.establishments.filter((e) => e.outcome === 'not-started').length
  const done = r.establishments.length - midway.length - notStarted
  return [
    `stopped by ${r.stopped}: nothing new was started; ${done} establishment(s) finished, ${midway.length} left mid-way, ${notStarted} not started`,
    ...midway.map((e) => `  ${e.uai}: at step ${e.step ?? 'claimed'} (recorded on its VM)`),
    `run \`pgi rollout resume --id ${r.id}\` (on any machine with this inventory and the secrets) to finish rollout ${r.id}`,
  ]
}

/**
 * Where a command's AMI handoffs go and how they name a lab's VMs (--handoff-dir, --lab-dir): the
 * lab's module is loaded only when a lab is named.
 */
export async function handoffTarget(f: {'handoff-dir'?: string; 'lab-dir'?: string}, io: Io): Promise<{handoffDir?: string; connection?: ConnectionSource}> {
  if (!f['lab-dir']) return {handoffDir: f['handoff-dir']}
  const {labConnection} = await import('../lab/handoff-connection.js')
  return {handoffDir: f['handoff-dir'], connection: labConnection(f['lab-dir'], {io})}
}
