#!/usr/bin/env node
// pgi entry point: runs oclif from the CLI bundle (dist/cli/, written by `npm run build`; see
// scripts/bundle.mjs). The commands are found through package.json's oclif.commands (the bundle's
// COMMANDS) and oclif.manifest.json.

// oclif's Node version check (run when oclif is loaded, hence before the import below) require()s
// <its folder>/../package.json, which in the bundle is dist/package.json: it does not exist, so the
// check never ran, and the failed lookup cost ~7 ms of every start. package.json's engines field
// (checked by npm) says which Node pgi needs.
process.env.OCLIF_DISABLE_ENGINE_WARNING ??= 'true'
const {execute} = await import('../dist/cli/main.js')

await execute({dir: import.meta.url})
