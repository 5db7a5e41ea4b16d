/**
 * pgisplit.py (the nightly dumps cut into pieces for the off-site copy, joined back at restore),
 * run natively on pgi-backup's real dumps of a throwaway PostgreSQL cluster: the Python suite
 * test_pgisplit.py, each of its tests reported as one test below. Skipped, with the reason, where
 * pgi-db.test.ts is.
 */
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, missingImageTools} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))
describePythonSuite({title: 'pgisplit, native', dir: here, module: 'test_pgisplit', missing: () => missingImageTools(here)})
