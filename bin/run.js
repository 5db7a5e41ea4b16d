#!/usr/bin/env node
// pgi entry point: runs oclif from the CLI bundle (dist/cli/, written by `npm run build`; see
// scripts/bundle.mjs). The commands are found through package.json's oclif.commands (the bundle's
// COMMANDS) and oclif.manifest.json.
import {execute} from '../dist/cli/main.js'

await execute({dir: import.meta.url})
