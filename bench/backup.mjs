#!/usr/bin/env node
// Off-site backup benchmark (issue 23): the second night's push after a day of class activity as a
// fraction of the first full push (target <= 5 %). The work is bench/backup.py (the image's
// guest tools natively, real restic and rclone: see its docstring); this entry lets
// `node bench/run-all.js` run it with the others. Options are passed on (--students N, --parties N).
// Last line: one JSON object {"bench":"backup",...}.
import {spawnSync} from 'node:child_process'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const r = spawnSync('/usr/bin/python3', [join(here, 'backup.py'), ...process.argv.slice(2)], {stdio: 'inherit'})
process.exit(r.status ?? 1)
