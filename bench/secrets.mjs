#!/usr/bin/env node
// bench/secrets: the secret store and the handoffs at the scale of a large Région (Île-de-France:
// ~470 lycées): generate the 3 secrets of every establishment (1 410 age files, each encrypted to
// --recipients recipients), write every AMI handoff, list the store, re-encrypt all of it (a
// technician joined), read every secret back. Generation, handoffs and re-encryption run 4 at a time
// (as pgi does); reading back is sequential. Wall times in ms and per item.
//
// Needs a build (`npm run build`). Usage: node bench/secrets.mjs [--sites 470] [--recipients 5]
// Last line: one JSON object.
import {mkdtemp, rm} from 'node:fs/promises'
import {cpus, loadavg, tmpdir} from 'node:os'
import {dirname, join, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

import {generateIdentity, identityToRecipient} from 'age-encryption'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const dist = (p) => join(root, 'dist', 'src', p)
const {values: a} = parseArgs({options: {sites: {type: 'string', default: '470'}, recipients: {type: 'string', default: '5'}}})
const sites = Number(a.sites)
const nRecipients = Number(a.recipients)

const {SecretStore} = await import(dist('secrets/store.js'))
const {ensureEstablishmentSecrets} = await import(dist('fleet/secrets.js'))
const {writeHandoffs} = await import(dist('credentials/service.js'))
const {settleAll} = await import(dist('fleet/pool.js'))
const {uaiFromNumber} = await import(dist('inventory/uai.js'))

const tmp = await mkdtemp(join(tmpdir(), 'pgi-bench-secrets-'))
try {
  const env = {PGI_STATE_DIR: join(tmp, 'state')}
  const recipients = []
  for (let i = 0; i < nRecipients - 1; i++) recipients.push(await identityToRecipient(await generateIdentity()))
  const amiRecipient = await identityToRecipient(await generateIdentity())
  const store = await SecretStore.open({dir: join(tmp, 'secrets'), recipients, env})
  const establishments = Array.from({length: sites}, (_, i) => ({
    uai: uaiFromNumber(1300000 + i),
    name: `Lycée ${i}`,
    academie: 'Bench',
    hypervisor: 'hv',
    node: 'pve',
    vmid: 1000 + i,
    network: {address: `10.${Math.floor(i / 250)}.${i % 250}.10/24`, gateway: '10.0.0.1', dns: []},
    dataDiskGb: 32,
    osDiskGb: 8,
    cores: 2,
    memoryMb: 4096,
    ami: {name: `AMI ${i}`, ageRecipient: amiRecipient, login: 'ami'},
    ring: 'general',
    groups: [],
    source: {file: 'bench.yaml', line: 1, column: 1},
  }))
  const time = async (fn) => {
    const t = performance.now()
    await fn()
    return Math.round(performance.now() - t)
  }
  // deploy generates secrets for several establishments at once: 4 here
  const generateMs = await time(async () => {
    const r = await settleAll(establishments, () => 'k', (e) => ensureEstablishmentSecrets(store, e.uai), {max: 4})
    if (r.some((x) => !x.ok)) throw new Error('generation failed')
  })
  const handoffMs = await time(async () => {
    const r = await writeHandoffs({establishments, store, outDir: join(tmp, 'handoffs')})
    if (r.failed > 0) throw new Error('handoff failed')
  })
  let keys = []
  const listMs = await time(async () => {
    keys = await store.list()
  })
  const newTech = await identityToRecipient(await generateIdentity())
  const store2 = await SecretStore.open({dir: store.dir, recipients: [...recipients, newTech], env})
  let re
  const reencryptMs = await time(async () => {
    re = await store2.reencrypt()
  })
  const readMs = await time(async () => {
    for (const k of keys) await store2.get(k)
  })
  const files = keys.length
  console.log(
    JSON.stringify({
      bench: 'secrets',
      machine: {cpus: cpus().length, model: cpus()[0]?.model, node: process.version},
      sites,
      recipients_per_file: store2.recipients.length,
      files,
      load_avg_1m: +loadavg()[0].toFixed(2),
      generate_ms: generateMs,
      generate_ms_per_site: +(generateMs / sites).toFixed(2),
      handoff_ms: handoffMs,
      handoff_ms_per_site: +(handoffMs / sites).toFixed(2),
      list_ms: listMs,
      reencrypt_ms: reencryptMs,
      reencrypt_ms_per_file: +(reencryptMs / files).toFixed(2),
      read_all_ms: readMs,
      read_ms_per_file: +(readMs / files).toFixed(2),
      reencrypted: re.reencrypted.length,
    }),
  )
} finally {
  await rm(tmp, {recursive: true, force: true})
}
