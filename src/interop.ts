/**
 * The `module.exports` of a CommonJS package loaded with `import()`:
 *
 *     const {parseDocument} = cjsExports(await import('yaml'))
 *
 * Why: the two ways pgi runs give different module objects for the same `import('yaml')`.
 * - From tsc's output or the TypeScript sources (tests, the library, the lab daemon), Node
 *   imports the CommonJS file and gives a namespace with `default` (= module.exports) and the
 *   named exports its static analysis could find.
 * - From the CLI bundle (scripts/bundle.mjs: esbuild with code splitting), the package is put in
 *   a chunk whose only export is `default` (= module.exports): the named exports are undefined,
 *   and `Y.parseDocument(…)` throws "is not a function" (only in the bundle).
 * `default` is module.exports in both, so that is what this returns; the namespace is returned
 * only when there is no object or function under `default`.
 *
 * TypeScript (module: nodenext) types a CommonJS package's `default` as its module.exports too,
 * hence the return type.
 *
 * For CommonJS packages only: the `default` of an ES module is its default export, not the module.
 * A static `import {x} from 'pkg'` needs none of this (esbuild rewrites those property accesses).
 * test/unit/cli/cjs-interop.test.ts checks that every import() of a CommonJS package in src/ and
 * commands/ goes through here, and that the bundle keeps working.
 */
export function cjsExports<T extends {default: object}>(ns: T): T['default'] {
  const d: unknown = ns.default
  return (d !== null && typeof d === 'object') || typeof d === 'function' ? (d as T['default']) : ns
}
