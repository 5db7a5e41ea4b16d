import {readdirSync, readFileSync} from 'node:fs'
import {join, relative} from 'node:path'

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

  it('the import reader sees the imports it must see (the check above can fail)', () => {
    const base = readFileSync(join(root, 'src', 'cli', 'base-command.ts'), 'utf8')
    expect(base).toMatch(/@oclif\/core/)
    expect(importsOf(join('src', 'cli', 'base-command.ts'))).toContain('@oclif/core')
  })
})
