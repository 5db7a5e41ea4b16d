#!/usr/bin/env node
// Build step (`npm run build`, after tsc): bundles the CLI into a few ESM files under dist/cli/.
//
// Why: start-up time. Node 20 has no module compile cache (`module.enableCompileCache` is Node
// 22.1+), so every start finds, reads and compiles each module file again: `pgi --version` loaded
// ~160 CommonJS files of @oclif/core, semver and their dependencies, and each command its share of
// our ~100 tsc-compiled modules, one file at a time. A bundle is a few files.
//
// What is written (see docs/performance.md, "startup"):
//   dist/cli/main.js      @oclif/core's `execute`, imported by bin/run.js
//   dist/cli/commands.js  `COMMANDS`, every command class by id: oclif's "explicit" command
//                         discovery (package.json oclif.commands); `oclif manifest` reads it too
//   dist/cli/*-HASH.js    code both share (oclif itself), and the modules the commands import()
//                         when they run, so that a command loads only what it uses
// `pgi --version` loads main.js and oclif's chunk; a command also loads commands.js (all command
// classes: their flags and help) and then what its run() imports. Commands therefore import their
// engine (services, Proxmox client, age, …) inside run(), not at the top of the file: the unit test
// test/unit/cli/bundle.test.ts checks that commands.js does not load the heavy packages.
//
// The list of commands is made here from the files under commands/, with the ids oclif's default
// ("pattern") discovery gave them: adding a command file is enough, as before.
//
// dist/src/ (tsc's output) stays as it was: it is the library (`import … from 'pgi'`), the lab
// daemon (its own process: dist/src/lab/daemon.js) and the precompiled inventory validator, which
// the bundled code finds there (src/paths.ts, moduleTreeDir).
//
// Left out of the bundle and loaded from node_modules: ssh2 and its optional cpu-features (native
// add-ons; no command uses them today), ajv (the precompiled validator's run-time helpers, or the
// schema compiler when that validator is stale) and typescript (oclif reads tsconfig.json with it
// in development only).
import {readdirSync, renameSync, rmSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {dirname, join, relative, sep} from 'node:path'
import {fileURLToPath, pathToFileURL} from 'node:url'

import {build} from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const EXTERNAL = ['ssh2', 'cpu-features', 'ajv', 'typescript']

function commandFiles(dir = join(root, 'commands')) {
  const out = []
  for (const e of readdirSync(dir, {withFileTypes: true})) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...commandFiles(p))
    else if (/\.ts$/.test(e.name) && !/\.(d|test|spec)\.ts$/.test(e.name)) out.push(p)
  }
  return out.sort()
}

/** commands/inventory/validate.ts -> 'inventory:validate' (an index.ts is its folder's command). */
export function commandIds() {
  return Object.fromEntries(commandFiles().map((f) => [relative(join(root, 'commands'), f).replace(/\.ts$/, '').split(sep).filter((s) => s !== 'index').join(':'), f]))
}

function commandsModule() {
  const entries = Object.entries(commandIds())
  const lines = entries.map(([, f], i) => `import C${i} from ${JSON.stringify('./' + relative(root, f).split(sep).join('/'))}`)
  lines.push(`export const COMMANDS = {\n${entries.map(([id], i) => `  ${JSON.stringify(id)}: C${i},`).join('\n')}\n}`)
  return lines.join('\n')
}

/** The two entry points, made here rather than kept as source files (which tsc would compile too). */
const virtualEntries = {
  name: 'pgi-entries',
  setup(b) {
    const contents = {main: `export {execute} from '@oclif/core'`, commands: commandsModule()}
    b.onResolve({filter: /^pgi-entry:/}, (a) => ({path: a.path.slice('pgi-entry:'.length), namespace: 'pgi-entry'}))
    b.onLoad({filter: /.*/, namespace: 'pgi-entry'}, (a) => ({contents: contents[a.path], loader: 'ts', resolveDir: root}))
  },
}

/**
 * Start-up patches to @oclif/core, applied to its files as they are bundled (node_modules is not
 * touched). Each names the exact text it replaces and fails the build when that text is gone (a
 * new oclif), so that a patch is never silently lost or misapplied.
 * - config/plugin.js sorts the manifest's commands with String#localeCompare: the process's first
 *   localeCompare initialises ICU's collator, ~15 ms of every start (a third of what is left above
 *   Node's own start for `pgi --version`). Command ids are ASCII words and colons: code-unit order.
 */
const OCLIF_PATCHES = [
  {
    file: /[\\/]@oclif[\\/]core[\\/]lib[\\/]config[\\/]plugin\.js$/,
    from: '.sort((a, b) => a.id.localeCompare(b.id));',
    to: '.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));',
  },
]

const oclifPatches = {
  name: 'pgi-oclif-patches',
  setup(b) {
    for (const p of OCLIF_PATCHES) {
      b.onLoad({filter: p.file}, async (a) => {
        const text = await readFile(a.path, 'utf8')
        if (!text.includes(p.from)) throw new Error(`scripts/bundle.mjs: ${a.path} no longer contains ${JSON.stringify(p.from)}: update or drop this start-up patch`)
        return {contents: text.replace(p.from, p.to), loader: 'js'}
      })
    }
  },
}

/** esbuild's options (also used by the unit test, with write: false). */
export function bundleOptions(outdir) {
  return {
    entryPoints: {main: 'pgi-entry:main', commands: 'pgi-entry:commands'},
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    external: EXTERNAL,
    // Bundled CommonJS code (oclif and its dependencies) calls require() for Node's own modules
    // and the external packages, and some of it reads __dirname: give each ESM output file a real
    // require, and CommonJS file names (those of the output file: bundled code has no other).
    banner: {
      js: [
        `import {createRequire as __pgiCreateRequire} from 'node:module';`,
        `import {dirname as __pgiDirname} from 'node:path';`,
        `import {fileURLToPath as __pgiFileURLToPath} from 'node:url';`,
        `const require = __pgiCreateRequire(import.meta.url);`,
        `const __filename = __pgiFileURLToPath(import.meta.url);`,
        `const __dirname = __pgiDirname(__filename);`,
      ].join('\n'),
    },
    // class and function names as in the sources (error names, stack traces); not minified, for
    // readable stack traces (minifying did not measurably change start-up)
    keepNames: true,
    sourcemap: true,
    metafile: true,
    logLevel: 'warning',
    plugins: [virtualEntries, oclifPatches],
  }
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  // Written beside, then swapped in: a pgi started during the build finds a whole bundle.
  const outdir = join(root, 'dist', 'cli')
  const fresh = `${outdir}.new-${process.pid}`
  const old = `${outdir}.old-${process.pid}`
  rmSync(fresh, {recursive: true, force: true})
  const result = await build(bundleOptions(fresh))
  try {
    renameSync(outdir, old)
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  renameSync(fresh, outdir)
  rmSync(old, {recursive: true, force: true})
  const files = Object.keys(result.metafile.outputs).filter((f) => f.endsWith('.js'))
  process.stdout.write(`cli bundle: ${files.length} files in ${relative(root, outdir)}/\n`)
}
