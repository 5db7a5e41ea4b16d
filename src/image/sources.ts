import {existsSync} from 'node:fs'
import {mkdir, readdir, readFile, writeFile} from 'node:fs/promises'
import {basename, join} from 'node:path'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'

/**
 * The apt sources an image is built from, for the recipe's suite. pgi never writes a mirror host
 * name: it takes this host's own sources (or `--mirror`), and when they list another Debian
 * release than the recipe's (a Debian 12 host building a Debian 13 image), it derives sources for
 * the recipe's suite from them: the same URIs, components, keys and options, each suite renamed
 * (`bookworm` → `trixie`, `bookworm-security` → `trixie-security`, `bookworm-updates` →
 * `trixie-updates`). Debian's archive serves every release under the same URIs.
 *
 * apt has no library for Node; the two formats (deb822 `.sources` and one-line `sources.list`)
 * are small and documented in sources.list(5), hence the parser below.
 */
export interface AptSource {
  types: string[]
  uris: string[]
  suites: string[]
  components: string[]
  /** Every other field (Signed-By, Architectures, …), deb822 names, in their order. */
  options: [string, string][]
}

export interface ResolvedSources {
  /** What mmdebstrap gets as its mirror argument: a file, or a URL (mmdebstrap makes the line). */
  arg: string
  /** Where they came from, for messages ("/etc/apt/sources.list.d/debian.sources", "trixie derived from …"). */
  origin: string
  /** The suites the build will read (empty for a URL: mmdebstrap uses the recipe's suite). */
  suites: string[]
}

/** Parses deb822 stanzas (sources.list(5)); stanzas with `Enabled: no` are left out. */
export function parseDeb822(text: string): AptSource[] {
  const out: AptSource[] = []
  for (const stanza of text.split(/\n[ \t]*\n/)) {
    const fields: [string, string][] = []
    for (const raw of stanza.split('\n')) {
      if (/^\s*#/.test(raw) || raw.trim() === '') continue
      if (/^[ \t]/.test(raw) && fields.length > 0) {
        // continuation line (multi-line values, e.g. an inline Signed-By key)
        fields[fields.length - 1][1] += '\n' + raw
        continue
      }
      const m = /^([A-Za-z0-9-]+):[ \t]*(.*)$/.exec(raw)
      if (m) fields.push([m[1], m[2].trimEnd()])
    }
    if (fields.length === 0) continue
    const get = (k: string) => fields.find(([f]) => f.toLowerCase() === k.toLowerCase())?.[1]
    const words = (k: string) => (get(k) ?? '').split(/\s+/).filter(Boolean)
    if (/^(no|false|0)$/i.test((get('Enabled') ?? '').trim())) continue
    const known = new Set(['types', 'uris', 'suites', 'components', 'enabled'])
    out.push({
      types: words('Types'),
      uris: words('URIs'),
      suites: words('Suites'),
      components: words('Components'),
      options: fields.filter(([f]) => !known.has(f.toLowerCase())),
    })
  }
  return out
}

/** One-line option names and their deb822 field names (sources.list(5)). */
const ONE_LINE_OPTIONS: Record<string, string> = {
  arch: 'Architectures',
  lang: 'Languages',
  target: 'Targets',
  'signed-by': 'Signed-By',
  trusted: 'Trusted',
  'check-valid-until': 'Check-Valid-Until',
  'valid-until-min': 'Valid-Until-Min',
  'valid-until-max': 'Valid-Until-Max',
  'check-date': 'Check-Date',
  'date-max-future': 'Date-Max-Future',
  'inrelease-path': 'InRelease-Path',
  'allow-insecure': 'Allow-Insecure',
  'allow-weak': 'Allow-Weak',
  'allow-downgrade-to-insecure': 'Allow-Downgrade-To-Insecure',
  'by-hash': 'By-Hash',
  pdiffs: 'PDiffs',
  snapshot: 'Snapshot',
}

/** Parses one-line `sources.list` entries: `deb [opt=v …] URI SUITE [COMPONENT…]`. */
export function parseOneLine(text: string): AptSource[] {
  const out: AptSource[] = []
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim()
    const m = /^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line)
    if (!m) continue
    const options: [string, string][] = []
    for (const opt of (m[2] ?? '').split(/\s+/).filter(Boolean)) {
      const o = /^([a-z-]+)([+-]?)=(.*)$/.exec(opt)
      if (!o) continue
      const name = ONE_LINE_OPTIONS[o[1]] ?? o[1]
      options.push([o[2] === '+' ? `${name}-Add` : o[2] === '-' ? `${name}-Remove` : name, o[3].split(',').join(' ')])
    }
    out.push({types: [m[1]], uris: [m[3]], suites: [m[4]], components: m[5].split(/\s+/).filter(Boolean), options})
  }
  return out
}

export function formatDeb822(sources: readonly AptSource[]): string {
  return sources
    .map((s) =>
      [
        `Types: ${s.types.join(' ')}`,
        `URIs: ${s.uris.join(' ')}`,
        `Suites: ${s.suites.join(' ')}`,
        ...(s.components.length > 0 ? [`Components: ${s.components.join(' ')}`] : []),
        ...s.options.map(([k, v]) => `${k}: ${v}`),
      ].join('\n') + '\n',
    )
    .join('\n')
}

/** A suite's release and pocket: `bookworm-security` → [`bookworm`, `-security`], `bullseye/updates` → [`bullseye`, `/updates`]. */
export function splitSuite(suite: string): [string, string] {
  const m = /^([^-/]+)([-/].*)?$/.exec(suite)
  return m ? [m[1], m[2] ?? ''] : [suite, '']
}

/**
 * The sources for `suite`: the binary (`deb`) entries whose suites are of that release, or, when
 * none are, those of the release the sources list most (the host's own), each suite renamed to
 * `suite` with its pocket kept. Entries of other releases (a third-party repository's) are left
 * out. `undefined` when nothing is left.
 */
export function sourcesForSuite(sources: readonly AptSource[], suite: string): {sources: AptSource[]; from: string} | undefined {
  const binary = sources
    .filter((s) => s.types.includes('deb') && s.uris.length > 0 && s.suites.length > 0 && !s.uris.every((u) => u.startsWith('cdrom:')))
    .map((s) => ({...s, types: ['deb']}))
  const releases = new Map<string, number>()
  for (const s of binary) for (const x of s.suites) releases.set(splitSuite(x)[0], (releases.get(splitSuite(x)[0]) ?? 0) + 1)
  const from = releases.has(suite) ? suite : [...releases.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]?.[0]
  if (from === undefined) return undefined
  const out: AptSource[] = []
  for (const s of binary) {
    const suites = s.suites.filter((x) => splitSuite(x)[0] === from).map((x) => suite + splitSuite(x)[1])
    if (suites.length > 0) out.push({...s, suites})
  }
  return out.length > 0 ? {sources: out, from} : undefined
}

const noSources = (what: string) =>
  new UserError(ErrorCode.USAGE, what, {
    exitCode: ExitCode.USAGE,
    suggestions: ['Pass --mirror (or PGI_IMAGE_MIRROR) with a deb822 .sources file, a sources.list file or a mirror URL.'],
  })

/** Reads a sources file in either format (deb822 when it has a `Types:` field). */
export async function readSourcesFile(path: string): Promise<AptSource[]> {
  const text = await readFile(path, 'utf8')
  return /^Types:/im.test(text) ? parseDeb822(text) : parseOneLine(text)
}

/** This host's apt sources: the first deb822 file of sources.list.d with a `deb` entry, else sources.list. */
export async function hostSources(etcApt = '/etc/apt'): Promise<{file: string; sources: AptSource[]} | undefined> {
  const dir = join(etcApt, 'sources.list.d')
  let names: string[] = []
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.sources')).sort()
  } catch {
    // no sources.list.d
  }
  for (const n of names) {
    const sources = parseDeb822(await readFile(join(dir, n), 'utf8'))
    if (sources.some((s) => s.types.includes('deb'))) return {file: join(dir, n), sources}
  }
  const list = join(etcApt, 'sources.list')
  if (existsSync(list)) {
    const sources = parseOneLine(await readFile(list, 'utf8'))
    if (sources.some((s) => s.types.includes('deb'))) return {file: list, sources}
  }
  return undefined
}

/**
 * The apt sources mmdebstrap uses for `suite`: `--mirror` (a URL, or a file in either format),
 * else this host's. A file that lists exactly the recipe's release is used as it is; otherwise
 * sources for that release are derived from it (see above) and written to `workDir`.
 */
export async function resolveSources(mirror: string | undefined, suite: string, workDir: string, etcApt = '/etc/apt'): Promise<ResolvedSources> {
  let file: string
  let sources: AptSource[]
  if (mirror) {
    if (/^(https?|file|mirror\+\w+):/.test(mirror)) return {arg: mirror, origin: '--mirror URL', suites: []}
    if (!existsSync(mirror)) throw new UserError(ErrorCode.USAGE, `--mirror ${mirror}: no such file`, {exitCode: ExitCode.USAGE, suggestions: ['Give a deb822 .sources file, a sources.list file or a mirror URL.']})
    file = mirror
    sources = await readSourcesFile(mirror)
  } else {
    const host = await hostSources(etcApt)
    if (!host) throw noSources('no apt sources on this host to build from')
    file = host.file
    sources = host.sources
  }
  const picked = sourcesForSuite(sources, suite)
  if (!picked) throw noSources(`${file} lists no binary (deb) sources to build ${suite} from`)
  const asIs = sources.every((s) => !s.types.includes('deb') || s.suites.every((x) => splitSuite(x)[0] === suite))
  const suites = [...new Set(picked.sources.flatMap((s) => s.suites))]
  if (asIs) return {arg: file, origin: file, suites}
  await mkdir(workDir, {recursive: true})
  const name = basename(file) === 'sources.list' ? 'debian.sources' : basename(file).replace(/\.(list|sources)$/, '') + '.sources'
  const out = join(workDir, name)
  await writeFile(out, `# ${suite}: derived by pgi from ${file} (same URIs and keys; suites renamed from ${picked.from})\n` + formatDeb822(picked.sources))
  return {arg: out, origin: picked.from === suite ? `${file} (its ${suite} entries)` : `${suite} derived from ${file} (${picked.from})`, suites}
}
