import {join} from 'node:path'

import {build, type BuildResult, type Metafile} from 'esbuild'
import {describe, expect, it} from 'vitest'

import Status from '../../../commands/status.js'
import {TOKEN_SECRET_ENV} from '../../../src/status/service.js'
import {bundleOptions, checkOclifScript, commandIds, oclifScriptOptions} from '../../../scripts/bundle.mjs'

/**
 * The CLI bundle (scripts/bundle.mjs) keeps start-up fast only if `pgi --version` loads oclif alone
 * and commands.js (every command class, loaded by every command) none of the engine: commands
 * import their services inside run(). These check the bundle's module graph, built in memory.
 */
const HEAVY = ['undici', 'listr2', 'execa', 'age-encryption', 'yaml', 'js-yaml', 'busboy', 'ssh2', 'ajv']

let built: Promise<BuildResult> | undefined
function bundle(): Promise<BuildResult> {
  built ??= build({...bundleOptions(join(process.cwd(), 'dist', 'cli-test')), write: false, logLevel: 'silent'})
  return built
}
let script: Promise<string> | undefined
/** dist/cli/oclif.cjs's text, built in memory. */
function oclifScript(): Promise<string> {
  script ??= build({...oclifScriptOptions(join(process.cwd(), 'dist', 'cli-test', 'oclif.cjs')), write: false, logLevel: 'silent'}).then((r) => r.outputFiles![0]!.text)
  return script
}
async function metafile(): Promise<Metafile> {
  return (await bundle()).metafile!
}

/** The source files an entry loads before any import() runs. */
function staticInputs(m: Metafile, entry: string): string[] {
  const start = Object.keys(m.outputs).find((k) => m.outputs[k]!.entryPoint === `pgi-entry:${entry}`)!
  const seen = new Set<string>()
  const todo = [start]
  while (todo.length > 0) {
    const f = todo.pop()!
    if (seen.has(f) || !m.outputs[f]) continue
    seen.add(f)
    for (const i of m.outputs[f]!.imports) if (i.kind === 'import-statement' && !i.external) todo.push(i.path)
  }
  return [...seen].flatMap((f) => Object.keys(m.outputs[f]!.inputs))
}

describe('CLI bundle', () => {
  it('lists every command file under its oclif id', () => {
    const ids = Object.keys(commandIds())
    expect(ids).toContain('inventory:validate')
    expect(ids).toContain('status')
    expect(ids).toContain('rollout:start')
    expect(ids).not.toContain('index')
  })

  it('main.js (pgi --version) loads oclif (through oclif.js) and none of pgi', async () => {
    const inputs = staticInputs(await metafile(), 'main')
    expect(inputs.filter((i) => /^(src|commands)\//.test(i))).toEqual([])
    expect(inputs).toContain('pgi-oclif:oclif')
    // oclif itself is in oclif.cjs (run with its code cache), not in an ESM chunk
    expect(Object.keys((await metafile()).inputs).filter((i) => i.includes('node_modules/@oclif/core/'))).toEqual([])
  }, 60_000)

  it('commands.js loads no heavy package and no engine module: commands import them in run()', async () => {
    const inputs = staticInputs(await metafile(), 'commands')
    for (const p of HEAVY) expect(inputs.filter((i) => i.includes(`node_modules/${p}/`)), p).toEqual([])
    const engine = inputs.filter((i) => /^src\/(proxmox|inventory|deploy|secrets|lab|image)\/|^src\/(rollout|credentials|status)\/service\.ts$/.test(i))
    expect(engine).toEqual([])
    expect(inputs).toContain('commands/inventory/validate.ts')
  }, 60_000)

  it("oclif's command sort is patched at bundle time: no ICU collator at start-up", async () => {
    const text = await oclifScript()
    expect(text).toMatch(/\.sort\(\(a, b\) => \(?a\.id < b\.id \? -1 : a\.id > b\.id \? 1 : 0\)?\)/)
    expect(text).not.toContain('a.id.localeCompare(b.id)')
  }, 60_000)

  it("oclif.cjs has no dynamic import() left: oclif's module loader imports through oclif.js", async () => {
    const text = await oclifScript()
    expect(() => checkOclifScript(text)).not.toThrow()
    expect(text).toContain('await __pgiImport((0, node_url_1.pathToFileURL)(filePath).href)')
    expect(() => checkOclifScript('const m = await import(url)')).toThrow(/dynamic import/)
    expect(() => checkOclifScript('throw new Error(`${esm ? "import()" : "require"} failed`)')).not.toThrow()
  }, 60_000)

  it("status's help names the variable the service reads the token secret from", () => {
    expect(Status.description).toContain(TOKEN_SECRET_ENV)
    expect(Status.flags['token-id'].summary).toContain(TOKEN_SECRET_ENV)
  })
})
