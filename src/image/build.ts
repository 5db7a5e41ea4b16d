import {createHash} from 'node:crypto'
import {existsSync} from 'node:fs'
import {chmod, cp, lstat, mkdir, open, readdir, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {requireTools, run} from '../exec.js'
import type {Io} from '../io.js'
import {imagesDir, secretsDir, stateDir} from '../paths.js'
import {runSteps, type Step} from '../progress.js'
import type {Secret} from '../secret.js'
import {parseSize} from '../size.js'
import {aptPreferences, lockDrift, lockPath, parseDpkgList, readLock, requestDigest, writeLock, type ImageLock} from './lock.js'
import {
  exportTrustedKey,
  generateSigningKey,
  keyId,
  manifestBytes,
  publicKeyOf,
  sha256OfFile,
  signBytes,
  SIGNING_KEY_SECRET,
  type ImageManifest,
} from './manifest.js'
import {loadRecipe, majorOf, recipeLines, VERSION_RE, type Recipe} from './recipe.js'
import {addJournal, mkfsFromTree, pinInodes, pinSuperblock, sparseFiles} from './ext4.js'
import {resolveSources, type ResolvedSources} from './sources.js'
import {digestTree, formatTree, listTree} from './tree.js'
import {settleTreeTimes} from './tree-times.js'

export interface BuildOptions {
  /** Recipe name shipped with pgi ("pgi-tryton") or a path to an image.yaml. */
  recipe?: string
  version?: string
  /** A deb822 .sources file, a one-line sources.list file, or a mirror URL; default: the host's apt sources. */
  mirror?: string
  /** Output root (default imagesDir()). */
  out?: string
  /** Resolve packages again and rewrite image.lock. */
  updateLock?: boolean
  /**
   * Where the archive no longer has a locked version (Debian replaces them at each point and
   * security release), build with its current one instead of failing: each difference is warned
   * about and recorded in the manifest (`lock.drift`); image.lock is not rewritten.
   */
  allowLockDrift?: boolean
  /** Keep the work folder (rootfs, raw disk) for inspection. */
  keepWork?: boolean
  /** Secret store folder (default secretsDir()). */
  secretsDir?: string
  env?: NodeJS.ProcessEnv
  /** Interrupts the build (Ctrl-C): the running tool is stopped, mounts and work files cleaned up. */
  signal?: AbortSignal
  io: Io
}

export interface BuildResult {
  name: string
  version: string
  dir: string
  disk: string
  manifest: string
  sha256: string
  sizeBytes: number
  treeDigest: string
  lockWritten: boolean
  /** Differences from image.lock the build took (allowLockDrift), empty when it reproduced the lock. */
  lockDrift: string[]
  keyId: string
  seconds: number
}

const SECTOR = 512
const PART_OFFSET = 1024 * 1024
/**
 * Fixed identifiers so that two builds give the same disk (ext4 UUID, hash seed, MBR id), and the
 * same for every version of a line (1.x, 2.x): ext4's metadata checksums are seeded with the UUID
 * and its folders' hash trees with the hash seed, so identifiers that changed with the version
 * rewrote every folder block and inode table of the disk, ~14 % of a version's delta when nothing
 * else changed (docs/delivery.md). Nothing tells two disks of one line apart by these: the boot
 * and fstab use the label, which every version already shares.
 */
function fixedIds(recipe: Recipe, version: string): {fsUuid: string; hashSeed: string; diskId: string} {
  const h = createHash('sha256').update(`${recipe.name}\0${majorOf(version)}`).digest('hex')
  const uuid = (s: string) => `${s.slice(0, 8)}-${s.slice(8, 12)}-4${s.slice(13, 16)}-8${s.slice(17, 20)}-${s.slice(20, 32)}`
  return {fsUuid: uuid(h), hashSeed: uuid(h.slice(32)), diskId: `0x${h.slice(0, 8)}`}
}

/** A recipe's disk size in bytes: whole MiB or GiB only ("3G", "2048M"), what mkfs and qemu-img are given. */
export function recipeDiskBytes(size: string): number {
  if (!/^\d+[MG]$/.test(size)) throw new UserError(ErrorCode.IMAGE_INVALID, `disk size "${size}" must look like 3G or 2048M`)
  return parseSize(size)
}

function sh(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

/** The image folder: `<root>/<name>/<version>/`. */
export function imageDir(root: string, name: string, version: string): string {
  return join(root, name, version)
}

async function signingKey(opts: BuildOptions): Promise<Secret> {
  const {SecretStore} = await import('../secrets/store.js')
  const store = await SecretStore.open({dir: opts.secretsDir ?? secretsDir(opts.env), recipients: [], env: opts.env})
  const existing = await store.tryGet(SIGNING_KEY_SECRET)
  if (existing) return existing
  const key = generateSigningKey()
  await store.put(SIGNING_KEY_SECRET, key)
  opts.io.info(`created the image signing key (secret ${SIGNING_KEY_SECRET}, key id ${keyId(publicKeyOf(key))})`)
  return key
}

/** Stages the recipe's files (modes normalised) into `stage/`, to be copied over the rootfs. */
async function stageFiles(recipe: Recipe, stage: string): Promise<string[]> {
  const chowns: string[] = []
  for (const f of recipe.files) {
    const src = join(recipe.dir, f.src)
    const dest = join(stage, f.dest)
    const st = await stat(src)
    await mkdir(st.isDirectory() ? dest : dirname(dest), {recursive: true})
    await cp(src, dest, {recursive: true, force: true, dereference: true})
    const fix = async (p: string): Promise<void> => {
      const s = await lstat(p)
      if (s.isDirectory()) {
        await chmod(p, 0o755)
        for (const n of await readdir(p)) await fix(join(p, n))
      } else if (s.isFile()) await chmod(p, s.mode & 0o111 ? 0o755 : 0o644)
    }
    await fix(dest)
    if (!st.isDirectory()) {
      if (f.mode) await chmod(dest, parseInt(f.mode, 8))
      if (f.owner || f.group) chowns.push(`chroot "$1" chown ${sh(`${f.owner ?? 'root'}:${f.group ?? 'root'}`)} ${sh(f.dest)}`)
    }
  }
  return chowns
}

/** The customize hook mmdebstrap runs with the rootfs as $1 (proc/sys/dev mounted by it). */
function customizeScript(recipe: Recipe, ctx: {stage: string; chowns: string[]; epoch: number; work: string; cacheMounted: boolean; buildCache: string}): string {
  const rm = recipe.trim.remove.map((g) => `rm -rf "$1"${g.replace(/[^A-Za-z0-9_./*+@-]/g, '')}`).join('\n')
  const enable = recipe.services.enable.map((u) => `chroot "$1" systemctl enable ${sh(u)}`).join('\n')
  const disable = recipe.services.disable.map((u) => `chroot "$1" systemctl disable ${sh(u)} 2>/dev/null || true\nchroot "$1" systemctl mask ${sh(u)}`).join('\n')
  return `#!/bin/sh
# generated by pgi image build: configures the rootfs given as $1
set -eu
export SOURCE_DATE_EPOCH=${ctx.epoch}
${ctx.cacheMounted ? 'umount "$1/var/cache/apt/archives"' : ''}
# dpkg in the VM syncs what it writes (the build's unsafe-io is for the build only)
sed -i '/^force-unsafe-io$/d' "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
# recipe files
cp -a ${sh(ctx.stage)}/. "$1/"
${ctx.chowns.join('\n')}
# kernel, initramfs and boot loader configuration
KVER=$(cd "$1/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
[ -n "$KVER" ] || { echo "no kernel in /boot" >&2; exit 1; }
printf '%s\\n' "$KVER" > ${sh(join(ctx.work, 'kernel-release'))}
mkdir -p "$1/etc/initramfs-tools/conf.d"
# only the listed modules; gzip, made again \`--rsyncable\` once built (below)
printf 'MODULES=list\\nCOMPRESS=gzip\\n' > "$1/etc/initramfs-tools/conf.d/pgi.conf"
# virtio disks and NIC; and the CD-ROM drivers (IDE, SATA, SCSI): Proxmox's cloud-init drive is a
# CD-ROM, and cloud-init's generator (ds-identify) looks for its label before udev loads modules:
# without them in the initramfs it finds no seed and disables cloud-init for the boot
printf 'virtio_pci\\nvirtio_blk\\nvirtio_scsi\\nvirtio_net\\nsd_mod\\nata_piix\\nahci\\nsr_mod\\n' >> "$1/etc/initramfs-tools/modules"
mkdir -p "$1/boot/extlinux"
cat > "$1/boot/extlinux/extlinux.conf" <<EOF
DEFAULT linux
TIMEOUT 1
PROMPT 0
LABEL linux
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=LABEL=${recipe.disk.label} ro ${recipe.kernel.cmdline}
EOF
printf 'LABEL=%s / ext4 defaults,noatime,errors=remount-ro 0 1\\n' ${sh(recipe.disk.label)} > "$1/etc/fstab"
echo ${sh(recipe.name)} > "$1/etc/hostname"
# services
${enable}
${disable}
# the recipe's own configuration
cat > "$1/tmp/pgi-configure.sh" <<'PGI_CONFIGURE_EOF'
${recipe.configure ?? 'true'}
PGI_CONFIGURE_EOF
# $PGI_BUILD_CACHE: a folder kept between builds of this recipe, for results that depend only on
# inputs the recipe puts in their key (e.g. the template database of pgi-tryton)
mkdir -p "$1/var/cache/pgi-build"
mount -o bind ${sh(ctx.buildCache)} "$1/var/cache/pgi-build"
PGI_BUILD_CACHE=/var/cache/pgi-build chroot "$1" /bin/sh /tmp/pgi-configure.sh
umount "$1/var/cache/pgi-build"
rmdir "$1/var/cache/pgi-build"
rm -f "$1/tmp/pgi-configure.sh"
# the initramfs's file times are its SOURCE_DATE_EPOCH: one fixed time (1, as Nix does), since
# nothing reads them once it is unpacked at boot; with the build's time every file's header
# changed in every version (6 MB of a delta that changed nothing else), with the kernel's at
# every kernel update
SOURCE_DATE_EPOCH=1 chroot "$1" update-initramfs -u -k "$KVER" >/dev/null
# compressed again with gzip --rsyncable (its stream starts afresh wherever the content allows):
# a new kernel then changes the compressed initramfs around its modules only, not from its first
# byte, so a minor update's delta sends those chunks (docs/delivery.md). Not left uncompressed
# (tried): mkfs.ext4 -d stores a 16 MB plain cpio sparse (its zero blocks as holes, in a depth-1
# extent tree), and extlinux then fails before the kernel prints anything; the same image with
# the file rewritten without holes (one extent) boots. A compressed file has no zero blocks.
# Bookworm's mkinitramfs has no COMPRESS=none anyway
INITRD="$1/boot/initrd.img-$KVER"
gzip -dc "$INITRD" > "$INITRD.cpio"
gzip -n -9 --rsyncable < "$INITRD.cpio" > "$INITRD.new"
rm "$INITRD.cpio"
touch -r "$INITRD" "$INITRD.new"
mv "$INITRD.new" "$INITRD"
# what is installed, for the lock and the manifest
chroot "$1" dpkg-query -W -f '\${Package}\\t\${Version}\\n' > ${sh(join(ctx.work, 'packages.tsv'))}
# trim
${rm}
# nothing specific to the build machine or to one VM
: > "$1/etc/machine-id"
rm -f "$1/var/lib/dbus/machine-id" "$1"/etc/ssh/ssh_host_*
rm -rf "$1"/var/lib/cloud/* "$1"/var/lib/systemd/random-seed "$1"/var/cache/ldconfig/aux-cache
# not /tmp: mmdebstrap keeps its apt configuration there (its TMPDIR) until its own clean-up, which
# then empties /tmp itself. Without that file, the clean-up's \`apt-get update\` (with no sources) and
# \`apt-get clean\` read the host's configuration and empty the host's package lists and apt cache
rm -rf "$1"/var/tmp/* "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old
# the archive's package lists (~50 MB, 12 MB compressed): a copy of the mirror at build time, which
# would make two builds differ whenever the archive changed between them; \`apt-get update\` fetches them
find "$1/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
find "$1/var/log" -type f -delete
find "$1/var/cache/man" -type f -delete 2>/dev/null || true
# Python byte code: made again with hash-based invalidation, so it is the same in every build
# (the packages' own .pyc embed build-time mtimes); without it trytond compiles ~4 CPU-minutes
# of modules at each start under software emulation
find "$1" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} +
# (with the image's standard library: /usr/lib/python3.11 on Debian 12, python3.13 on Debian 13).
# Two processes, each through a fixed list of files in a fixed order: marshal's output for a file
# depends on what the same process compiled before (which strings it already holds, and how often
# they are referenced), so compileall -j 2, whose workers take files as they come, gave two builds
# two trytond/model/modelview .pyc files under Python 3.13. PYTHONHASHSEED fixed as well, so that
# nothing in the compiler's run depends on a random seed.
if [ -x "$1/usr/bin/python3" ]; then
  PYLIB=$(chroot "$1" python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  PYROOT=$1
  pyc() { chroot "$PYROOT" env PYTHONHASHSEED=0 python3 -m compileall -q -j 1 --invalidation-mode unchecked-hash -x '/(tests?|idlelib|lib2to3|turtledemo|ensurepip)/' "$@" >/dev/null; }
  pyc /usr/lib/python3 & PYC1=$!
  PYC2=0; pyc "$PYLIB" /usr/local/lib/pgi || PYC2=$?
  PYC1_RC=0; wait $PYC1 || PYC1_RC=$?
  [ "$PYC1_RC" -eq 0 ] && [ "$PYC2" -eq 0 ] || echo "warning: compileall reported errors (modules left uncompiled compile at run time)" >&2
fi
# whatever ran above (the recipe's configure included) must have left that file: stop the build rather
# than let mmdebstrap's clean-up run apt on the host
if [ -n "\${MMDEBSTRAP_APT_CONFIG:-}" ] && [ ! -e "$MMDEBSTRAP_APT_CONFIG" ]; then
  echo "pgi: mmdebstrap's apt configuration $MMDEBSTRAP_APT_CONFIG was removed during the build (a clean-up of the image's /tmp?); stopping before mmdebstrap's clean-up would run apt with the host's configuration" >&2
  exit 1
fi
`
}

/**
 * The version a build may give: a version (1.2.0, 2.0.0-rc1) and, for a recipe of a folder with
 * several lines (pgi-tryton: 1.x on Debian 12, 2.x on Debian 13), one of its own line, so that a
 * 2.0.0 can never be a Debian 12 image (nor take that version from the real one).
 */
export async function checkVersionOfLine(recipe: Recipe, version: string): Promise<void> {
  if (!VERSION_RE.test(version)) throw new UserError(ErrorCode.USAGE, `version "${version}" is not a version like 1.2.0`, {exitCode: ExitCode.USAGE})
  if (recipe.line === undefined || majorOf(version) === recipe.line) return
  const lines = await recipeLines(recipe.dir)
  const other = lines.find((l) => l.line === majorOf(version))
  throw new UserError(ErrorCode.USAGE, `${recipe.path} builds the versions ${recipe.line}.x, not ${version}`, {
    exitCode: ExitCode.USAGE,
    suggestions: [
      other
        ? `Build ${version} from its line: pgi image build ${recipe.name}@${other.line} --version ${version}`
        : `Give a version ${recipe.line}.x, or add the line ${majorOf(version)} (images/${recipe.name}/image@${majorOf(version)}.yaml, docs/image.md).`,
    ],
  })
}

/** Builds, signs and publishes an image. Needs root (mmdebstrap, loop devices, mount). */
export async function buildImage(opts: BuildOptions): Promise<BuildResult> {
  const env = opts.env ?? process.env
  const {io} = opts
  const started = Date.now()
  if (process.getuid?.() !== 0) {
    throw new UserError(ErrorCode.NOT_ROOT, 'building an image needs root (mmdebstrap, loop devices and mount)', {
      suggestions: ['Run it as root, e.g. `sudo pgi image build`.'],
    })
  }
  await requireTools(['mmdebstrap', 'mkfs.ext4', 'tune2fs', 'debugfs', 'sfdisk', 'losetup', 'mount', 'unshare', 'extlinux', 'qemu-img'])
  const mbr = ['/usr/lib/syslinux/mbr/mbr.bin', '/usr/lib/EXTLINUX/mbr.bin'].find((p) => existsSync(p))
  if (!mbr) throw new UserError(ErrorCode.TOOL_MISSING, 'syslinux mbr.bin not found', {suggestions: ['Install it: apt-get install syslinux-common']})

  const recipe = await loadRecipe(opts.recipe)
  if (opts.version && recipe.requestedVersion && opts.version !== recipe.requestedVersion) {
    throw new UserError(ErrorCode.USAGE, `${opts.recipe} names version ${recipe.requestedVersion} but --version is ${opts.version}`, {exitCode: ExitCode.USAGE, suggestions: ['Give the version once: in the recipe reference (pgi-tryton@2.0.1) or with --version.']})
  }
  const version = opts.version ?? recipe.requestedVersion ?? recipe.version
  await checkVersionOfLine(recipe, version)
  const root = opts.out ?? imagesDir(env)
  const outDir = imageDir(root, recipe.name, version)
  if (existsSync(join(outDir, 'manifest.json'))) {
    throw new UserError(ErrorCode.IMAGE_EXISTS, `image ${recipe.name} ${version} is already published in ${outDir}`, {
      exitCode: ExitCode.REFUSED,
      suggestions: ['Published versions are never overwritten: build with --version set to a new version.'],
    })
  }
  const epoch = Number(env.SOURCE_DATE_EPOCH ?? Math.floor(Date.now() / 1000))
  if (!Number.isInteger(epoch) || epoch < 0) throw new UserError(ErrorCode.USAGE, `SOURCE_DATE_EPOCH "${env.SOURCE_DATE_EPOCH}" is not a number of seconds`)
  const work = join(stateDir(env), 'build', `${recipe.name}-${version}-${process.pid}`)
  const cache = join(stateDir(env), 'apt-cache', recipe.suite)
  const buildCache = join(stateDir(env), 'build-cache', recipe.name)
  const lockFile = lockPath(recipe)

  interface Ctx {
    sources?: ResolvedSources
    lock?: ImageLock
    lockWritten: boolean
    drift?: string[]
    installed?: Map<string, string>
    kernelRelease?: string
    /** mtime of the kernel image (from its package): the time of what the build writes that is the same in every version. */
    kernelTime?: number
    treeDigest?: string
    treeEntries?: number
    raw?: string
    qcow2?: string
    manifest?: ImageManifest
    keyId?: string
  }
  const rootfs = join(work, 'root')
  const raw = join(work, 'disk.raw')
  const diskName = `${recipe.name}-${version}.qcow2`
  const tmpOut = join(root, recipe.name, `.${version}.partial-${process.pid}`)
  let mounted: {loop?: string; mnt?: string} = {}

  const steps: Step<Ctx>[] = [
    {
      title: 'Resolve packages and the lock',
      run: async (ctx) => {
        const lock = opts.updateLock ? undefined : await readLock(lockFile)
        if (lock && lock.request !== requestDigest(recipe)) {
          throw new UserError(ErrorCode.IMAGE_INVALID, `${lockFile} was written for another package list than the recipe's`, {
            exitCode: ExitCode.INVALID_INPUT,
            suggestions: ['The recipe\'s packages, kernel or suite changed: rebuild with --update-lock to resolve them again (and commit the new image.lock).'],
          })
        }
        ctx.lock = lock
        await rm(work, {recursive: true, force: true})
        await mkdir(work, {recursive: true})
        await mkdir(cache, {recursive: true})
        ctx.sources = await resolveSources(opts.mirror, recipe.suite, join(work, 'sources'))
        return `${lock ? `${lock.packages.size} packages pinned by image.lock` : 'no lock: resolving from the mirror'}; sources ${ctx.sources.origin}`
      },
    },
    {
      title: 'Install the root file system (mmdebstrap)',
      run: async (ctx, update) => {
        const stage = join(work, 'stage')
        await mkdir(join(stage, 'etc', 'pgi'), {recursive: true})
        const chowns = await stageFiles(recipe, stage)
        const imageJson = {name: recipe.name, version, build_time: new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'), ports: recipe.ports}
        await writeFile(join(stage, 'etc', 'pgi', 'image.json'), JSON.stringify(imageJson, null, 2) + '\n')
        await chmod(join(stage, 'etc', 'pgi'), 0o755)
        const hook = join(work, 'customize.sh')
        await mkdir(buildCache, {recursive: true})
        await writeFile(hook, customizeScript(recipe, {stage, chowns, epoch, work, cacheMounted: true, buildCache}), {mode: 0o755})
        const prefs = join(work, 'lock.pref')
        if (ctx.lock) await writeFile(prefs, aptPreferences(ctx.lock))
        const args = [
          '--mode=root',
          '--variant=apt',
          '--format=directory',
          `--architectures=${recipe.architecture}`,
          `--components=${recipe.components.join(',')}`,
          '--skip=download/empty',
          '--skip=essential/unlink',
          '--aptopt=APT::Install-Recommends "false"',
          '--aptopt=Acquire::Languages "none"',
          // no fsync of every unpacked file (the rootfs is thrown away if the build fails); removed
          // from the image's dpkg configuration by the customize hook
          '--dpkgopt=force-unsafe-io',
          ...recipe.trim.path_exclude.map((p) => `--dpkgopt=path-exclude=${p}`),
          ...recipe.trim.path_include.map((p) => `--dpkgopt=path-include=${p}`),
          `--setup-hook=mkdir -p "$1/var/cache/apt/archives" && mount -o bind ${sh(cache)} "$1/var/cache/apt/archives"`,
          ...(ctx.lock ? [`--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && cp ${sh(prefs)} "$1/etc/apt/preferences.d/pgi-image-lock.pref"`] : []),
          `--include=${[recipe.kernel.package, ...recipe.packages].join(',')}`,
          ...(ctx.lock ? [`--customize-hook=rm -f "$1/etc/apt/preferences.d/pgi-image-lock.pref"`] : []),
          `--customize-hook=${hook} "$1"`,
          recipe.suite,
          rootfs,
          ctx.sources!.arg,
        ]
        await run('mmdebstrap', args, {env: {SOURCE_DATE_EPOCH: String(epoch), LC_ALL: 'C.UTF-8'}, onLine: (l) => update(l.slice(0, 120)), timeoutMs: 30 * 60_000, signal: opts.signal, processGroup: true, killGraceMs: 30_000}, io)
        ctx.installed = parseDpkgList(await readFile(join(work, 'packages.tsv'), 'utf8'))
        ctx.kernelRelease = (await readFile(join(work, 'kernel-release'), 'utf8')).trim()
        return `${ctx.installed.size} packages, kernel ${ctx.kernelRelease}`
      },
    },
    {
      title: 'Check the packages against image.lock',
      run: async (ctx) => {
        if (ctx.lock) {
          const drift = lockDrift(ctx.lock, ctx.installed!)
          if (drift.length > 0 && opts.allowLockDrift) {
            for (const d of drift) opts.io.warn(`image.lock drift: ${d}`)
            ctx.drift = drift
            return `${drift.length} differences from the lock, taken (--allow-lock-drift): ${drift.slice(0, 3).join('; ')}${drift.length > 3 ? '; …' : ''}`
          }
          if (drift.length > 0) {
            throw new UserError(ErrorCode.IMAGE_INVALID, `the build did not reproduce image.lock (${drift.length} differences: ${drift.slice(0, 5).join('; ')})`, {
              details: {drift},
              suggestions: [
                'The mirror no longer has some locked versions (a Debian point release replaced them): use --mirror with a snapshot of the archive, or --update-lock to take the current versions (and commit image.lock), or --allow-lock-drift to build with them once, recorded in the manifest.',
              ],
            })
          }
          return 'identical to the lock'
        }
        const lock: ImageLock = {suite: recipe.suite, architecture: recipe.architecture, request: requestDigest(recipe), packages: ctx.installed!}
        await writeLock(lockFile, lock, recipe.name)
        ctx.lock = lock
        ctx.lockWritten = true
        return `wrote ${lockFile}`
      },
    },
    {
      title: 'Clamp timestamps and list the file tree',
      run: async (ctx) => {
        // every mtime newer than SOURCE_DATE_EPOCH is set to it (reproducible builds' convention)
        await run('find', [rootfs, '-xdev', '-newermt', `@${epoch}`, '-exec', 'touch', '--no-dereference', `--date=@${epoch}`, '{}', '+'], {signal: opts.signal}, io)
        // then byte code and folders take the times of what they come from / hold, not the build's
        const settled = await settleTreeTimes(rootfs)
        ctx.kernelTime = Math.floor((await stat(join(rootfs, 'boot', `vmlinuz-${ctx.kernelRelease}`))).mtimeMs / 1000)
        io.debug(`times settled: ${settled.pyc} byte-code files, ${settled.directories} folders`)
        const entries = await listTree(rootfs)
        ctx.treeDigest = digestTree(entries)
        ctx.treeEntries = entries.length
        await writeFile(join(work, 'files.txt'), formatTree(entries))
        return `${entries.length} entries, tree ${ctx.treeDigest.slice(0, 12)}`
      },
    },
    {
      title: 'Assemble the BIOS-bootable disk',
      run: async (ctx) => {
        const total = recipeDiskBytes(recipe.disk.size)
        const partSize = total - PART_OFFSET
        const ids = fixedIds(recipe, version)
        await rm(raw, {force: true})
        const fh = await open(raw, 'w')
        await fh.truncate(total)
        await fh.close()
        await run('sfdisk', ['--no-reread', '--no-tell-kernel', raw], {
          input: `label: dos\nlabel-id: ${ids.diskId}\nunit: sectors\n\nstart=${PART_OFFSET / SECTOR}, size=${partSize / SECTOR}, type=83, bootable\n`,
        }, io)
        // the file system is made from the directory, at the partition's offset (no partition device
        // nodes here), with fixed identifiers and clock; without a journal until extlinux is
        // installed (below). What makes the same tree give the same bytes: src/image/ext4.ts
        await mkfsFromTree({tree: rootfs, image: raw, offset: PART_OFFSET, sizeBytes: partSize, label: recipe.disk.label, uuid: ids.fsUuid, hashSeed: ids.hashSeed, epoch}, io)
        const loop = (await run('losetup', ['--find', '--show', '--offset', String(PART_OFFSET), '--sizelimit', String(partSize), raw], {}, io)).stdout.trim()
        mounted.loop = loop
        // what extlinux loads must be stored without holes (src/image/ext4.ts, sparseFiles)
        const bootFiles = [`/boot/vmlinuz-${ctx.kernelRelease}`, `/boot/initrd.img-${ctx.kernelRelease}`]
        const sparse = await sparseFiles(loop, bootFiles, io)
        if (sparse.length > 0) throw new UserError(ErrorCode.TOOL_FAILED, `${sparse.join(', ')}: stored with holes by mkfs.ext4 -d (all-zero 4 KiB blocks), which the boot loader cannot load: the image would not boot. Keep the file compressed (see the initramfs step of the build)`)
        // extlinux needs the file system mounted: in a mount namespace of its own, at a fixed path
        // (ext4 records it in the superblock), and gone with the namespace if the build is stopped
        await run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `mount -o noatime ${sh(loop)} /mnt && extlinux --install /mnt/boot/extlinux && umount /mnt`], {}, io)
        // what the read-write mount wrote with the build's clock, counters and random numbers
        // (superblock times and counts; new inodes ldlinux.* with their times, generation and
        // version; the boot folder's times), and every inode's ctime and atime copied from the
        // build tree by mkfs.ext4 -d: set to SOURCE_DATE_EPOCH / 0. The superblock first, so that
        // tune2fs copies it to the backups when it adds the journal (never written to: no stale
        // transactions of the mount in it)
        await pinSuperblock(loop, epoch, io)
        await addJournal(loop, epoch, io)
        // what the mount, mkfs and tune2fs wrote with the build's time (the boot loader's files, the
        // resize inode 7, the journal's inode 8) take the kernel's: the same in every version
        const pinned = await pinInodes(loop, epoch, {mtimePaths: ['/boot/extlinux/ldlinux.sys', '/boot/extlinux/ldlinux.c32', '/boot/extlinux', '/lost+found', '<7>', '<8>'], pathsTime: ctx.kernelTime!}, io)
        await run('losetup', ['-d', loop], {}, io)
        mounted.loop = undefined
        // syslinux's MBR boot code: the first 440 bytes (the partition table stays)
        const code = await readFile(mbr)
        const out = await open(raw, 'r+')
        await out.write(code.subarray(0, 440), 0, 440, 0)
        await out.close()
        ctx.raw = raw
        return `${recipe.disk.size}, ext4 label ${recipe.disk.label}, ${pinned} inodes`
      },
    },
    {
      title: 'Convert to zstd-compressed qcow2',
      run: async (ctx) => {
        await rm(tmpOut, {recursive: true, force: true})
        await mkdir(tmpOut, {recursive: true})
        ctx.qcow2 = join(tmpOut, diskName)
        await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '-c', '-o', 'compression_type=zstd', raw, ctx.qcow2], {signal: opts.signal}, io)
        return `${((await stat(ctx.qcow2)).size / 1e6).toFixed(0)} MB`
      },
    },
    {
      title: 'Write and sign manifest.json',
      run: async (ctx) => {
        const key = await signingKey(opts)
        const pub = publicKeyOf(key)
        const kid = keyId(pub)
        const pkgs = [...ctx.installed!.entries()].sort(([a], [b]) => (a < b ? -1 : 1))
        const m: ImageManifest = {
          format: 1,
          name: recipe.name,
          version,
          description: recipe.description,
          build_time: new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z'),
          source_date_epoch: epoch,
          disk: {
            file: diskName,
            format: 'qcow2',
            sha256: await sha256OfFile(ctx.qcow2!),
            size_bytes: (await stat(ctx.qcow2!)).size,
            virtual_size_bytes: recipeDiskBytes(recipe.disk.size),
            raw_sha256: await sha256OfFile(raw),
          },
          kernel: {package: recipe.kernel.package, release: ctx.kernelRelease!, version: ctx.installed!.get(`linux-image-${ctx.kernelRelease}`) ?? ''},
          recipe: {name: recipe.name, digest: recipe.digest},
          lock: {digest: createHash('sha256').update(await readFile(lockFile)).digest('hex'), packages: ctx.lock!.packages.size, ...(ctx.drift?.length ? {drift: ctx.drift} : {})},
          tree: {digest: ctx.treeDigest!, entries: ctx.treeEntries!},
          packages: pkgs.map(([name, v]) => ({name, version: v})),
          ports: recipe.ports,
          signing: {algorithm: 'ed25519', key_id: kid},
        }
        const bytes = manifestBytes(m)
        await writeFile(join(tmpOut, 'manifest.json'), bytes)
        await writeFile(join(tmpOut, 'manifest.sig'), signBytes(bytes, key))
        await cp(join(work, 'files.txt'), join(tmpOut, 'files.txt'))
        await exportTrustedKey(root, pub)
        if (existsSync(outDir)) await rm(outDir, {recursive: true}) // an unpublished leftover (no manifest.json)
        await rename(tmpOut, outDir)
        ctx.manifest = m
        ctx.keyId = kid
        return `key ${kid}`
      },
    },
  ]

  const ctx: Ctx = {lockWritten: false}
  try {
    await runSteps(io, steps, ctx)
  } finally {
    if (mounted.mnt) await run('umount', [mounted.mnt], {allowFailure: true}, io)
    if (mounted.loop) await run('losetup', ['-d', mounted.loop], {allowFailure: true}, io)
    // mmdebstrap unmounts what it mounted (proc, sys, dev) and the apt cache bind mount is ours; an
    // interrupted build can leave any of them behind: every mount under the work folder must be
    // gone before it is removed, or rm would empty the apt cache (or worse) through it
    const stillMounted = await unmountUnder(work, io)
    await rm(tmpOut, {recursive: true, force: true})
    if (stillMounted.length > 0) io.warn(`still mounted under the work folder: ${stillMounted.join(', ')}: ${work} left in place (unmount them, then remove it)`)
    else if (!opts.keepWork) await rm(work, {recursive: true, force: true})
  }
  const m = ctx.manifest!
  return {
    name: m.name,
    version: m.version,
    dir: outDir,
    disk: join(outDir, m.disk.file),
    manifest: join(outDir, 'manifest.json'),
    sha256: m.disk.sha256,
    sizeBytes: m.disk.size_bytes,
    treeDigest: m.tree.digest,
    lockWritten: ctx.lockWritten,
    lockDrift: ctx.drift ?? [],
    keyId: ctx.keyId!,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  }
}

/** Mount points at or under `dir` (from /proc/self/mountinfo, octal escapes decoded), deepest first. */
async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  const points = text.split('\n').map((l) => l.split(' ')[4]).filter((p): p is string => Boolean(p))
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
  return points.filter((p) => p === dir || p.startsWith(dir + '/')).sort((a, b) => b.length - a.length)
}

/** Unmounts everything mounted under `dir` (lazily when busy); returns what is still mounted. */
export async function unmountUnder(dir: string, io: Io): Promise<string[]> {
  for (const p of await mountsUnder(dir)) {
    const r = await run('umount', [p], {allowFailure: true}, io)
    if (r.exitCode !== 0) await run('umount', ['--lazy', p], {allowFailure: true}, io)
  }
  return mountsUnder(dir)
}
