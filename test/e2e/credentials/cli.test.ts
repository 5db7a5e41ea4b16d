/**
 * The built CLI (`bin/run.js`, as installed) writing a handoff that the real `age` opens, and the
 * AMI's `pgi credentials open`. Needs `npm run build` (scripts/install-deps.sh does it in CI).
 */
import {access, cp, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureEstablishmentSecrets} from '../../../src/fleet/secrets.js'
import {requireTools, run} from '../../../src/exec.js'
import {SecretStore} from '../../../src/secrets/store.js'

const root = resolve(import.meta.dirname, '../../..')
let tmp: string

beforeAll(async () => {
  await requireTools(['age', 'age-keygen'])
  await access(join(root, 'dist', 'cli', 'commands.js')).catch(() => {
    throw new Error('the CLI is not built: run `npm run build` first')
  })
  tmp = await mkdtemp(join(tmpdir(), 'pgi-cred-cli-'))
})
afterAll(async () => {
  await rm(tmp, {recursive: true, force: true})
})

describe('pgi credentials (built CLI)', () => {
  it('handoff → age -d → open, with no secret on the technician side', async () => {
    const env = {PGI_STATE_DIR: join(tmp, 'state'), PGI_SECRETS_DIR: join(tmp, 'secrets'), CI: 'true', PGI_INVENTORY: '', PGI_AGE_IDENTITY: ''}
    await run('age-keygen', ['-o', join(tmp, 'ami.key')])
    const amiRecipient = (await run('age-keygen', ['-y', join(tmp, 'ami.key')])).stdout.trim()
    // the example inventory, with 0130040Y's AMI key replaced by ours
    const inv = join(tmp, 'inventory')
    await cp(join(root, 'inventory', 'example'), inv, {recursive: true})
    const estFile = join(inv, 'establishments.yaml')
    await writeFile(estFile, (await readFile(estFile, 'utf8')).replace('age1ppm2jlw8edhgt99e7furp5wjdd4gyrlv5ndarvv4npp3g67wzceqdhdjyx', amiRecipient))
    const store = await SecretStore.open({dir: env.PGI_SECRETS_DIR, recipients: [], env})
    const values = Object.values((await ensureEstablishmentSecrets(store, '0130040Y')).secrets).map((s) => s.reveal())

    const cli = (args: string[]) => run('node', [join(root, 'bin', 'run.js'), ...args], {env, allowFailure: true, cwd: tmp})
    const h = await cli(['credentials', 'handoff', '0130040Y', '-i', inv, '--out', join(tmp, 'out'), '--json'])
    expect(h.exitCode, h.stderr).toBe(0)
    expect(JSON.parse(h.stdout).result.written).toBe(1)
    for (const v of values) expect(h.stdout + h.stderr).not.toContain(v)

    const file = join(tmp, 'out', '0130040Y.handoff.age')
    const plain = (await run('age', ['-d', '-i', join(tmp, 'ami.key'), file])).stdout
    for (const v of values) expect(plain).toContain(v)

    const o = await cli(['credentials', 'open', file, '--identity', join(tmp, 'ami.key'), '--json'])
    expect(o.exitCode, o.stderr).toBe(0)
    const doc = JSON.parse(o.stdout).result
    expect([doc.ssh.password, doc.postgresql.password, doc.tryton_admin.password].sort()).toEqual([...values].sort())

    // the technician's own key (the local identity) cannot open it
    const t = await cli(['credentials', 'open', file, '--identity', join(tmp, 'state', 'age-identity.txt')])
    expect(t.exitCode).toBe(1)
    expect(t.stderr).toContain('PGI_SECRET_DECRYPT')
    for (const v of values) expect(t.stdout + t.stderr).not.toContain(v)
  })
})
