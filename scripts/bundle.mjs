#!/usr/bin/env node
// Build step (`npm run build`, after tsc): bundles the CLI into a few files under dist/cli/.
// Do not rebuild while a pgi from this tree runs: the chunks it has yet to import() are replaced.
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
//   dist/cli/hooks.js     oclif's hooks (package.json oclif.hooks: command_not_found), loaded
//                         only when oclif runs one
//   dist/cli/*-HASH.js    code both share, and the modules the commands import() when they run,
//                         so that a command loads only what it uses
//   dist/cli/oclif.js     @oclif/core for the two above: runs dist/cli/oclif.cjs (below)
//   dist/cli/oclif.cjs    @oclif/core and its dependencies as one CommonJS script, run through
//                         node:vm with a V8 code cache (oclif.cjs.v8-cache, written at the end)
// `pgi --version` loads main.js and oclif; a command also loads commands.js (all command
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
import {spawnSync} from 'node:child_process'
import {readdirSync, readFileSync, renameSync, rmSync} from 'node:fs'
import {readFile} from 'node:fs/promises'
import {createRequire} from 'node:module'
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

/**
 * Dynamic import() calls with a computed argument (oclif's module loader importing commands.js,
 * lilconfig, ts-path): rewritten to call `__pgiImport`, a parameter of oclif.cjs's wrapper given
 * by oclif.js (an ESM import() from there). A script compiled from V8 cached data has no dynamic
 * import callback on Node 20.20 (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING), and
 * vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER prints an ExperimentalWarning. `import()` with a
 * string literal is bundled by esbuild (e.g. `wsl-utils`). `"import()"` in a message is left.
 */
const DYNAMIC_IMPORT = /(?<![\w$.])import\((?!\s*['"`)])/g
const ANY_DYNAMIC_IMPORT = /(?<![\w$.])import\((?!\))/g

const oclifScriptSources = {
  name: 'pgi-oclif-script-sources',
  setup(b) {
    b.onLoad({filter: /\.c?js$/}, async (a) => {
      let text = await readFile(a.path, 'utf8')
      for (const p of OCLIF_PATCHES) {
        if (!p.file.test(a.path)) continue
        if (!text.includes(p.from)) throw new Error(`scripts/bundle.mjs: ${a.path} no longer contains ${JSON.stringify(p.from)}: update or drop this start-up patch`)
        text = text.replace(p.from, p.to)
      }
      return {contents: text.replace(DYNAMIC_IMPORT, '__pgiImport('), loader: 'js'}
    })
  },
}

/**
 * esbuild's options for dist/cli/oclif.cjs: @oclif/core and its dependencies as one CommonJS
 * script, which oclif.js compiles with node:vm and a V8 code cache.
 *
 * Why: on Node 20 (no module compile cache: `module.enableCompileCache` is Node 22.1+), V8
 * compiled oclif's 750 KB at every start, and compiled again each function it ran (~70 ms of
 * `pgi --version`). `new vm.Script(source, {cachedData})` takes the compiled code from the cache
 * file instead: ~35 ms less per start. The cache is V8's own format, tied to this Node binary and
 * this exact source: when V8 rejects it (another Node, a rebuilt bundle) the script is compiled as
 * before, just slower, and `npm run build` writes a new one.
 */
export function oclifScriptOptions(outfile) {
  return {
    stdin: {contents: `module.exports = require('@oclif/core')`, resolveDir: root, sourcefile: 'pgi-oclif.cjs', loader: 'js'},
    outfile,
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    external: EXTERNAL,
    keepNames: true,
    logLevel: 'warning',
    plugins: [oclifScriptSources],
  }
}

/** Fails when a dynamic import() is left in oclif.cjs: it would fail when run from the code cache. */
export function checkOclifScript(text) {
  const left = text.match(ANY_DYNAMIC_IMPORT) ?? []
  if (left.length > 0) throw new Error(`scripts/bundle.mjs: oclif.cjs still has ${left.length} dynamic import(): add the case to DYNAMIC_IMPORT`)
}

/** The named exports of @oclif/core (oclif.js re-exports them from the script's module.exports). */
function oclifExportNames() {
  const names = Object.keys(createRequire(join(root, 'package.json'))('@oclif/core'))
  return names.filter((n) => /^[A-Za-z_$][\w$]*$/.test(n) && n !== 'default' && n !== '__esModule').sort()
}

/** dist/cli/oclif.js: runs oclif.cjs with its code cache and re-exports oclif's API. */
function oclifModule() {
  return `import {readFileSync, renameSync, writeFileSync} from 'node:fs'
import {createRequire} from 'node:module'
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'
import {Script} from 'node:vm'

const file = fileURLToPath(new URL('./oclif.cjs', import.meta.url))
const cacheFile = file + '.v8-cache'
let cachedData
try {
  cachedData = readFileSync(cacheFile)
} catch {
  // no cache (not built yet, or removed): compiled without it
}
// One line of wrapper before the source: oclif's line numbers in stack traces stay right.
const script = new Script('(function (exports, require, module, __filename, __dirname, __pgiImport) {' + readFileSync(file, 'utf8') + '\\n})', {filename: file, cachedData})
/** 'accepted' when V8 used the code cache; 'rejected' (another Node, or a stale cache) or 'absent' otherwise. */
export const codeCache = cachedData === undefined ? 'absent' : script.cachedDataRejected ? 'rejected' : 'accepted'
const mod = {exports: {}}
script.runInThisContext()(mod.exports, createRequire(file), mod, file, dirname(file), (specifier) => import(specifier))

/** Writes the code cache: V8's code for every function compiled so far in this process (see scripts/bundle.mjs). */
export function writeCodeCache() {
  const tmp = cacheFile + '.' + process.pid
  writeFileSync(tmp, script.createCachedData())
  renameSync(tmp, cacheFile)
}

export const {${oclifExportNames().join(', ')}} = mod.exports
`
}

/** pgi's code and commands import '@oclif/core': dist/cli/oclif.js, one instance for all. */
const oclifFromScript = {
  name: 'pgi-oclif-from-script',
  setup(b) {
    b.onResolve({filter: /^@oclif\/core(\/|$)/}, (a) => {
      if (a.path !== '@oclif/core') return {errors: [{text: `${a.path}: import '@oclif/core' itself (oclif runs from dist/cli/oclif.cjs; see scripts/bundle.mjs)`}]}
      return {path: 'oclif', namespace: 'pgi-oclif'}
    })
    b.onLoad({filter: /.*/, namespace: 'pgi-oclif'}, () => ({contents: oclifModule(), loader: 'js', resolveDir: root}))
  },
}

/** esbuild's options (also used by the unit test, with write: false). */
export function bundleOptions(outdir) {
  return {
    entryPoints: {main: 'pgi-entry:main', commands: 'pgi-entry:commands', hooks: join(root, 'src', 'cli', 'hooks.ts'), oclif: '@oclif/core'},
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
    plugins: [virtualEntries, oclifFromScript],
  }
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  // Written beside, then swapped in: a pgi started during the build finds a whole bundle.
  const outdir = join(root, 'dist', 'cli')
  const fresh = `${outdir}.new-${process.pid}`
  const old = `${outdir}.old-${process.pid}`
  rmSync(fresh, {recursive: true, force: true})
  const result = await build(bundleOptions(fresh))
  const script = join(fresh, 'oclif.cjs')
  await build(oclifScriptOptions(script))
  checkOclifScript(readFileSync(script, 'utf8'))
  try {
    renameSync(outdir, old)
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  renameSync(fresh, outdir)
  rmSync(old, {recursive: true, force: true})
  const files = Object.keys(result.metafile.outputs).filter((f) => f.endsWith('.js'))
  process.stdout.write(`cli bundle: ${files.length + 1} files in ${relative(root, outdir)}/\n`)
  writeCodeCache()
}

/**
 * Writes dist/cli/oclif.cjs.v8-cache from a process that ran `pgi --version` and `pgi inventory
 * validate` on the example inventory (read only): the cache then holds, compiled, the oclif
 * functions a start and a command's parse, run and output use (V8 caches the functions compiled
 * so far, not only the top level). A build without it still works, ~35 ms slower per start.
 */
function writeCodeCache() {
  const oclif = pathToFileURL(join(root, 'dist', 'cli', 'oclif.js')).href
  const dir = pathToFileURL(join(root, 'bin', 'run.js')).href
  const code = [
    `process.env.OCLIF_DISABLE_ENGINE_WARNING = 'true'`,
    `const oclif = await import(${JSON.stringify(oclif)})`,
    `await oclif.execute({dir: ${JSON.stringify(dir)}, args: ['--version']})`,
    `await oclif.execute({dir: ${JSON.stringify(dir)}, args: ['inventory', 'validate', '-i', ${JSON.stringify(join(root, 'inventory', 'example'))}]})`,
    `oclif.writeCodeCache()`,
  ].join('\n')
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {cwd: root, encoding: 'utf8', env: {...process.env, CI: 'true', NO_COLOR: '1'}})
  if (r.status !== 0) throw new Error(`scripts/bundle.mjs: writing oclif's code cache failed (exit ${r.status}):\n${r.stderr}`)
  process.stdout.write(`oclif code cache: ${relative(root, join(root, 'dist', 'cli', 'oclif.cjs.v8-cache'))}\n`)
}
