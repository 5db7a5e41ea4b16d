/**
 * The major-version upgrade's guest side (pgimajor.py, run by pgi-upgrade when the 2.x OS boots on
 * a 1.x data disk): every database carried across from pgi-backup's verified dumps, the migration
 * notes' steps and trytond-admin --all, figures compared, progress in the status file, a failure on
 * one database failing the whole migration, a stopped run resumed. Run natively against a
 * throwaway PostgreSQL cluster and a real trytond: the Python suite test_major.py, each of its
 * tests reported as one test below. Skipped, with the reason, where pgi-db.test.ts is.
 */
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, missingImageTools} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))
describePythonSuite({title: 'major upgrade (guest side), native', dir: here, module: 'test_major', missing: () => missingImageTools(here)})
