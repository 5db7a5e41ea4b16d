/**
 * import() of a CommonJS package differs between the sources and the CLI bundle (src/interop.ts):
 * in the bundle the package's chunk exports `default` only. `Y.parseDocument is not a function`
 * crashed every YAML syntax error of `pgi inventory validate` that way, invisible to tests that
 * run the sources. These check the bundle itself, built in memory: every import() of such a chunk
 * goes through cjsExports().
 */
import {basename, join} from 'node:path'

import {build, type OutputFile} from 'esbuild'
import {describe, expect, it} from 'vitest'

import {cjsExports} from '../../../src/interop.js'
import {bundleOptions} from '../../../scripts/bundle.mjs'

let built: Promise<OutputFile[]> | undefined
function outputs(): Promise<OutputFile[]> {
  built ??= build({...bundleOptions(join(process.cwd(), 'dist', 'cli-interop-test')), write: false, logLevel: 'silent'}).then((r) => r.outputFiles.filter((f) => f.path.endsWith('.js')))
  return built
}

/** Chunks esbuild made for an import() of a CommonJS module: their only export is `default`. */
function commonJsChunks(files: OutputFile[]): string[] {
  return files.filter((f) => /^export default require_[\w$]+\(\);$/m.test(f.text) && !/^export \{/m.test(f.text)).map((f) => basename(f.path))
}

describe('import() of CommonJS packages in the CLI bundle', () => {
  it('goes through cjsExports() everywhere', async () => {
    const files = await outputs()
    const chunks = commonJsChunks(files)
    // yaml (the inventory's exact reader) is one: the check below has something to check
    expect(chunks.some((c) => files.find((f) => basename(f.path) === c)!.text.includes('require_dist'))).toBe(true)
    const unwrapped: string[] = []
    let wrapped = 0
    for (const f of files) {
      for (const c of chunks) {
        const all = f.text.split(`import("./${c}")`).length - 1
        const ok = f.text.split(new RegExp(`cjsExports\\d*\\(\\s*await import\\("\\./${c.replace(/[.$]/g, '\\$&')}"\\)\\s*\\)`)).length - 1
        wrapped += ok
        if (all > ok) unwrapped.push(`${basename(f.path)} imports ${c} ${all - ok} time(s) without cjsExports()`)
      }
    }
    expect(unwrapped).toEqual([])
    expect(wrapped).toBeGreaterThan(0)
  }, 60_000)
})

describe('cjsExports', () => {
  it("returns module.exports: a namespace's default, when it is an object or a function", () => {
    const exportsObject = {parse: () => 1}
    // Node's namespace of a CommonJS module: named exports and default
    expect(cjsExports({default: exportsObject, parse: exportsObject.parse})).toBe(exportsObject)
    // the bundle's chunk: default only
    expect(cjsExports({default: exportsObject})).toBe(exportsObject)
    class Ajv {}
    expect(cjsExports({default: Ajv})).toBe(Ajv)
  })
})
