/**
 * The business figures of a Tryton database (pgifigures.py: business-table counts, trial balance,
 * posted invoices) and pgi-backup's use of them (recorded in each manifest, compared by --verify
 * after a restore), run natively against a throwaway PostgreSQL cluster and a real trytond with
 * invoices posted by proteus: the Python suite test_figures.py, each of its tests reported as one
 * test below. Skipped, with the reason, where pgi-db.test.ts is.
 */
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, missingImageTools} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))
describePythonSuite({title: 'business figures, native', dir: here, module: 'test_figures', missing: () => missingImageTools(here)})
