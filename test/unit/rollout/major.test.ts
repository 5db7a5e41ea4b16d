/**
 * The host's side of a major upgrade that needs no guest: the disk space `pgi rollout plan`
 * computes from what the guest reports, the migration's time budget, the progress line, the
 * image stack read from a manifest, and `pgi rollout prune`'s refusal without its flag (through
 * bin/run.js: exit 7, nothing opened). The guest side is test/unit/image-tools/test_major.py; the
 * whole chain is test/e2e/rollout/major.test.ts.
 */
import {describe, expect, it} from 'vitest'

import {postgresqlMajorOf} from '../../../src/deploy/image.js'
import {trytonSeriesOf} from '../../../src/image/boottest.js'
import {describeMajorStatus, waitForDataDisk, type MajorInfo} from '../../../src/rollout/guest-scripts.js'
import {describeMigration, migrationPlan, migrationTimeoutFor, oldClusterRetention} from '../../../src/rollout/major.js'
import {assertBuilt, runPgi} from '../../helpers/cli.js'

const MiB = 2 ** 20
const info = (over: Partial<MajorInfo> = {}): MajorInfo => ({
  pg: '15',
  disk: {total: 10 * 1024 * MiB, free: 6 * 1024 * MiB},
  clusters: {'15': {path: '/srv/pgi/postgresql/15/main', bytes: 1000 * MiB, mode: '0o700'}},
  backup: {path: '/srv/pgi/backups/x', bytes: 200 * MiB, databases: 5},
  state: {},
  request: null,
  status: null,
  ...over,
})

describe('major upgrade, host side', () => {
  it('plans old + new cluster + dumps, and what must be free', () => {
    const m = migrationPlan(info(), '17')
    expect(m).toMatchObject({fromPg: '15', toPg: '17', databases: 5, oldClusterBytes: 1000 * MiB})
    expect(m.newClusterBytes).toBe(1200 * MiB + 256 * MiB)
    expect(m.dumpsBytes).toBe(Math.ceil(200 * MiB * 1.1))
    expect(m.totalBytes).toBe(m.oldClusterBytes + m.newClusterBytes + m.dumpsBytes)
    expect(m.needBytes).toBe(m.newClusterBytes + m.dumpsBytes)
    expect(m.freeBytes).toBeGreaterThan(m.needBytes)
    expect(describeMigration(m)).toBe('PostgreSQL 15 → 17, 5 database(s): old 1000 MiB + new 1456 MiB + dumps 220 MiB = 2676 MiB; needs 1676 MiB free, 6144 MiB free of 10240 MiB')
    // a small disk: less free than new + dumps (plan blocks it with these figures)
    const small = migrationPlan(info({disk: {total: 3 * 1024 * MiB, free: 1500 * MiB}}), '17')
    expect(small.freeBytes).toBeLessThan(small.needBytes)
    // no backup yet: the dumps estimated as a quarter of the cluster
    expect(migrationPlan(info({backup: null}), '17').dumpsBytes).toBe(250 * MiB)
  })

  it('gives the migration 20 min + 20 min per database unless told otherwise', () => {
    expect(migrationTimeoutFor(5)).toBe(120 * 60_000)
    expect(migrationTimeoutFor(0)).toBe(40 * 60_000)
    expect(migrationTimeoutFor(5, 600_000)).toBe(600_000)
  })

  it('says where a migration stands', () => {
    expect(describeMajorStatus({state: 'running', databases: [{name: 'a', step: 'done'}, {name: 'b', step: 'admin'}, {name: 'c', step: 'pending'}]})).toBe('migration running: 1/3 database(s) done, b: admin')
    expect(describeMajorStatus({state: 'failed', error: 'database b, step admin: boom', databases: [{name: 'a', step: 'done'}, {name: 'b', step: 'admin'}]})).toBe('migration failed: 1/2 database(s) done, b: admin — database b, step admin: boom')
  })

  it('reads the stack of an image from its packages', () => {
    const pk = (names: [string, string][]) => ({packages: names.map(([name, version]) => ({name, version}))})
    expect(postgresqlMajorOf(pk([['postgresql-17', '17.6-0+deb13u1'], ['postgresql-client-17', '17.6'], ['postgresql-common', '278']]))).toBe('17')
    expect(trytonSeriesOf(pk([['tryton-server', '7.0.25-1']]))).toBe('7.0')
    expect(postgresqlMajorOf(pk([['python3', '3.11']]))).toBeUndefined()
  })

  it("keeps an old cluster for the inventory's old_cluster_days from the commit, never guessing a missing date", () => {
    const now = new Date('2027-03-01T12:00:00Z')
    expect(oldClusterRetention('2026-12-01T10:00:00Z', 90, now)).toEqual({expired: true, detail: 'kept 90 days since 2026-12-01 (old_cluster_days): expired'})
    expect(oldClusterRetention('2026-12-05T10:00:00Z', 90, now)).toEqual({expired: false, detail: 'kept until 2027-03-05 (old_cluster_days: 90)'})
    expect(oldClusterRetention('2026-12-01T10:00:00Z', undefined, now).expired).toBe(false)
    expect(oldClusterRetention(undefined, 1, now)).toEqual({expired: false, detail: 'kept: the guest recorded no commit time for the upgrade'})
  })

  it("a major upgrade's rollback waits for the data disk to be mounted, not for the boot to settle, and says when it never is", async () => {
    const calls: string[][] = []
    let mounted = 3
    const t = {
      node: 'n',
      vmid: 101,
      uai: '0130040Y',
      api: {
        hypervisor: 'hv',
        agentExec: async (_n: string, _v: number, cmd: string[]) => {
          calls.push(cmd)
          return {exitcode: --mounted <= 0 ? 0 : 32, stdout: '', stderr: ''}
        },
      },
    } as unknown as Parameters<typeof waitForDataDisk>[0]
    await waitForDataDisk(t, 5000, 1)
    expect(calls).toEqual(Array.from({length: 3}, () => ['mountpoint', '-q', '/srv/pgi']))
    mounted = 1000
    await expect(waitForDataDisk(t, 20, 5)).rejects.toThrow(/VM 101: the data disk is not mounted at \/srv\/pgi/)
  })

  it('pgi rollout prune refuses without --old-clusters (exit 7), before opening anything', async () => {
    assertBuilt()
    const r = await runPgi(['rollout', 'prune', '0840001A', '--inventory', '/nonexistent/inventory.yaml', '--json'], {timeoutMs: 60_000})
    expect(r.exitCode).toBe(7)
    expect(r.json!.error!.message).toMatch(/refused without --old-clusters/)
  }, 60_000)
})
