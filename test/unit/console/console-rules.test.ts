/**
 * The teachers' console's rules, natively (test_console.py: the image's console application, its
 * jobs and command line against a throwaway PostgreSQL cluster and trytond; run once here, each of
 * its tests reported as one test below): every route refused to another teacher, every form
 * without its CSRF token refused, login rate limits, accounts from `pgi-console`, the database
 * role without superuser rights, imports validated first, archives, backups seen only by their
 * teacher, one job per database, interrupted jobs. The browser scenario is console-browser.test.ts.
 * Skipped, with the reason, on a machine without what it needs (scripts/install-deps.sh --test).
 */
import {spawnSync} from 'node:child_process'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, PYTHON} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))

function missing(): string | null {
  const r = spawnSync(PYTHON, [join(here, 'consolelab.py'), 'check'], {encoding: 'utf8'})
  if (r.error) return `${PYTHON} not found`
  if (r.status !== 0) return `cannot check the prerequisites: ${r.stderr.trim().slice(-300)}`
  return r.stdout.trim() || null
}

describePythonSuite({title: "teachers' console rules, native", dir: here, module: 'test_console', missing, env: {PYTHONWARNINGS: 'ignore'}})
