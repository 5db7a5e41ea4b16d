/**
 * The image's database engine (pgi-db and /usr/local/lib/pgi/pgidb.py), run natively against a
 * throwaway PostgreSQL cluster and a real trytond: the Python suite test_pgidb.py (unittest, run
 * once here; each of its tests is reported as one test below). Skipped, with the reason, on a
 * machine without what it needs (root, Debian's postgresql, tryton-server, its modules and
 * tryton-proteus: `bash scripts/install-deps.sh --test` installs them).
 * The template database it starts from is built once by the image's make-template (minutes) and
 * kept in PGI_TEST_CACHE (/var/tmp/pgi-test-cache); later runs take about three minutes.
 */
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, missingImageTools} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))
describePythonSuite({title: 'pgi-db engine, native', dir: here, module: 'test_pgidb', missing: () => missingImageTools(here)})
