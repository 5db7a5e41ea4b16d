import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {dirname, join, relative, sep} from 'node:path'

import madge from 'madge'
import {describe, expect, it} from 'vitest'

// The rules of docs/architecture.md that a machine can check, so that they stay true.

const root = join(import.meta.dirname, '..', '..')

function tsFiles(dir: string): string[] {
  return readdirSync(join(root, dir), {withFileTypes: true, recursive: true})
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => relative(root, join(e.parentPath, e.name)))
}

/** The module specifiers a file imports or re-exports (static and dynamic). */
function importsOf(file: string): string[] {
  const text = readFileSync(join(root, file), 'utf8')
  const out: string[] = []
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?\sfrom\s+['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)|(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g)) {
    out.push((m[1] ?? m[2] ?? m[3])!)
  }
  return out
}

/** The services: siblings on top of the fleet core, none importing another (docs/architecture.md). */
const SERVICES = ['deploy', 'status', 'credentials', 'rollout', 'db', 'backup']

/**
 * The sibling imports that remain, each with its reason (docs/architecture.md lists them): a new
 * one fails the test below until it is moved into src/fleet (or a lower layer) or added here.
 */
const SIBLING_EXCEPTIONS: Record<string, string> = {}

/** The src/ folder (first level) a relative import of `file` lands in, and the file it names. */
function target(file: string, spec: string): {dir: string; file: string} | undefined {
  if (!spec.startsWith('.')) return undefined
  const to = relative(root, join(root, dirname(file), spec)).replace(/\.js$/, '.ts')
  const parts = to.split(sep)
  if (parts[0] !== 'src') return undefined
  return {dir: parts.length > 2 ? parts[1]! : '', file: parts.join('/')}
}

/**
 * Calls that open a fleet by hand (load + select + secret store + hypervisor clients): only
 * src/fleet/open.ts makes them for a command. `loadValidInventory` stays allowed in the
 * `pgi inventory` commands, which read an inventory and open no fleet.
 */
const OPENS_FLEET = [/\bnew Hypervisors\(/, /\bSecretStore\.open\(/, /\bopenInventoryStore\(/, /\bselectEstablishments\(/, /\bloadValidInventory\(/]

function fleetOpeners(files: string[]): string[] {
  return files.flatMap((f) => {
    const text = readFileSync(join(root, f), 'utf8')
    return OPENS_FLEET.filter((re) => re.test(text))
      .filter((re) => !(f.startsWith(join('commands', 'inventory') + sep) && re.source.includes('loadValidInventory')))
      .map((re) => `${f}: ${re.source.replace(/\\b/g, '').replace(/\\/g, '')}`)
  })
}

function siblingImports(files: string[]): string[] {
  return files.flatMap((f) => {
    const from = f.split(sep)[1]!
    return importsOf(f)
      .map((s) => target(f, s))
      .filter((t): t is {dir: string; file: string} => t !== undefined && t.dir !== from && SERVICES.includes(t.dir))
      .map((t) => `${f.split(sep).join('/')} -> ${t.file}`)
  })
}

describe('architecture', () => {
  it('src/ has no import cycle (madge, type imports included)', async () => {
    const graph = await madge(join(root, 'src'), {fileExtensions: ['ts'], tsConfig: join(root, 'tsconfig.json')})
    expect(graph.circular()).toEqual([])
  }, 60_000)

  it('src/ imports oclif only from src/cli', () => {
    const offenders = tsFiles('src')
      .filter((f) => !f.startsWith(join('src', 'cli') + '/'))
      .flatMap((f) => importsOf(f).filter((s) => s === 'oclif' || s.startsWith('@oclif/')).map((s) => `${f}: ${s}`))
    expect(offenders).toEqual([])
  })

  it('no file in src/ is over 600 lines (split by concern, docs/architecture.md)', () => {
    const long = tsFiles('src')
      .map((f) => ({f, lines: readFileSync(join(root, f), 'utf8').split('\n').length}))
      .filter((x) => x.lines > 600)
      .map((x) => `${x.f}: ${x.lines} lines`)
    expect(long).toEqual([])
  })

  it('deploy and credentials reach a lab only through the connection they are given (src/lab is not imported)', () => {
    const offenders = [...tsFiles(join('src', 'deploy')), ...tsFiles(join('src', 'credentials'))].flatMap((f) =>
      importsOf(f)
        .filter((s) => /(^|\/)lab\//.test(s))
        .map((s) => `${f}: ${s}`),
    )
    expect(offenders).toEqual([])
  })

  it('every command opens the fleet one way: only src/fleet/open.ts loads, selects, opens the store and the hypervisor clients', () => {
    const files = [...SERVICES.flatMap((d) => (existsSync(join(root, 'src', d)) ? tsFiles(join('src', d)) : [])), ...tsFiles(join('src', 'cli')), ...tsFiles('commands')]
    expect(fleetOpeners(files)).toEqual([])
  })

  it('the services are siblings: none imports another (but for the listed exceptions), nor the lab', () => {
    const files = SERVICES.flatMap((d) => (existsSync(join(root, 'src', d)) ? tsFiles(join('src', d)) : []))
    const found = siblingImports(files)
    expect(found.filter((x) => !(x in SIBLING_EXCEPTIONS))).toEqual([])
    // an exception that is gone is taken off the list (it would let the import back silently)
    expect(Object.keys(SIBLING_EXCEPTIONS).filter((x) => !found.includes(x))).toEqual([])
    const lab = files.flatMap((f) => importsOf(f).filter((s) => target(f, s)?.dir === 'lab').map((s) => `${f}: ${s}`))
    expect(lab).toEqual([])
  })

  it('the checks above see what they must see (they can fail)', () => {
    // a sibling import, the lab, and a fleet opened by hand, written as a service would write them
    expect(siblingImports([join('src', 'deploy', 'service.ts')])).toEqual([])
    const probe = (text: string) => {
      const f = join('src', 'rollout', 'service.ts')
      return {imports: [...text.matchAll(/from '([^']+)'/g)].map((m) => target(f, m[1]!)), opens: OPENS_FLEET.filter((re) => re.test(text)).length}
    }
    const p = probe("import {openInventoryStore} from '../credentials/service.js'\nimport {x} from '../lab/runtime.js'\nconst h = new Hypervisors(inv, {io})")
    expect(p.imports.map((t) => t?.dir)).toEqual(['credentials', 'lab'])
    expect(p.opens).toBe(1)
    expect(fleetOpeners([join('commands', 'destroy.ts')])).toEqual([])
  })

  it('the import reader sees the imports it must see (the check above can fail)', () => {
    const base = readFileSync(join(root, 'src', 'cli', 'base-command.ts'), 'utf8')
    expect(base).toMatch(/@oclif\/core/)
    expect(importsOf(join('src', 'cli', 'base-command.ts'))).toContain('@oclif/core')
  })
})
