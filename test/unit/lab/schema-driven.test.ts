import {createHash} from 'node:crypto'
import {createServer, type Server} from 'node:http'
import {request} from 'node:https'
import type {AddressInfo} from 'node:net'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {LAB_ROUTES} from '../../../src/lab/params.js'
import {perlRegex} from '../../../src/lab/pve-formats.js'
import type {SchemaProp} from '../../../src/lab/pve-schema.js'
import {schemaKeyOf} from '../../../src/lab/validate.js'
import {findMethod, loadPveSchema, templateOf, validateRequest, validateResponse, type PveSchema} from '../../helpers/pve-schema.js'
import {ROOT_PASSWORD, startTestLab, type TestLab} from './lab-harness.js'

/**
 * Every endpoint the lab serves, driven the way the PVE API schema documents it: for each route,
 * requests that together carry every parameter the schema documents for it (values generated
 * from the schema: types, enums, bounds, patterns, named formats, property strings with all their
 * keys), sent as root@pam with a ticket (so that no privilege gets in the way), must be accepted
 * (tasks must end OK) and every answer must validate against the method's return schema. Run for
 * the lab playing PVE 9.1 and PVE 8.4, each against its own schema.
 *
 * The parameters no request carries are listed in NOT_SENT with the reason (docs/lab.md lists the
 * same): they ask for what a one-node lab without backups or RAM state cannot do.
 */

const NODE = 'lab1'
const VM = 200
const VM2 = 201
const VM3 = 203
const CLONE = 202

/** Documented parameters no accepted request carries, per route, and why. */
const NOT_SENT: Record<string, Record<string, string>> = {
  'POST /nodes/{node}/qemu': {
    archive: 'restore from a vzdump backup: the lab holds no backup archives (create with archive answers an error)',
    force: 'restore only (requires archive)',
    unique: 'restore only (requires archive)',
    'live-restore': 'restore only',
  },
  'POST /nodes/{node}/qemu/{vmid}/status/start': {
    migratedfrom: 'the target side of a migration: each lab node is a single-node cluster',
    migration_network: 'migration only',
    migration_type: 'migration only',
    targetstorage: 'migration only (PVE refuses it without migratedfrom)',
    stateuri: 'resumes from saved RAM state or a migration stream: the lab saves no RAM state',
  },
  'POST /access/ticket': {
    otp: 'the lab has no two-factor authentication',
    'tfa-challenge': 'the lab has no two-factor authentication',
    path: 'ticket verification mode (privs on a path): not implemented',
    privs: 'ticket verification mode (privs on a path): not implemented',
  },
  'POST /nodes/{node}/storage/{storage}/upload': {tmpfilename: "set by PVE's own HTTP server for uploads through its trusted port, never by a client"},
  'POST /nodes/{node}/storage/{storage}/download-url': {compression: 'decompression of downloaded ISO images is not implemented'},
}

/**
 * Where real PVE answers differently from its own return schema, the lab answers as PVE does:
 * the test accepts that answer for that route (and only that one).
 */
const KNOWN_DEVIATIONS: Record<string, (data: unknown) => boolean> = {
  // the schema says integer; PVE's code returns the id as a JSON string
  'GET /cluster/nextid': (d) => typeof d === 'string' && /^\d+$/.test(d),
}

// ---- values from the schema ----------------------------------------------------------------------

/** Samples for named formats (valid per PVE's check for that format). */
const FORMAT_SAMPLES: Record<string, string> = {
  'pve-node': NODE,
  'pve-storage-id': 'local-vm',
  'pve-configid': 'snap1',
  'dns-name': 'vm-a',
  address: '10.0.0.1',
  'address-list': '10.0.0.53 10.0.0.54',
  'pve-tag-list': 'lab;schema',
  urlencoded: 'ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIL%2Bx%20lab%40test',
  'mac-addr': 'BC:24:11:00:00:01',
  'pve-poolid': 'pool1',
  'pve-cpuset': '0-1',
  'pve-hotplug-features': 'network,disk,usb',
  'pve-qm-bootdisk': 'virtio0',
  'pve-volume-id': 'local:snippets/hook.pl',
  'pve-startup-order': 'order=1,up=5,down=5',
  'pve-priv-list': 'VM.Audit',
  'pve-realm': 'pam',
  CIDR: '10.0.0.0/24',
  'storage-pair-list': 'local-vm',
  'pve-storage-content-list': 'images',
  'pve-storage-content': 'images',
  'pve-task-status-type-list': 'ok',
  'disk-size': '1G',
  ipv4: '10.0.0.1',
  ipv6: '2001:db8::1',
  'pve-ipv4-config': '10.0.0.5/24',
  'pve-ipv6-config': '2001:db8::5/64',
  'pve-bridge-id': 'vmbr0',
  'pve-phys-bits': 'host',
  'pve-qm-bootdev-list': 'virtio0;net0',
  'pve-vmid': String(VM),
  string: 'x',
  'pve-qm-boot': 'order=virtio0;net0',
  'pve-qm-watchdog': 'model=i6300esb,action=reset',
  'pve-qm-cicustom': 'user=local:snippets/user.yaml',
  'pve-qm-smbios1': 'uuid=7e2d1f4a-0b3c-4d5e-8f90-a1b2c3d4e5f6,manufacturer=UGdp,product=TGFi',
  'pve-qm-ipconfig': 'ip=10.0.0.5/24,gw=10.0.0.1,ip6=2001:db8::5/64,gw6=2001:db8::1',
  'pve-qm-rng': 'source=/dev/urandom,max_bytes=1024,period=1000',
  'pve-qm-hostpci': 'host=0000:01:00.0,pcie=1,rombar=1',
  'pve-vm-cpu-conf': 'cputype=host,flags=+aes;+pcid,hidden=0',
  'pve-qemu-sev-fmt': 'type=std,no-debug=1',
  'pve-qemu-tdx-fmt': 'type=tdx,attestation=1',
  'pve-qm-ide': 'local:iso/lab.iso',
}

/** Samples for patterns without a named format. */
const PATTERN_CANDIDATES = ['virtio0', 'socket', '/dev/parport0', 'now', '1', 'q35', '0-1', '0x5000c50015ea71ac', 'lab', '1234:5678', 'pgi', 'YWJj', '10.0.0.1', 'http://127.0.0.1/x', 'https://127.0.0.1/x', 'net0=1500', '0000:01:00.0', '0x8086', 'rom.bin', 'nvidia-1', 'proxmox', '+aes']

function sampleString(p: SchemaProp, where: string): string {
  if (typeof p.format === 'string') {
    const s = FORMAT_SAMPLES[p.format]
    if (s === undefined) throw new Error(`no sample for format ${p.format} (${where})`)
    return s
  }
  if (p.pattern) {
    const re = perlRegex(p.pattern)
    const s = PATTERN_CANDIDATES.find((c) => re.test(c))
    if (s === undefined) throw new Error(`no sample for pattern ${p.pattern} (${where})`)
    return s
  }
  return where.split('.').at(-1) === 'description' || where.endsWith('comment') ? 'made by the schema-driven test' : 'x'
}

/** A value valid per `p` (ints within bounds, the default of an enum or its first value, …). */
function sample(p: SchemaProp, where: string): string {
  if (p.enum) return p.default !== undefined && p.enum.includes(String(p.default)) ? String(p.default) : p.enum[0]!
  switch (p.type) {
    case 'boolean':
      return '1'
    case 'integer':
    case 'number': {
      const min = p.minimum !== undefined ? Number(p.minimum) : undefined
      const max = p.maximum !== undefined ? Number(p.maximum) : undefined
      let v = min !== undefined ? Math.max(min, 1) : 1
      if (max !== undefined) v = Math.min(v, max)
      return String(v)
    }
    default:
      break
  }
  if (p.format && typeof p.format === 'object') return propertyString(p.format, where)
  return sampleString(p, where)
}

/** A property string with every key of its format (aliases excepted), the default key first and bare. */
function propertyString(format: Record<string, SchemaProp>, where: string, override: Record<string, string> = {}, skip: string[] = []): string {
  const parts: string[] = []
  const keys = Object.keys(format).filter((k) => !format[k]!.alias && !skip.includes(k))
  const def = keys.find((k) => format[k]!.default_key)
  for (const k of keys.sort()) {
    const v = override[k] ?? sample(format[k]!, `${where}.${k}`)
    if (k === def) parts.unshift(v)
    else parts.push(`${k}=${v}`)
  }
  return parts.join(',')
}

/** The schema's parameters of a route (path parameters excluded), and their properties. */
function docParams(schema: PveSchema, method: string, template: string): Record<string, SchemaProp> {
  const props = {...(findMethod(schema, method, template)?.parameters?.properties ?? {})}
  for (const m of template.matchAll(/\{(\w+)\}/g)) delete props[m[1]!]
  return props
}

/** Every documented parameter with a generated value (numbered families as their first index), then the overrides. */
function allParams(schema: PveSchema, method: string, template: string, over: Record<string, string | string[]>, omit: string[] = []): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  const notSent = NOT_SENT[`${method} ${template}`] ?? {}
  const props = docParams(schema, method, template)
  // an override of any member of a numbered family (sata1) stands for the family (sata[n])
  const given = new Set(Object.keys(over).map((k) => schemaKeyOf(props, k) ?? k))
  for (const [k, p] of Object.entries(props)) {
    if (omit.includes(k) || notSent[k] !== undefined || given.has(k)) continue
    const name = k.endsWith('[n]') ? `${k.slice(0, -3)}0` : k
    out[name] = p.type === 'array' ? [sample(p.items ?? {type: 'string'}, name)] : sample(p, name)
  }
  // overrides of parameters this release does not document (8.4's file-read has no offset) are dropped
  for (const [k, v] of Object.entries(over)) if (schemaKeyOf(props, k)) out[k] = v
  return out
}

// ---- HTTP: multipart upload and a loopback file server ----------------------------------------------

function upload(lab: TestLab, auth: {cookie: string; csrf: string}, storage: string, fields: Record<string, string>, filename: string, data: Buffer): Promise<{status: number; body: any}> {
  const boundary = `----lab${Date.now()}`
  const parts: Buffer[] = []
  for (const [k, v] of Object.entries(fields)) parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`))
  parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="filename"; filename="${filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`), data, Buffer.from(`\r\n--${boundary}--\r\n`))
  const body = Buffer.concat(parts)
  return new Promise((resolve, reject) => {
    const req = request(
      {host: '127.0.0.1', port: lab.rt.ports[NODE], path: `/api2/json/nodes/${NODE}/storage/${storage}/upload`, method: 'POST', ca: lab.rt.certs[NODE]!.cert, servername: 'localhost', headers: {Cookie: `PVEAuthCookie=${encodeURIComponent(auth.cookie)}`, CSRFPreventionToken: auth.csrf, 'Content-Type': `multipart/form-data; boundary=${boundary}`, 'Content-Length': body.length}},
      (res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d.toString()))
        res.on('end', () => resolve({status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined}))
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

// ---- the run ---------------------------------------------------------------------------------------------

describe.each(['9.1', '8.4'] as const)('every lab endpoint with every documented parameter (PVE %s)', (release) => {
  const schema = loadPveSchema(release)
  let lab: TestLab
  let auth: {cookie: string; csrf: string}
  let files: Server
  let filesPort = 0
  /** Parameter names each route was called with (accepted calls only). */
  const sent = new Map<string, Set<string>>()
  const problems: string[] = []
  const iso = Buffer.from('lab iso image\n'.repeat(100))
  const image = Buffer.alloc(64 * 1024, 7)

  beforeAll(async () => {
    lab = await startTestLab({pveVersion: release})
    const t = await lab.call('POST', '/access/ticket', {username: 'root@pam', password: ROOT_PASSWORD}, {auth: 'none'})
    auth = {cookie: t.body.data.ticket, csrf: t.body.data.CSRFPreventionToken}
    files = createServer((req, res) => {
      res.writeHead(200, {'Content-Length': iso.length})
      res.end(iso)
    })
    await new Promise<void>((r) => files.listen(0, '127.0.0.1', () => r()))
    filesPort = (files.address() as AddressInfo).port
  })
  afterAll(async () => {
    await lab?.close()
    await new Promise<void>((r) => (files ? files.close(() => r()) : r()))
  })

  /** Calls a route as root; checks the request against the schema first, then the answer, and waits for a task. */
  async function call(method: string, path: string, params: Record<string, string | string[]>, o: {expectTask?: boolean; noAuth?: boolean} = {}): Promise<any> {
    const template = templateOf(schema, path)!
    const key = `${method} ${template}`
    const req = validateRequest(schema, method, path, params)
    expect(req, `the generated request ${key} is valid per the schema`).toEqual({})
    const r = await lab.call(method, path, params as Record<string, string | string[]>, {auth: o.noAuth ? 'none' : auth})
    expect(r.status, `${key} ${JSON.stringify(params).slice(0, 300)} → ${r.status} ${r.reason} ${JSON.stringify(r.body)?.slice(0, 500)}`).toBe(200)
    const bad = KNOWN_DEVIATIONS[key]?.(r.body.data) ? [] : validateResponse(schema, method, path, r.body.data)
    if (bad.length > 0) problems.push(`${key}: ${bad.slice(0, 5).join('; ')}`)
    const names = sent.get(key) ?? new Set<string>()
    for (const k of Object.keys(params)) names.add(k)
    sent.set(key, names)
    if (o.expectTask ?? (typeof r.body.data === 'string' && r.body.data.startsWith('UPID:'))) {
      const st = await lab.wait(r.body.data)
      expect(st.exitstatus, `${key} task`).toBe('OK')
    }
    return r.body.data
  }
  const digestOf = async (vmid: number) => (await lab.call('GET', `/nodes/${NODE}/qemu/${vmid}/config`, {}, {auth})).body.data.digest as string

  it('accepts every parameter of every endpoint and answers per the return schema', async () => {
    const V = `/nodes/${NODE}/qemu/${VM}`
    const createT = '/nodes/{node}/qemu'
    const configT = '/nodes/{node}/qemu/{vmid}/config'
    const fmt = (param: string) => findMethod(schema, 'POST', createT)!.parameters!.properties![param]!.format as Record<string, SchemaProp>
    const drive = (param: string, file: string, extra: Record<string, string> = {}, skip: string[] = []) => propertyString(fmt(param), param, {file, ...extra}, ['import-from', 'media', 'size', ...skip])

    // -- cluster, node, access, storage configuration, pools ------------------------------------
    await call('GET', '/version', {})
    await call('GET', '/nodes', {})
    await call('GET', `/nodes/${NODE}`, {})
    await call('GET', `/nodes/${NODE}/status`, {})
    await call('GET', '/cluster/resources', allParams(schema, 'GET', '/cluster/resources', {type: 'vm'}))
    await call('GET', '/cluster/nextid', {vmid: '150'})
    await call('GET', '/cluster/status', {})
    await call('POST', '/access/ticket', allParams(schema, 'POST', '/access/ticket', {username: 'root@pam', password: ROOT_PASSWORD, realm: 'pam'}), {noAuth: true})
    await call('GET', '/access/permissions', {path: '/vms', userid: 'root@pam'})
    await call('GET', '/storage', {type: 'dir'})
    await call('GET', '/storage/local', {})
    await call('POST', '/pools', {poolid: 'pool1', comment: 'made by the schema-driven test'})
    await call('GET', '/pools', allParams(schema, 'GET', '/pools', {poolid: 'pool1', type: 'qemu'}))
    await call('GET', '/pools/pool1', allParams(schema, 'GET', '/pools/{poolid}', {type: 'qemu'}))

    // -- storage: upload (multipart), download-url from a loopback server, listings --------------
    for (const [content, filename, data] of [['iso', 'lab.iso', iso], ['import', 'base.qcow2', image]] as const) {
      const fields = {content, checksum: createHash('sha256').update(data).digest('hex'), 'checksum-algorithm': 'sha256'}
      const up = await upload(lab, auth, 'local', fields, filename, data)
      expect(up.status, JSON.stringify(up.body)).toBe(200)
      expect((await lab.wait(up.body.data)).exitstatus).toBe('OK')
      sent.set('POST /nodes/{node}/storage/{storage}/upload', new Set([...(sent.get('POST /nodes/{node}/storage/{storage}/upload') ?? []), ...Object.keys(fields), 'filename']))
    }
    await call('POST', `/nodes/${NODE}/storage/local/download-url`, allParams(schema, 'POST', '/nodes/{node}/storage/{storage}/download-url', {content: 'iso', filename: 'fetched.iso', url: `http://127.0.0.1:${filesPort}/fetched.iso`, checksum: createHash('sha512').update(iso).digest('hex'), 'checksum-algorithm': 'sha512', 'verify-certificates': '0'}))
    await call('GET', `/nodes/${NODE}/storage`, allParams(schema, 'GET', '/nodes/{node}/storage', {content: 'images', storage: 'local-vm', target: NODE}))
    await call('GET', `/nodes/${NODE}/storage/local-vm`, {})
    await call('GET', `/nodes/${NODE}/storage/local-vm/status`, {})
    await call('GET', `/nodes/${NODE}/storage/local/content`, {content: 'import', vmid: String(VM)})
    await call('GET', `/nodes/${NODE}/storage/local/content/${encodeURIComponent('local:import/base.qcow2')}`, {storage: 'local'})

    // -- create with every parameter (root: host devices, serial ports, args… are root's) -------
    const create = allParams(schema, 'POST', createT, {
      vmid: String(VM),
      pool: 'pool1',
      storage: 'local-vm',
      start: '1',
      name: 'schema-vm',
      memory: 'current=1024',
      balloon: '512',
      ide0: `${drive('ide[n]', 'local:iso/lab.iso')},media=cdrom`,
      ide2: 'local-vm:cloudinit',
      sata0: drive('sata[n]', 'local-vm:1'),
      scsi0: drive('scsi[n]', 'local-vm:1'),
      virtio0: drive('virtio[n]', 'local-vm:0', {serial: 'os'}) + ',import-from=local:import/base.qcow2',
      efidisk0: propertyString(fmt('efidisk0'), 'efidisk0', {file: 'local-vm:1', efitype: '4m'}, ['import-from', 'size']),
      tpmstate0: propertyString(fmt('tpmstate0'), 'tpmstate0', {file: 'local-vm:1', version: 'v2.0'}, ['import-from', 'size']),
      net0: propertyString(fmt('net[n]'), 'net0', {model: 'virtio', tag: '10', trunks: '20;30'}),
      boot: 'order=virtio0;net0',
      bootdisk: 'virtio0',
      vcpus: '1',
      cores: '2',
      sockets: '1',
      hookscript: 'local:snippets/hook.pl',
      protection: '0', // 1 would keep the test from removing disks and the VM
    }, ['cdrom', 'lock', 'template', 'unused[n]', 'ha-managed', 'bwlimit'])
    await call('POST', `/nodes/${NODE}/qemu`, create)
    await call('GET', `/nodes/${NODE}/qemu`, {full: '1'})
    await call('GET', V, {})
    const cfg = await call('GET', `${V}/config`, {current: '1'})
    expect(cfg.sata0).toMatch(/^local-vm:200\/vm-200-disk-\d\.raw,.*,size=1G/) // format=raw was asked
    expect(cfg.hostpci0).toBe(create.hostpci0)
    // a second VM: the create parameters the first cannot carry with it (a template, a lock, the cdrom alias, HA, restore bandwidth)
    const createProps = docParams(schema, 'POST', createT)
    const second = Object.fromEntries(Object.entries({vmid: String(VM3), cdrom: 'local:iso/lab.iso', template: '1', lock: 'backup', 'ha-managed': '0', bwlimit: '0', virtio0: 'local-vm:1'}).filter(([k]) => k === 'vmid' || createProps[k]))
    await call('POST', `/nodes/${NODE}/qemu`, second)
    const spare = await lab.rt.backend.allocateDisk(NODE, VM2, {storage: 'local-vm', format: 'qcow2', sizeBytes: 2 ** 20}, {upid: '', log: () => undefined, signal: new AbortController().signal})
    await call('POST', `/nodes/${NODE}/qemu`, {vmid: String(VM2), virtio0: 'local-vm:1', scsihw: 'virtio-scsi-single', unused0: spare.volid})

    // -- configuration: every parameter, on the running VM (hot-plug and [PENDING]) -------------
    const free = await lab.rt.backend.allocateDisk(NODE, VM, {storage: 'local-vm', format: 'qcow2', sizeBytes: 2 ** 20}, {upid: '', log: () => undefined, signal: new AbortController().signal})
    for (const method of ['PUT', 'POST'] as const) {
      const over: Record<string, string> = {
        digest: await digestOf(VM),
        skiplock: '1',
        name: `schema-vm-${method.toLowerCase()}`,
        memory: 'current=2048',
        balloon: '1024',
        ide0: 'local:iso/fetched.iso,media=cdrom',
        ide2: 'local-vm:cloudinit',
        sata1: drive('sata[n]', 'local-vm:1'),
        scsi1: drive('scsi[n]', 'local-vm:1'),
        virtio2: drive('virtio[n]', 'local-vm:1', {serial: 'data2'}),
        efidisk0: propertyString(fmt('efidisk0'), 'efidisk0', {file: 'local-vm:1'}, ['import-from', 'size']),
        tpmstate0: propertyString(fmt('tpmstate0'), 'tpmstate0', {file: 'local-vm:1', version: 'v2.0'}, ['import-from', 'size']),
        net0: propertyString(fmt('net[n]'), 'net0', {model: 'virtio', tag: '11', trunks: '20'}),
        unused0: free.volid,
        boot: 'order=virtio0;net0',
        bootdisk: 'virtio0',
        vcpus: '1',
        cores: '2',
        sockets: '1',
        lock: 'backup',
        hookscript: 'local:snippets/hook.pl',
        protection: '0',
        template: '0',
        ...(method === 'POST' ? {background_delay: '1'} : {}),
      }
      await call(method, `${V}/config`, allParams(schema, method, configT, over, ['delete', 'revert', 'force', 'cdrom']))
      // the lock a config write may set is root's; take it away again (skiplock: the VM is locked)
      await call(method, `${V}/config`, {delete: 'lock', skiplock: '1', digest: await digestOf(VM), force: '1'})
      // revert, and cdrom (the ide2 alias: on the other VM, this one's ide2 is its cloud-init drive)
      await call(method, `${V}/config`, {revert: 'cores'})
      await call(method, `/nodes/${NODE}/qemu/${VM2}/config`, {cdrom: 'local:iso/lab.iso'})
    }
    await call('PUT', `${V}/unlink`, {idlist: 'unused0', force: '1'})
    await call('GET', `${V}/pending`, {})
    await call('GET', `${V}/cloudinit`, {})
    await call('PUT', `${V}/cloudinit`, {})
    await call('GET', `${V}/status`, {})
    await call('GET', `${V}/status/current`, {})

    // -- guest agent ----------------------------------------------------------------------------------
    await call('GET', `${V}/agent`, {})
    await call('POST', `${V}/agent/ping`, {})
    await call('GET', `${V}/agent/info`, {})
    await call('GET', `${V}/agent/get-osinfo`, {})
    await call('GET', `${V}/agent/get-host-name`, {})
    await call('GET', `${V}/agent/network-get-interfaces`, {})
    await call('GET', `${V}/agent/get-fsinfo`, {})
    const ex = await call('POST', `${V}/agent/exec`, {command: ['cat', '/etc/hostname'], 'input-data': 'x'})
    await call('GET', `${V}/agent/exec-status`, {pid: String(ex.pid)})
    await call('POST', `${V}/agent/file-write`, {file: '/tmp/lab.txt', content: 'bGFiIGZpbGUK', encode: '0'})
    const read = await call('GET', `${V}/agent/file-read`, allParams(schema, 'GET', '/nodes/{node}/qemu/{vmid}/agent/file-read', {file: '/tmp/lab.txt', offset: '4', count: '4', decode: '1'}))
    if (release === '9.1') expect(read).toMatchObject({content: 'file', truncated: 1})
    else expect(read.content).toBe('lab file\n')

    // -- snapshots, disks, power ----------------------------------------------------------------------
    await call('POST', `${V}/snapshot`, {snapname: 'snap1', description: 'made by the schema-driven test', vmstate: '0'})
    await call('GET', `${V}/snapshot`, {})
    await call('GET', `${V}/snapshot/snap1`, {})
    await call('GET', `${V}/snapshot/snap1/config`, {})
    await call('GET', `${V}/config`, {snapshot: 'snap1'})
    await call('POST', `${V}/clone`, allParams(schema, 'POST', '/nodes/{node}/qemu/{vmid}/clone', {newid: String(CLONE), name: 'schema-clone', pool: 'pool1', snapname: 'snap1', storage: 'local-vm', format: 'qcow2', target: NODE, full: '1', bwlimit: '0'}))
    await call('POST', `/nodes/${NODE}/qemu/${CLONE}/template`, {disk: 'virtio0'})
    await call('PUT', `${V}/resize`, {disk: 'virtio0', size: '+1G', digest: await digestOf(VM), skiplock: '1'})
    await call('POST', `${V}/move_disk`, {disk: 'sata0', storage: 'local-vm', format: 'qcow2', delete: '0', digest: await digestOf(VM), bwlimit: '0'})
    const unused = Object.keys(await call('GET', `${V}/config`, {})).filter((k) => /^unused\d+$/.test(k))
    expect(unused.length).toBeGreaterThan(1)
    await call('POST', `${V}/move_disk`, {disk: unused.at(-1)!, 'target-vmid': String(VM2), 'target-disk': 'unused3', 'target-digest': await digestOf(VM2)})
    await call('POST', `${V}/status/suspend`, {todisk: '0', statestorage: 'local-vm', skiplock: '1'})
    await call('POST', `${V}/status/resume`, {nocheck: '1', skiplock: '1'})
    await call('POST', `${V}/status/reboot`, {timeout: '60'})
    await call('POST', `${V}/status/reset`, {skiplock: '1'})
    await call('POST', `${V}/status/shutdown`, {forceStop: '1', keepActive: '0', skiplock: '1', timeout: '60'})
    await call('POST', `${V}/status/start`, allParams(schema, 'POST', '/nodes/{node}/qemu/{vmid}/status/start', {skiplock: '1', timeout: '60', machine: 'pc', 'force-cpu': 'host', 'nets-host-mtu': 'net0=1500', 'with-conntrack-state': '0'}))
    await call('POST', `${V}/status/stop`, allParams(schema, 'POST', '/nodes/{node}/qemu/{vmid}/status/stop', {migratedfrom: NODE, skiplock: '1', timeout: '60', keepActive: '0', 'overrule-shutdown': '1'}))
    await call('POST', `${V}/snapshot/snap1/rollback`, allParams(schema, 'POST', '/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback', {start: '0'}))
    await call('DELETE', `${V}/snapshot/snap1`, {force: '1'})

    // -- tasks ------------------------------------------------------------------------------------------
    const tasks = await call('GET', `/nodes/${NODE}/tasks`, allParams(schema, 'GET', '/nodes/{node}/tasks', {limit: '5', start: '0', since: '1', until: String(2 ** 31), source: 'all', statusfilter: 'ok', typefilter: 'qmstart', userfilter: 'root@pam', vmid: String(VM), errors: '0'}))
    expect(tasks.length).toBeGreaterThan(0)
    const upid = encodeURIComponent(tasks[0].upid)
    await call('GET', `/nodes/${NODE}/tasks/${upid}`, {})
    await call('GET', `/nodes/${NODE}/tasks/${upid}/status`, {})
    await call('GET', `/nodes/${NODE}/tasks/${upid}/log`, allParams(schema, 'GET', '/nodes/{node}/tasks/{upid}/log', {start: '0', limit: '50', download: '0'}))

    // -- deletions --------------------------------------------------------------------------------------
    await call('DELETE', `/nodes/${NODE}/storage/local/content/${encodeURIComponent('local:iso/fetched.iso')}`, {storage: 'local', delay: '5'})
    for (const vmid of [CLONE, VM2, VM3]) await call('DELETE', `/nodes/${NODE}/qemu/${vmid}`, {purge: '1', 'destroy-unreferenced-disks': '1', skiplock: '1'})
    await call('DELETE', V, {purge: '1', 'destroy-unreferenced-disks': '1', skiplock: '1'})
    expect((await lab.call('GET', `/nodes/${NODE}/storage/local-vm/content`, {}, {auth})).body.data).toEqual([])
    await call('DELETE', '/pools/pool1', {})

    expect(problems, 'answers that do not match the return schema').toEqual([])
  })

  it('sent every documented parameter of every route (but the few listed as impossible in the lab)', () => {
    const missing: string[] = []
    for (const r of LAB_ROUTES) {
      const key = `${r.method} ${r.path}`
      const names = sent.get(key)
      if (!names) {
        missing.push(`${key}: never called`)
        continue
      }
      const props = docParams(schema, r.method, r.path)
      const covered = new Set([...names].map((n) => schemaKeyOf(props, n) ?? n))
      for (const k of Object.keys(props)) if (!covered.has(k) && NOT_SENT[key]?.[k] === undefined) missing.push(`${key}: ${k}`)
    }
    expect(missing).toEqual([])
  })
})
