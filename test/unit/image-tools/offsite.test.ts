/**
 * pgi-offsite, the nightly backup's off-site copy with restic, run natively: real dumps from
 * pgi-backup (throwaway PostgreSQL cluster) pushed by the real restic to a real
 * `rclone serve restic --append-only` on 127.0.0.1 — first push and the Région's restore, a second
 * night that sends next to nothing, deletion refused from the VM's side, wrong key / unreachable /
 * full repository told apart, the transfer window, a push cut mid-way and resumed, and --restore (bad requests, unknown snapshot,
 * wrong key, existing databases refused, a lost server's databases back with the manifest's row
 * counts and a login, --replace keeping what it replaces). The Python
 * suite test_offsite.py, each of its tests reported as one test below; skipped, with the reason,
 * where pgi-db.test.ts is or without restic and rclone.
 */
import {spawnSync} from 'node:child_process'
import {dirname} from 'node:path'
import {fileURLToPath} from 'node:url'

import {describePythonSuite, missingImageTools, PYTHON} from '../../helpers/python-suite.js'

const here = dirname(fileURLToPath(import.meta.url))
describePythonSuite({
  title: 'pgi-offsite, native',
  dir: here,
  module: 'test_offsite',
  missing: () => {
    const r = spawnSync(PYTHON, ['-c', 'import test_offsite; print(test_offsite.missing() or "")'], {cwd: here, encoding: 'utf8'})
    return r.status === 0 ? r.stdout.trim() || null : missingImageTools(here)
  },
})
