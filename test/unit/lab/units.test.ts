import {describe, expect, it} from 'vitest'

import {AccessControl, hashPassword, PermissionError, sha256Hex} from '../../../src/lab/access.js'
import {configDigest} from '../../../src/lab/api.js'
import {faultConfigFrom, Faults, NO_FAULTS} from '../../../src/lab/faults.js'
import {labInventoryYaml} from '../../../src/lab/inventory-gen.js'
import {ConfigLocks, TaskManager} from '../../../src/lab/tasks.js'
import {tryParseUpid as parseUpid} from '../../../src/proxmox/upid.js'
import {parseSize} from '../../../src/size.js'
import {loadPveSchema} from '../../../src/lab/pve-schema.js'
import {checkProp, formatSize, normalizeTags, parsePropertyString, propertyFormatOf, validateParams} from '../../../src/lab/validate.js'

const CONFIG = loadPveSchema('9.1').method('PUT', '/nodes/{node}/qemu/{vmid}/config')!.parameters!.properties!

describe('tags', () => {
  it('normalises like PVE: split on , ; space, lower case, unique, sorted, ;-joined', () => {
    expect(normalizeTags('Prod;pgi, canary  PGI')).toBe('canary;pgi;prod')
    expect(checkProp(CONFIG.tags!, 'ok;Also-ok.1', CONFIG)).toBeUndefined()
    expect(checkProp(CONFIG.tags!, 'bad/tag', CONFIG)).toBe('invalid format - invalid characters in tag\n')
  })
})

describe('validation', () => {
  it('reports unknown, missing and malformed parameters with PVE texts', () => {
    const defs = {vmid: {type: 'integer', minimum: 100}, name: {type: 'string', format: 'dns-name', optional: 1}}
    expect(validateParams(defs, {name: 'a_b', x: '1'})).toEqual({
      name: 'invalid format - value does not look like a valid DNS name\n',
      x: 'property is not defined in schema and the schema does not allow additional properties',
      vmid: 'property is missing and it is not optional',
    })
    expect(validateParams(defs, {vmid: 'abc'})).toEqual({vmid: "type check ('integer') failed - got 'abc'"})
  })

  it('parses PVE property strings with a default key and rejects unknown keys', () => {
    const keys = propertyFormatOf(CONFIG['virtio[n]']!)!
    expect(parsePropertyString('local:0,import-from=local:import/x.qcow2,serial=pgi-data,iothread=on', keys)).toEqual({file: 'local:0', 'import-from': 'local:import/x.qcow2', serial: 'pgi-data', iothread: '1'})
    expect(() => parsePropertyString('local:1,nope=1', keys)).toThrow(/invalid key in comma-separated list property: nope/)
    // a key alias: "virtio=<MAC>" in a NIC names the model and gives the MAC
    expect(parsePropertyString('virtio=BC:24:11:00:00:01,bridge=vmbr0', propertyFormatOf(CONFIG['net[n]']!)!)).toEqual({model: 'virtio', macaddr: 'BC:24:11:00:00:01', bridge: 'vmbr0'})
    expect(checkProp(CONFIG['ipconfig[n]']!, 'ip=10.0.0.5/24,gw=10.0.0.1', CONFIG)).toBeUndefined()
    expect(checkProp(CONFIG['ipconfig[n]']!, 'ip=10.0.0.5', CONFIG)).toBe('invalid format - format error\nip: invalid format - value does not look like a valid ipv4 network configuration\n\n')
    expect(checkProp(CONFIG['ipconfig[n]']!, 'gw=10.0.0.1', CONFIG)).toBe("invalid format - format error\nip: missing property required by 'gw'\n")
    expect(checkProp(CONFIG.sshkeys!, 'ssh-ed25519%20AAAA', CONFIG)).toBeUndefined()
    expect(checkProp(CONFIG.sshkeys!, 'ssh-ed25519+AAAA', CONFIG)).toMatch(/urlencoded/)
    // PVE's form values: booleans are 1 or 0 only (JSON true/false arrive as 1/0)
    expect(checkProp(CONFIG.onboot!, 'true', CONFIG)).toBe("type check ('boolean') failed - got 'true'")
    expect(checkProp(CONFIG.cpu!, 'host,flags=+aes', CONFIG)).toBeUndefined()
    expect(checkProp(CONFIG.cpu!, 'nehalem', CONFIG)).toBe("invalid format - Built-in cputype 'nehalem' is not defined (missing 'custom-' prefix?)\n")
  })

  it('parses and formats sizes', () => {
    expect(parseSize('32', 'G')).toBe(32 * 2 ** 30)
    expect(parseSize('+512M', 'B')).toBe(512 * 2 ** 20)
    expect(formatSize(8 * 2 ** 30)).toBe('8G')
  })
})

describe('digest', () => {
  it('is a SHA-1 of the sorted config and changes with any key', () => {
    const a = configDigest({name: 'x', cores: '2'})
    expect(a).toMatch(/^[0-9a-f]{40}$/)
    expect(configDigest({cores: '2', name: 'x'})).toBe(a)
    expect(configDigest({cores: '3', name: 'x'})).not.toBe(a)
  })
})

describe('tasks', () => {
  it('gives real-format UPIDs and ends with OK or the error text', async () => {
    const tm = new TaskManager()
    const ok = tm.start('lab1', 'qmstart', '100', 'pgi@pve!deploy', async (ctx) => ctx.log('starting'))
    const bad = tm.start('lab1', 'qmstart', '101', 'pgi@pve!deploy', async () => {
      throw new Error('start failed: boom')
    })
    expect(parseUpid(ok)).toMatchObject({node: 'lab1', type: 'qmstart', id: '100', user: 'pgi@pve!deploy'})
    expect(ok).toMatch(/^UPID:lab1:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:qmstart:100:pgi@pve!deploy:$/)
    await tm.idle()
    expect(tm.get(ok)).toMatchObject({status: 'stopped', exitstatus: 'OK', log: ['starting', 'TASK OK']})
    expect(tm.get(bad)).toMatchObject({status: 'stopped', exitstatus: 'start failed: boom', log: ['TASK ERROR: start failed: boom']})
  })
})

describe('config locks', () => {
  it('serialises holders and times out with PVE\'s message', async () => {
    const locks = new ConfigLocks(50)
    const order: number[] = []
    let release!: () => void
    const first = locks.with('lab1', 100, () => new Promise<void>((r) => (release = () => (order.push(1), r()))))
    await expect(locks.with('lab1', 100, () => order.push(2))).rejects.toThrow("can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout")
    const third = locks.with('lab1', 100, () => order.push(3), 1000)
    release()
    await first
    await third
    expect(order).toEqual([1, 3])
    // another VM is not blocked
    await expect(locks.with('lab1', 101, () => 'ok')).resolves.toBe('ok')
  })
})

describe('access control', () => {
  const ac = new AccessControl({
    users: {'root@pam': {passwordHash: hashPassword('pw')}, 'u@pve': {}},
    tokens: {'u@pve!t': {secretSha256: sha256Hex('s'), privsep: true}, 'u@pve!full': {secretSha256: sha256Hex('s2'), privsep: false}},
    roles: {R: ['VM.Audit', 'VM.PowerMgmt'], TokR: ['VM.Audit']},
    acl: [
      {path: '/vms', ugid: 'u@pve', roleid: 'R', propagate: true},
      {path: '/vms/100', ugid: 'u@pve!t', roleid: 'TokR', propagate: true},
    ],
  })

  it('intersects a privilege-separated token with its user, propagates ACLs down the tree', () => {
    const tok = ac.verifyToken('PVEAPIToken=u@pve!t=s')
    expect(ac.has(tok, '/vms/100', 'VM.Audit')).toBe(true)
    expect(ac.has(tok, '/vms/100', 'VM.PowerMgmt')).toBe(false)
    expect(ac.has(tok, '/vms/200', 'VM.Audit')).toBe(false)
    const full = ac.verifyToken('PVEAPIToken=u@pve!full=s2')
    expect(ac.has(full, '/vms/200', 'VM.PowerMgmt')).toBe(true)
    expect(ac.has(full, '/storage/local', 'Datastore.Audit')).toBe(false)
  })

  it('raises PVE\'s 403 texts', () => {
    const tok = ac.verifyToken('PVEAPIToken=u@pve!t=s')
    expect(() => ac.check(tok, '/vms/100', ['VM.Allocate'])).toThrow(new PermissionError('/vms/100', 'VM.Allocate'))
    expect(() => ac.check(tok, '/vms/100', ['VM.Allocate'])).toThrow('Permission check failed (/vms/100, VM.Allocate)')
    expect(() => ac.check(tok, '/vms/100', ['VM.Snapshot', 'VM.Snapshot.Rollback'], true)).toThrow('Permission check failed (/vms/100, VM.Snapshot|VM.Snapshot.Rollback)')
  })

  it('rejects wrong token secrets and expired tickets', () => {
    expect(() => ac.verifyToken('PVEAPIToken=u@pve!t=wrong')).toThrow('invalid token value!')
    let now = 1_800_000_000
    const timed = new AccessControl(ac.config(), () => now)
    const {ticket, CSRFPreventionToken} = timed.login('root', 'pw')
    expect(timed.verifyTicket(ticket, CSRFPreventionToken, true).user).toBe('root@pam')
    expect(() => timed.verifyTicket(ticket, 'bogus', true)).toThrow(/csrf/)
    now += 2 * 3600 + 1
    expect(() => timed.verifyTicket(ticket, undefined, false)).toThrow('ticket expired')
    expect(() => timed.login('root', 'nope')).toThrow('authentication failure')
  })
})

describe('fault injection', () => {
  it('replays the same decisions for the same seed, whatever the interleaving of other keys', () => {
    const cfg = faultConfigFrom({seed: 42, task_failure_rate: 0.3, http_500_rate: 0.2})
    const a = new Faults(cfg)
    const b = new Faults(cfg)
    const seqA = Array.from({length: 20}, () => a.taskFails('qmstart', 'lab1:100'))
    // b asks about another VM in between: the answers for lab1:100 must not change
    const seqB = Array.from({length: 20}, () => (b.taskFails('qmstart', 'lab2:200'), b.taskFails('qmstart', 'lab1:100')))
    expect(seqB).toEqual(seqA)
    expect(seqA.some(Boolean)).toBe(true)
    expect(seqA.every(Boolean)).toBe(false)
    const c = new Faults({...cfg, seed: 43})
    expect(Array.from({length: 20}, () => c.taskFails('qmstart', 'lab1:100'))).not.toEqual(seqA)
  })

  it('marks unhealthy guests by list and by rate, stably', () => {
    const f = new Faults(faultConfigFrom({seed: 7, unhealthy_vms: ['lab1/1001'], unhealthy_rate: 0.5}))
    expect(f.guestUnhealthy('lab1', 1001)).toBe(true)
    const picks = Array.from({length: 40}, (_, i) => f.guestUnhealthy('lab2', 1000 + i))
    expect(picks).toEqual(Array.from({length: 40}, (_, i) => f.guestUnhealthy('lab2', 1000 + i)))
    expect(picks.filter(Boolean).length).toBeGreaterThan(5)
    expect(new Faults(NO_FAULTS).guestUnhealthy('lab1', 1001)).toBe(false)
  })

  it('rejects unknown keys and bad rates', () => {
    expect(() => faultConfigFrom({task_failure_rat: 0.1})).toThrow(/unknown key "task_failure_rat"/)
    expect(() => faultConfigFrom({http_500_rate: 2})).toThrow(/between 0 and 1/)
  })
})

describe('generated inventory', () => {
  it('passes the inventory loader (loadValidInventory)', async () => {
    const {mkdtemp, writeFile, rm} = await import('node:fs/promises')
    const {tmpdir} = await import('node:os')
    const {join} = await import('node:path')
    const {loadValidInventory} = await import('../../../src/inventory/load.js')
    const dir = await mkdtemp(join(tmpdir(), 'pgi-lab-inv-'))
    try {
      const fp = Array.from({length: 32}, (_, i) => (i * 7).toString(16).toUpperCase().padStart(2, '0')).join(':')
      const rec = 'age1ppm2jlw8edhgt99e7furp5wjdd4gyrlv5ndarvv4npp3g67wzceqdhdjyx'
      const yaml = labInventoryYaml({nodes: [{name: 'lab1', url: 'https://127.0.0.1:40001', fingerprint: fp}, {name: 'lab2', url: 'https://127.0.0.1:40002', fingerprint: fp}], sites: 7, pveVersion: '9.1', tokenId: 'pgi@pve!deploy', recipients: [{name: 'lab-operator', key: rec}], amiRecipient: rec})
      await writeFile(join(dir, 'lab.yaml'), yaml)
      const inv = await loadValidInventory(join(dir, 'lab.yaml'))
      expect(inv.establishments).toHaveLength(7)
      expect(inv.hypervisors.size).toBe(2)
      expect(inv.establishments.filter((e) => e.hypervisor === 'lab1')).toHaveLength(4)
      expect(inv.hypervisors.get('lab1')!.token.secret).toEqual({store: 'hypervisors/lab1/token'})
    } finally {
      await rm(dir, {recursive: true, force: true})
    }
  })
})
