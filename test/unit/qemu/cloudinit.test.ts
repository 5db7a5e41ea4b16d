import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {parse} from 'yaml'

import {networkConfig, parseIpConfig, seedFiles, writeSeedImage} from '../../../src/qemu/cloudinit.js'

const HASH = '$6$rounds=4096$saltsalt$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijk'

describe('parseIpConfig', () => {
  it('parses a static PVE ipconfig0 string', () => {
    expect(parseIpConfig('ip=10.1.2.3/24,gw=10.1.2.1')).toEqual({ip: '10.1.2.3/24', gw: '10.1.2.1'})
  })
  it('parses dhcp and IPv6 forms', () => {
    expect(parseIpConfig('ip=dhcp')).toEqual({ip: 'dhcp'})
    expect(parseIpConfig('ip6=auto')).toEqual({ip6: 'auto'})
    expect(parseIpConfig('ip=10.0.0.5/16,gw=10.0.0.1,ip6=fd00::5/64,gw6=fd00::1')).toEqual({ip: '10.0.0.5/16', gw: '10.0.0.1', ip6: 'fd00::5/64', gw6: 'fd00::1'})
  })
  it.each([
    ['ip=10.1.2.3', /CIDR/],
    ['ip=10.1.2.300/24', /CIDR/],
    ['ip=10.1.2.3/33', /CIDR/],
    ['gw=10.1.2.1', /needs a static ip/],
    ['ip=dhcp,gw=10.1.2.1', /needs a static ip/],
    ['ip=10.1.2.3/24,gateway=10.1.2.1', /unknown key "gateway"/],
    ['ip', /not key=value/],
  ])('rejects %s', (value, re) => {
    expect(() => parseIpConfig(value)).toThrow(re)
  })
})

describe('seedFiles', () => {
  const spec = {
    hostname: 'pgi-0130040y',
    user: 'ami',
    passwordHash: HASH,
    sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx ami@poste'],
    nics: [{mac: '52:54:00:12:34:56', ipconfig: parseIpConfig('ip=10.1.2.3/24,gw=10.1.2.1')}],
    nameservers: ['10.1.2.53', '10.1.2.54'],
    searchdomain: 'lycee.example',
  }

  it('writes meta-data with instance-id and local-hostname', () => {
    const meta = parse(seedFiles(spec)['meta-data'])
    expect(meta['local-hostname']).toBe('pgi-0130040y')
    expect(meta['instance-id']).toMatch(/^[0-9a-f]{40}$/)
  })

  it('writes the #cloud-config PVE writes: the image\'s default user renamed, the hash and keys, never a clear password', () => {
    const text = seedFiles(spec)['user-data']
    expect(text.startsWith('#cloud-config\n')).toBe(true)
    expect(text).not.toContain('NOPASSWD')
    // qemu-server's cloudinit_userdata, key for key (ciupgrade unset: PVE's default is to upgrade)
    expect(parse(text)).toEqual({
      hostname: 'pgi-0130040y',
      manage_etc_hosts: true,
      fqdn: 'pgi-0130040y.lycee.example',
      user: 'ami',
      password: HASH,
      ssh_authorized_keys: spec.sshKeys,
      chpasswd: {expire: false},
      users: ['default'],
      package_upgrade: true,
    })
  })

  it('asks for no package upgrade with ciupgrade 0, and keeps root\'s login usable when ciuser is root', () => {
    expect(parse(seedFiles({...spec, packageUpgrade: false})['user-data']).package_upgrade).toBeUndefined()
    const root = parse(seedFiles({...spec, user: 'root'})['user-data'])
    expect(root).toMatchObject({user: 'root', disable_root: false})
    expect(root.users).toBeUndefined()
  })

  it('turns ipconfig0 into a network-config v2 matching the MAC, with gateway and DNS', () => {
    const text = seedFiles(spec)['network-config']
    // PyYAML (YAML 1.1) would read an unquoted MAC as a base-60 integer
    expect(text).toContain('"52:54:00:12:34:56"')
    expect(parse(text, {version: '1.1'})).toEqual({
      version: 2,
      ethernets: {
        eth0: {
          match: {macaddress: '52:54:00:12:34:56'},
          'set-name': 'eth0',
          addresses: ['10.1.2.3/24'],
          gateway4: '10.1.2.1',
          nameservers: {addresses: ['10.1.2.53', '10.1.2.54'], search: ['lycee.example']},
        },
      },
    })
  })

  it('handles dhcp NICs without a MAC', () => {
    expect(networkConfig({hostname: 'x', nics: [{ipconfig: {ip: 'dhcp'}}]})).toEqual({version: 2, ethernets: {eth0: {dhcp4: true}}})
  })

  it('derives the instance-id from the content (a change re-runs cloud-init) and is deterministic', () => {
    const a = parse(seedFiles(spec)['meta-data'])['instance-id']
    expect(parse(seedFiles(spec)['meta-data'])['instance-id']).toBe(a)
    const b = parse(seedFiles({...spec, nics: [{mac: spec.nics[0].mac, ipconfig: parseIpConfig('ip=10.1.2.4/24,gw=10.1.2.1')}]})['meta-data'])['instance-id']
    expect(b).not.toBe(a)
    expect(parse(seedFiles({...spec, instanceId: 'iid-1'})['meta-data'])['instance-id']).toBe('iid-1')
  })

  it('refuses a clear-text password, a bad hostname and a multi-line key', () => {
    expect(() => seedFiles({...spec, passwordHash: 'secret'})).toThrow(/crypt/)
    expect(() => seedFiles({...spec, hostname: 'bad_name'})).toThrow(/hostname/)
    expect(() => seedFiles({...spec, sshKeys: ['ssh-ed25519 A\nssh-rsa B']})).toThrow(/one line/)
  })

  it('sets no password for a key-only user (the image\'s default user stays locked)', () => {
    const doc = parse(seedFiles({hostname: 'h', user: 'ami', sshKeys: ['ssh-ed25519 AAAA k']})['user-data'])
    expect(doc.password).toBeUndefined()
    expect(doc.ssh_authorized_keys).toEqual(['ssh-ed25519 AAAA k'])
    expect(doc.users).toEqual(['default'])
  })
})

describe('writeSeedImage', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgi-seed-'))
  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it('writes an ISO labelled cidata holding the three files, and nothing else beside it', async () => {
    const out = join(dir, 'seed.iso')
    const files = await writeSeedImage({hostname: 'h1', user: 'ami', sshKeys: ['ssh-ed25519 AAAA k'], nics: [{ipconfig: {ip: '10.9.0.2/24', gw: '10.9.0.1'}}]}, out)
    const iso = readFileSync(out)
    // ISO 9660 primary volume descriptor at sector 16: "CD001", volume id at offset 40
    expect(iso.subarray(16 * 2048 + 1, 16 * 2048 + 6).toString('latin1')).toBe('CD001')
    expect(iso.subarray(16 * 2048 + 40, 16 * 2048 + 72).toString('latin1').trim()).toBe('cidata')
    const listing = execFileSync('isoinfo', ['-R', '-f', '-i', out], {encoding: 'utf8'}).split('\n').filter(Boolean).sort()
    expect(listing).toEqual(['/meta-data', '/network-config', '/user-data'])
    const ud = execFileSync('isoinfo', ['-R', '-x', '/user-data', '-i', out], {encoding: 'utf8'})
    expect(ud).toBe(files['user-data'])
    expect(execFileSync('ls', [dir], {encoding: 'utf8'}).trim()).toBe('seed.iso')
  })
})
