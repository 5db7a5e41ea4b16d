import {dirname, resolve} from 'node:path'

import {MAX_CA_FILE_BYTES, readRegularFileSync} from '../bounded-read.js'

import {ageRecipientProblem} from './age-recipient.js'
import {inSubnet, isIpv4, parseCidr, type Cidr} from './ipv4.js'
import {envNameFor} from './schema-check.js'
import {type ProblemList, type SourceFile, type YamlPath} from './source.js'
import {quote, secretLiteralKind} from './redact.js'
import {didYouMean, suggestAmong} from './suggest.js'
import {checkDatabaseNames, resolveDatabases} from './database-rules.js'
import {checkOffsite} from './offsite-rules.js'
import {checkDelivery} from './delivery-rules.js'
import {int, isRecord, str, strings, where, type Item, type Merged, type Rec} from './rule-values.js'
import {checkSecret} from './secret-rules.js'
import type {
  Ami,
  Establishment,
  Hypervisor,
  Inventory,
  MaintenanceWindow,
  Recipient,
  Weekday,
} from './types.js'
import {uaiCheckLetter, uaiProblem} from './uai.js'

/**
 * The inventory's own rules (what JSON Schema cannot say: check letters, duplicates across
 * establishments, subnets, references between sections, files on disk), and the resolution of the
 * YAML into the camelCase model with defaults applied. Every rule reports a problem with a stable
 * id at the YAML node concerned and goes on, so one run lists every problem. Secrets, declared
 * databases and the value readers are in secret-rules.ts, database-rules.ts and rule-values.ts.
 */

export const DEFAULT_RINGS = ['canary', 'pilot', 'general']
export const BUILTIN_DEFAULTS = {dataDiskGb: 32, osDiskGb: 8, cores: 2, memoryMb: 4096, cpuType: 'x86-64-v2-AES', amiLogin: 'ami', bridge: 'vmbr0', timezone: 'Europe/Paris'}

/**
 * `meta.complete` is false when a file could not be read (YAML syntax error): references into the
 * unread content (hypervisor names, group members, unused hypervisors) are then not checked, as
 * they would only repeat the syntax error in confusing ways.
 */
export function checkInventory(m: Merged, P: ProblemList, meta: {path: string; files: string[]; complete: boolean}): Inventory {
  const rings = strings(m.rings?.value) ?? DEFAULT_RINGS
  const defaults: Rec = isRecord(m.defaults?.value) ? m.defaults.value : {}
  const dsrc = m.defaults?.src

  if (dsrc) {
    const ring = str(defaults.ring)
    if (ring !== undefined && !rings.includes(ring)) {
      P.add(dsrc, ['defaults', 'ring'], 'unknown-ring', `ring "${ring}" is not one of the rings (${rings.join(', ')})`, {
        suggestion: suggestAmong(ring, rings, 'rings'),
      })
    }
    checkWindowFields(dsrc, ['defaults', 'maintenance_window'], defaults.maintenance_window, P)
    if (isRecord(defaults.network)) checkIpList(dsrc, ['defaults', 'network', 'dns'], defaults.network.dns, P)
    checkDatabaseNames(dsrc, ['defaults', 'databases'], defaults.databases, P)
  }

  const hypervisors = new Map<string, Hypervisor>()
  for (const [name, item] of m.hypervisors) {
    const hv = checkHypervisor(name, item, P)
    if (hv) hypervisors.set(name, hv)
  }

  const recipients = checkRecipients(m.recipients, P)
  const misspelt: Misspelt = new Map()
  const establishments = checkEstablishments(m, hypervisors, rings, defaults, P, meta.complete, misspelt)
  const groups = checkGroups(m.groups, establishments, P, meta.complete, misspelt)
  const offsite = checkOffsite(m.offsite, establishments, hypervisors, P, meta.complete)
  const delivery = checkDelivery(m.delivery, P)

  const used = new Set(establishments.map((e) => e.hypervisor))
  if (offsite?.drill) used.add(offsite.drill.hypervisor)
  for (const [name, item] of m.hypervisors) {
    if (meta.complete && !used.has(name)) {
      P.add(item.src, item.path, 'unused-hypervisor', `hypervisor "${name}" has no establishment`, {
        at: 'key',
        severity: 'warning',
        suggestion: 'remove it, or add establishments with hypervisor: ' + name,
      })
    }
  }

  return {
    path: meta.path,
    files: meta.files,
    ...(str(m.region?.value) !== undefined ? {region: str(m.region?.value)} : {}),
    rings,
    recipients,
    hypervisors,
    establishments,
    groups,
    ...(offsite ? {offsite} : {}),
    ...(delivery ? {delivery} : {}),
  }
}

// ---------------------------------------------------------------------------------------------
// hypervisors

const FINGERPRINT = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/

function checkHypervisor(name: string, item: Item, P: ProblemList): Hypervisor | undefined {
  const v = item.value
  if (!isRecord(v)) return undefined
  const {src} = item
  const at = (...k: (string | number)[]): YamlPath => [...item.path, ...k]

  let url = str(v.url)
  let host: string | undefined
  if (url !== undefined) {
    let u: URL | undefined
    try {
      u = new URL(url)
    } catch {
      P.add(src, at('url'), 'hypervisor-url', `${quote(url)} is not a URL`, {suggestion: 'e.g. https://192.0.2.10:8006'})
    }
    if (u) {
      host = u.hostname.replace(/^\[|\]$/g, '')
      if (u.username || u.password) {
        P.add(src, at('url'), 'secret-literal', 'the URL holds a user name or password: secrets never go in the inventory', {
          suggestion: `remove them from the URL; the API token goes in token.secret ({env: ${envNameFor(name)}} or {store: hypervisors/${name}/token})`,
        })
      }
      if (u.protocol !== 'https:') {
        P.add(src, at('url'), 'hypervisor-url', `the API URL must use https, not ${u.protocol.replace(':', '')}`, {
          suggestion: `https://${u.host}${u.port ? '' : ':8006'}`,
        })
      } else if (!['/', '/api2/json', '/api2/json/'].includes(u.pathname) || u.search || u.hash) {
        P.add(src, at('url'), 'hypervisor-url', `the API URL must be the server's base URL, not "${u.pathname}${u.search}"`, {
          suggestion: `https://${u.host}`,
        })
      } else if (!u.port) {
        P.add(src, at('url'), 'hypervisor-url', 'the URL has no port: the Proxmox VE API listens on 8006', {
          severity: 'warning',
          suggestion: `https://${u.host}:8006 (unless a proxy serves the API on 443)`,
        })
      }
      url = `${u.protocol}//${u.host}`
    }
  }

  const nodes = strings(v.nodes) ?? []

  const tls: Hypervisor['tls'] = {}
  if (isRecord(v.tls)) {
    const fp = v.tls.fingerprint
    const ca = v.tls.ca_file
    if (fp === undefined && ca === undefined) {
      P.add(src, at('tls'), 'tls-missing', `hypervisor "${name}" has neither tls.fingerprint nor tls.ca_file: pgi always verifies the API certificate`, {
        suggestion: `run \`pgi inventory trust ${name}\` and write the fingerprint it shows, or give the CA's PEM file in ca_file`,
      })
    }
    if (fp !== undefined) {
      const s = typeof fp === 'string' ? fp.trim() : String(fp)
      if (FINGERPRINT.test(s)) tls.fingerprint = s
      else {
        const hex = s.replace(/[:\s-]/g, '').toUpperCase()
        let suggestion = `32 bytes as AA:BB:… (64 hex digits); run \`pgi inventory trust ${name}\` to read it from the server`
        let message = `tls.fingerprint "${s}" is not a SHA-256 fingerprint`
        if (/^[0-9A-F]{64}$/.test(hex)) {
          suggestion = `write it as ${hex.match(/../g)!.join(':')}`
          message = `tls.fingerprint must be upper-case hex pairs separated by colons`
        } else if (/^[0-9A-F]{40}$/.test(hex)) {
          message = 'tls.fingerprint looks like a SHA-1 fingerprint (20 bytes): pgi pins SHA-256 (32 bytes)'
        }
        P.add(src, at('tls', 'fingerprint'), 'tls-fingerprint', message, {suggestion})
      }
    }
    if (ca !== undefined && typeof ca === 'string') {
      const abs = resolve(dirname(src.absPath), ca)
      const r = readRegularFileSync(abs, MAX_CA_FILE_BYTES, 'a CA file')
      if (!r.ok) {
        P.add(src, at('tls', 'ca_file'), 'tls-ca-file', `CA file "${ca}" ${r.problem.message} (looked for ${abs})`, {
          suggestion:
            r.problem.kind === 'missing'
              ? 'ca_file is relative to this YAML file; copy the PVE CA there (/etc/pve/pve-root-ca.pem on the node) or pin tls.fingerprint instead'
              : 'give the CA certificate in a PEM file (/etc/pve/pve-root-ca.pem on the node), or pin tls.fingerprint instead',
        })
      } else if (!r.data.includes('-----BEGIN CERTIFICATE-----')) {
        P.add(src, at('tls', 'ca_file'), 'tls-ca-file', `CA file "${ca}" holds no PEM certificate`, {
          suggestion: 'give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)',
        })
      }
      tls.caFile = abs
    }
  }

  let token: Hypervisor['token'] | undefined
  if (isRecord(v.token)) {
    const id = v.token.id
    if (typeof id === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id.trim())) {
      // the generic check (findSecretLiterals) knows the USER@REALM!ID=SECRET form; a bare UUID is
      // what a token secret looks like, and a token id never does
      P.add(src, at('token', 'id'), 'secret-literal', 'token.id looks like a token secret (a UUID), not a token id: secrets never go in the inventory', {
        suggestion: `write the id (USER@REALM!TOKENID, e.g. pgi@pve!deploy) and secret: {env: ${envNameFor(name)}}; rotate the token: its secret has been written in a file`,
      })
    }
    const secret = v.token.secret === undefined ? undefined : checkSecret(src, at('token', 'secret'), v.token.secret, name, P)
    token = {id: str(v.token.id) ?? '', secret: secret ?? {env: envNameFor(name)}}
  }

  const storage = isRecord(v.storage) ? v.storage : {}
  const ssh = isRecord(v.ssh) ? v.ssh : undefined
  return {
    name,
    url: url ?? '',
    nodes,
    tls,
    token: token ?? {id: '', secret: {env: envNameFor(name)}},
    storage: {os: str(storage.os) ?? '', data: str(storage.data) ?? '', import: str(storage.import) ?? ''},
    bridge: str(v.bridge) ?? BUILTIN_DEFAULTS.bridge,
    ...(ssh ? {ssh: {host: str(ssh.host) ?? host ?? '', port: int(ssh.port) ?? 22, user: str(ssh.user) ?? 'root'}} : {}),
    ...(str(v.pve_version) !== undefined ? {pveVersion: str(v.pve_version)} : {}),
    source: src.ref(item.path, 'key'),
  }
}

// ---------------------------------------------------------------------------------------------
// recipients

function checkRecipients(items: Item[], P: ProblemList): Recipient[] {
  const out: Recipient[] = []
  const seen = new Map<string, Item>()
  for (const item of items) {
    if (!isRecord(item.value)) continue
    const key = str(item.value.key)
    const name = str(item.value.name) ?? ''
    if (key === undefined) continue
    // an age secret key there is a secret-literal (checkSecretLiterals), not one more problem here
    const why = secretLiteralKind(key) ? undefined : ageRecipientProblem(key)
    if (why) {
      P.add(item.src, [...item.path, 'key'], 'age-recipient', `recipient "${name}": ${why}`, {
        suggestion: 'copy the public key printed by `age-keygen -y KEYFILE` (it starts with age1)',
      })
      continue
    }
    const prev = seen.get(key)
    if (prev) {
      P.add(item.src, [...item.path, 'key'], 'duplicate-recipient', `this key is already listed at ${where(prev, 'value')}`, {
        severity: 'warning',
        suggestion: 'list each key once',
      })
    } else seen.set(key, item)
    out.push({name, key})
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// establishments

/** Checks a UAI value (string, or a number when the check letter was left out) and returns it. */
function checkUai(src: SourceFile, path: YamlPath, v: unknown, P: ProblemList): string | undefined {
  if (v === undefined) return undefined
  if (typeof v === 'number') {
    const text = src.sourceText(path) ?? String(v)
    const digits = /^\d{7}$/.test(text) ? text : undefined
    P.add(src, path, 'uai-format', `UAI ${text} has no check letter: a UAI is 7 digits and a letter`, {
      suggestion: digits ? `write ${digits}${uaiCheckLetter(digits)}` : 'e.g. 0130040Y',
    })
    return undefined
  }
  if (typeof v !== 'string') return undefined
  const pb = uaiProblem(v)
  if (!pb) return v
  if (pb.kind === 'format') {
    const t = v.trim().toUpperCase()
    P.add(src, path, 'uai-format', `"${v}" is not a UAI: 7 digits and a check letter`, {
      suggestion: /^\d{7}$/.test(t) ? `write ${t}${uaiCheckLetter(t)}` : 'e.g. 0130040Y',
    })
  } else if (pb.expected === v.toUpperCase()) {
    P.add(src, path, 'uai-check-letter', `UAI "${v}": the check letter is written in upper case`, {suggestion: `write ${pb.expected}`})
  } else {
    P.add(src, path, 'uai-check-letter', `UAI ${v} has a wrong check letter: ${v.slice(0, 7)} gives ${pb.expected!.slice(7)}, not ${v.slice(7).toUpperCase()}`, {
      suggestion: `write ${pb.expected} (or check the digits)`,
    })
  }
  return undefined
}

function checkIpList(src: SourceFile, path: YamlPath, v: unknown, P: ProblemList): string[] | undefined {
  if (!Array.isArray(v)) return undefined
  v.forEach((ip, i) => {
    if (typeof ip === 'string' && !isIpv4(ip)) {
      P.add(src, [...path, i], 'bad-ip', `"${ip}" is not an IPv4 address`, {suggestion: 'e.g. 192.0.2.53'})
    }
  })
  return strings(v)
}

/** UAIs an establishment meant but wrote wrongly (the fixed form → where), so that groups naming the right UAI point there. */
type Misspelt = Map<string, Item>

function checkEstablishments(m: Merged, hypervisors: Map<string, Hypervisor>, rings: string[], defaults: Rec, P: ProblemList, complete: boolean, misspelt: Misspelt): Establishment[] {
  const out: Establishment[] = []
  const uais = new Map<string, Item>()
  const vmids = new Map<string, {vmid: number; item: Item; uai: string}[]>()
  const addresses = new Map<string, {item: Item; hv: string; uai: string}>()
  const dnet: Rec = isRecord(defaults.network) ? defaults.network : {}
  const dami: Rec = isRecord(defaults.ami) ? defaults.ami : {}
  const dwin: Rec | undefined = isRecord(defaults.maintenance_window) ? defaults.maintenance_window : undefined

  for (const item of m.establishments) {
    const e = item.value
    if (!isRecord(e)) continue
    const {src} = item
    const at = (...k: (string | number)[]): YamlPath => [...item.path, ...k]
    const uai = checkUai(src, at('uai'), e.uai, P)
    if (uai === undefined) {
      const text = typeof e.uai === 'number' ? (src.sourceText(at('uai')) ?? '') : typeof e.uai === 'string' ? e.uai.trim().toUpperCase() : ''
      const fixed = /^\d{7}$/.test(text) ? text + uaiCheckLetter(text) : /^\d{7}[A-Z]$/.test(text) ? text.slice(0, 7) + uaiCheckLetter(text.slice(0, 7)) : undefined
      if (fixed) misspelt.set(fixed, {...item, path: at('uai')})
    }
    const label = uai ?? str(e.name) ?? `establishments[${String(item.path.at(-1))}]`

    if (uai) {
      const prev = uais.get(uai)
      if (prev) {
        P.add(src, at('uai'), 'duplicate-uai', `UAI ${uai} is already used by the establishment at ${where(prev, 'value')}`, {
          suggestion: 'each establishment appears once; remove or fix one of them',
        })
      } else uais.set(uai, item)
    }

    // hypervisor and node
    const hvName = str(e.hypervisor)
    const hv = hvName === undefined ? undefined : hypervisors.get(hvName)
    if (complete && hvName !== undefined && !m.hypervisors.has(hvName)) {
      P.add(src, at('hypervisor'), 'unknown-hypervisor', `hypervisor "${hvName}" is not defined under hypervisors:`, {
        suggestion: suggestAmong(hvName, [...m.hypervisors.keys()], 'hypervisors'),
      })
    }
    let node = str(e.node)
    if (hv && hv.nodes.length > 0) {
      if (e.node === undefined) {
        if (hv.nodes.length === 1) node = hv.nodes[0]
        else {
          P.add(src, at('hypervisor'), 'node-required', `hypervisor "${hvName}" has several nodes (${hv.nodes.join(', ')}): say which one runs this VM`, {
            suggestion: `add node: ${hv.nodes[0]} (or another of its nodes)`,
          })
        }
      } else if (node !== undefined && !hv.nodes.includes(node)) {
        P.add(src, at('node'), 'unknown-node', `node "${node}" is not one of ${hvName}'s nodes (${hv.nodes.join(', ')})`, {
          suggestion: suggestAmong(node, hv.nodes, `${hvName}'s nodes`),
        })
      }
    }

    const vmid = int(e.vmid)
    if (vmid !== undefined && hvName !== undefined) {
      const list = vmids.get(hvName) ?? []
      list.push({vmid, item, uai: label})
      vmids.set(hvName, list)
    }

    // network
    const net: Rec = isRecord(e.network) ? e.network : {}
    let cidr: Cidr | undefined
    const address = str(net.address)
    if (address !== undefined) {
      const c = parseCidr(address)
      if (typeof c === 'string') {
        P.add(src, at('network', 'address'), 'bad-cidr', `"${address}" is not a valid address/prefix: ${c}`, {suggestion: 'e.g. 192.0.2.101/24'})
      } else {
        cidr = c
        if (c.prefix <= 30 && (c.address === c.network || c.address === c.broadcast)) {
          const which = c.address === c.network ? 'network' : 'broadcast'
          P.add(src, at('network', 'address'), 'address-reserved', `${c.address} is the ${which} address of ${c.network}/${c.prefix}, not a host address`, {
            suggestion: `use an address between ${c.firstHost} and ${c.lastHost}`,
          })
        }
        if (hvName !== undefined) {
          const prev = addresses.get(c.address)
          if (prev) {
            const same = prev.hv === hvName
            P.add(src, at('network', 'address'), 'duplicate-address', `${c.address} is already the address of ${prev.uai} (${where(prev.item, 'value')})${same ? ` on the same hypervisor ${hvName}` : ` on ${prev.hv}`}`, {
              severity: same ? 'error' : 'warning',
              suggestion: same ? 'give each VM its own address' : 'fine only if the two sites are separate networks (NAT); check the address',
            })
          } else addresses.set(c.address, {item, hv: hvName, uai: label})
        }
      }
    }
    const gateway = str(net.gateway)
    if (gateway !== undefined) {
      if (!isIpv4(gateway)) {
        P.add(src, at('network', 'gateway'), 'bad-ip', `gateway "${gateway}" is not an IPv4 address`, {suggestion: 'e.g. 192.0.2.1'})
      } else if (cidr && !inSubnet(gateway, cidr)) {
        P.add(src, at('network', 'gateway'), 'gateway-outside-subnet', `gateway ${gateway} is outside the VM's subnet ${cidr.network}/${cidr.prefix}`, {
          suggestion: `use a gateway in ${cidr.firstHost}–${cidr.lastHost}, or fix the address's prefix length`,
        })
      } else if (cidr && gateway === cidr.address) {
        P.add(src, at('network', 'gateway'), 'address-reserved', `the gateway ${gateway} is the VM's own address`, {
          suggestion: 'the gateway is the router of the establishment\'s network',
        })
      }
    }
    const dns = checkIpList(src, at('network', 'dns'), net.dns, P) ?? strings(dnet.dns) ?? []

    // ring
    const ringOwn = str(e.ring)
    // (the rings may be defined in a file that could not be read: then not checked)
    if (ringOwn !== undefined && !rings.includes(ringOwn) && (complete || m.rings)) {
      P.add(src, at('ring'), 'unknown-ring', `ring "${ringOwn}" is not one of the rings (${rings.join(', ')})`, {
        suggestion: suggestAmong(ringOwn, rings, 'rings'),
      })
    }
    const ring = ringOwn ?? str(defaults.ring) ?? rings.at(-1) ?? 'general'

    // AMI
    const amiRaw: Rec = isRecord(e.ami) ? e.ami : {}
    const ageRecipient = str(amiRaw.age_recipient)
    if (ageRecipient !== undefined) {
      const why = secretLiteralKind(ageRecipient) ? undefined : ageRecipientProblem(ageRecipient)
      if (why) {
        P.add(src, at('ami', 'age_recipient'), 'age-recipient', `the AMI's age recipient is not valid: ${why}`, {
          suggestion: 'ask the AMI for the public key printed by `age-keygen -y KEYFILE` (it starts with age1)',
        })
      }
    }
    const ami: Ami = {
      name: str(amiRaw.name) ?? '',
      ageRecipient: ageRecipient ?? '',
      login: str(amiRaw.login) ?? str(dami.login) ?? BUILTIN_DEFAULTS.amiLogin,
      ...(str(amiRaw.email) !== undefined ? {email: str(amiRaw.email)} : {}),
      ...(str(amiRaw.ssh_key) !== undefined ? {sshKey: str(amiRaw.ssh_key)} : {}),
    }

    // maintenance window (merged key by key over defaults.maintenance_window)
    checkWindowFields(src, at('maintenance_window'), e.maintenance_window, P)
    let maintenanceWindow: MaintenanceWindow | undefined
    const own = isRecord(e.maintenance_window) ? e.maintenance_window : undefined
    if (own || dwin) {
      const w = {...dwin, ...own}
      const missing = ['days', 'start', 'end'].filter((k) => w[k] === undefined)
      if (missing.length > 0 && (complete || m.defaults)) {
        const p = own ? at('maintenance_window') : ['defaults', 'maintenance_window']
        P.add(own ? src : m.defaults!.src, p, 'maintenance-window', `the maintenance window has no ${missing.join(', ')} (here nor in defaults.maintenance_window)`, {
          suggestion: 'e.g. {days: [wed, sat], start: "12:00", end: "14:00"}',
        })
      }
      maintenanceWindow = {
        days: (strings(w.days) ?? []) as Weekday[],
        start: str(w.start) ?? '',
        end: str(w.end) ?? '',
        timezone: str(w.timezone) ?? BUILTIN_DEFAULTS.timezone,
      }
    }

    const academie = str(e.academie) ?? str(defaults.academie)
    // (defaults may be in a file that could not be read: then not reported)
    if (academie === undefined && (complete || m.defaults)) {
      P.add(src, item.path, 'missing-key', `establishment ${label} has no académie`, {suggestion: 'add academie: … here or under defaults:'})
    }

    // databases: the establishment's list, else defaults.databases, else one database "pgi"
    checkDatabaseNames(src, at('databases'), e.databases, P)
    const dbItem: Item | undefined = Array.isArray(e.databases) ? {src, path: at('databases'), value: e.databases} : m.defaults && Array.isArray(defaults.databases) ? {src: m.defaults.src, path: ['defaults', 'databases'], value: defaults.databases} : undefined
    const databases = resolveDatabases(dbItem, str(e.name) ?? '', {src, path: item.path}, P)

    if (uai === undefined) continue // cannot be addressed; the problems above say why
    const image = str(e.image) ?? str(defaults.image)
    const oldClusterDays = int(e.old_cluster_days) ?? int(defaults.old_cluster_days)
    out.push({
      uai,
      name: str(e.name) ?? '',
      academie: academie ?? '',
      hypervisor: hvName ?? '',
      node: node ?? '',
      vmid: vmid ?? 0,
      network: {
        address: address ?? '',
        gateway: gateway ?? '',
        dns,
        ...(str(net.searchdomain ?? dnet.searchdomain) !== undefined ? {searchdomain: str(net.searchdomain ?? dnet.searchdomain)} : {}),
      },
      dataDiskGb: int(e.data_disk_gb) ?? int(defaults.data_disk_gb) ?? BUILTIN_DEFAULTS.dataDiskGb,
      osDiskGb: int(e.os_disk_gb) ?? int(defaults.os_disk_gb) ?? BUILTIN_DEFAULTS.osDiskGb,
      cores: int(e.cores) ?? int(defaults.cores) ?? BUILTIN_DEFAULTS.cores,
      memoryMb: int(e.memory_mb) ?? int(defaults.memory_mb) ?? BUILTIN_DEFAULTS.memoryMb,
      cpuType: str(e.cpu_type) ?? str(defaults.cpu_type) ?? BUILTIN_DEFAULTS.cpuType,
      ...(oldClusterDays !== undefined ? {oldClusterDays} : {}),
      ami,
      ring,
      ...(maintenanceWindow ? {maintenanceWindow} : {}),
      ...(image !== undefined ? {image} : {}),
      groups: [],
      databases,
      source: src.ref(item.path),
    })
  }

  // VM ids are unique across a hypervisor (a PVE cluster), whatever the node.
  for (const [hvName, list] of vmids) {
    const first = new Map<number, {item: Item; uai: string}>()
    const max = Math.max(...list.map((x) => x.vmid))
    let next = max + 1
    for (const x of list) {
      const prev = first.get(x.vmid)
      if (prev) {
        P.add(x.item.src, [...x.item.path, 'vmid'], 'duplicate-vmid', `vmid ${x.vmid} is already used on ${hvName} by ${prev.uai} (${where(prev.item, 'value')}); VM ids are unique across a Proxmox cluster`, {
          suggestion: `use a free id, e.g. ${next++}`,
        })
      } else first.set(x.vmid, {item: x.item, uai: x.uai})
    }
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// maintenance windows

const TIME = /^([01]\d|2[0-3]):[0-5]\d$/

let timeZones: string[] | undefined
function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', {timeZone: tz})
    return true
  } catch {
    return false
  }
}

function checkWindowFields(src: SourceFile, path: YamlPath, w: unknown, P: ProblemList): void {
  if (!isRecord(w)) return
  const ok: Record<string, string> = {}
  for (const k of ['start', 'end'] as const) {
    const v = w[k]
    if (v === undefined) continue
    if (typeof v === 'string' && TIME.test(v)) {
      ok[k] = v
      continue
    }
    const text = typeof v === 'string' ? v : (src.sourceText([...path, k]) ?? String(v))
    const m = /^(\d{1,2})[:hH.](\d{2})$/.exec(text)
    const fixed = m && Number(m[1]) < 24 && Number(m[2]) < 60 ? `"${m[1]!.padStart(2, '0')}:${m[2]}"` : undefined
    P.add(src, [...path, k], 'maintenance-window', `${k} "${text}" is not a time of day (HH:MM, 24-hour clock)`, {
      suggestion: fixed ? `write ${k}: ${fixed}` : `e.g. ${k}: "18:30" (00:00–23:59)`,
    })
  }
  if (ok.start !== undefined && ok.start === ok.end) {
    P.add(src, [...path, 'end'], 'maintenance-window', `the window is empty: it starts and ends at ${ok.start}`, {
      suggestion: 'give an end time different from the start (a window may cross midnight)',
    })
  }
  const tz = w.timezone
  if (typeof tz === 'string' && !isTimeZone(tz)) {
    timeZones ??= Intl.supportedValuesOf('timeZone')
    P.add(src, [...path, 'timezone'], 'maintenance-window', `"${tz}" is not a time zone`, {
      suggestion: didYouMean(tz, timeZones) ? `did you mean "${didYouMean(tz, timeZones)}"?` : 'an IANA time zone, e.g. Europe/Paris',
    })
  }
}

// ---------------------------------------------------------------------------------------------
// groups

function checkGroups(groups: Map<string, Item>, establishments: Establishment[], P: ProblemList, complete: boolean, misspelt: Misspelt): Map<string, string[]> {
  const out = new Map<string, string[]>()
  const byUai = new Map(establishments.map((e) => [e.uai, e]))
  const all = [...byUai.keys()]
  for (const [name, item] of groups) {
    if (!Array.isArray(item.value)) continue
    if (item.value.length === 0) {
      P.add(item.src, item.path, 'empty-group', `group "${name}" is empty`, {at: 'key', severity: 'warning', suggestion: 'add UAIs or remove the group'})
    }
    const members: string[] = []
    item.value.forEach((raw, i) => {
      const path = [...item.path, i]
      const uai = typeof raw === 'number' ? (item.src.sourceText(path) ?? String(raw)) : String(raw)
      const e = byUai.get(uai)
      if (e) {
        if (!members.includes(uai)) members.push(uai)
        if (!e.groups.includes(name)) e.groups.push(name)
        return
      }
      if (!complete) return
      let suggestion: string
      const pb = uaiProblem(uai)
      const meant = misspelt.get(uai)
      if (meant) suggestion = `the establishment at ${where(meant, 'value')} has its UAI written wrongly (${String(meant.src.sourceText(meant.path) ?? '')}): fix it there`
      else if (pb?.kind === 'check-letter' && byUai.has(pb.expected!)) suggestion = `the check letter is wrong: did you mean ${pb.expected}?`
      else if (pb?.kind === 'format' && /^\d{7}$/.test(uai) && byUai.has(uai + uaiCheckLetter(uai))) suggestion = `did you mean ${uai}${uaiCheckLetter(uai)}?`
      else suggestion = suggestAmong(uai, all, 'UAIs of the inventory')
      P.add(item.src, path, 'group-unknown-uai', `group "${name}" names ${uai}, which is not an establishment of the inventory`, {suggestion})
    })
    out.set(name, members)
  }
  return out
}
