#!/usr/bin/env node
// pgi entry point: runs the compiled oclif commands from dist/ (see `npm run build`).
import {execute} from '@oclif/core'

await execute({dir: import.meta.url})
