import {execFile} from 'node:child_process'
import {existsSync} from 'node:fs'
import {writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ROOT_PASSWORD, startTestLab, TOKEN, type TestLab} from './lab-harness.js'

/**
 * A PVE client nobody here wrote against the lab: proxmoxer (Debian's python3-proxmoxer, installed
 * by scripts/install-deps.sh), the library Ansible's proxmox modules are built on. The script
 * (proxmoxer-client.py) logs in as root@pam and with the API token, creates a VM with the options
 * proxmox_kvm sends, starts it, hot-plugs a disk, lists storages, shuts the VM down and deletes it.
 * /usr/bin/python3: Debian's Python, which has the package (another python3 may come first on PATH).
 */

const PYTHON = '/usr/bin/python3'
const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'proxmoxer-client.py')

describe('proxmoxer (python3-proxmoxer) against the lab', () => {
  let lab: TestLab

  beforeAll(async () => {
    lab = await startTestLab()
  })
  afterAll(async () => lab?.close())

  it('runs create with typical options, start, a hot-plugged disk, storage listing, shutdown and delete', async () => {
    expect(existsSync(PYTHON), `${PYTHON} is missing`).toBe(true)
    const probe = await promisify(execFile)(PYTHON, ['-c', 'import proxmoxer, requests']).catch((e: Error) => e)
    expect(probe instanceof Error ? probe.message : '', 'python3-proxmoxer is not installed: run scripts/install-deps.sh').toBe('')
    const ca = join(lab.dir, 'lab1-ca.pem')
    await writeFile(ca, lab.rt.certs.lab1!.cert)
    const env = {...process.env, LAB_HOST: `127.0.0.1:${lab.rt.ports.lab1}`, LAB_CA: ca, LAB_NODE: 'lab1', LAB_ROOT_PASSWORD: ROOT_PASSWORD, LAB_TOKEN: TOKEN}
    const {stdout} = await promisify(execFile)(PYTHON, [SCRIPT], {env, timeout: 120_000}).catch((e: Error & {stderr?: string}) => {
      throw new Error(`proxmoxer-client.py failed: ${e.stderr ?? e.message}`)
    })
    const seen = JSON.parse(stdout)
    expect(seen.version.release).toBe('9.1')
    expect(seen.create).toBe('OK')
    expect(seen.config).toMatchObject({
      name: 'ansible-vm',
      cores: 2,
      memory: '2048',
      balloon: 1024,
      agent: 'enabled=1,fstrim_cloned_disks=1',
      machine: 'q35',
      bios: 'ovmf',
      tablet: 0,
      startup: 'order=2,up=10',
      watchdog: 'model=i6300esb,action=reset',
      cipassword: '**********',
      tags: 'ansible;lab',
    })
    expect(seen.config.scsi0).toMatch(/^local-vm:4242\/vm-4242-disk-\d\.qcow2,discard=on,iothread=1,size=4G,ssd=1$/)
    expect(seen.config.efidisk0).toMatch(/^local-vm:4242\/vm-4242-disk-\d\.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K$/)
    expect(seen.config.net0).toMatch(/^virtio=[0-9A-F:]{17},bridge=vmbr0,firewall=1$/)
    expect(seen.start).toBe('OK')
    expect(seen.status).toBe('running')
    expect(seen.hotplugged).toMatch(/^local-vm:4242\/vm-4242-disk-\d\.qcow2,serial=blank,size=2G$/)
    expect(seen.pending_scsi1).toEqual([{key: 'scsi1', value: seen.hotplugged}])
    expect(seen.storages).toEqual(['local', 'local-vm'])
    expect(seen.cluster_storages).toEqual(['local', 'local-vm'])
    // scsi0, efidisk0, scsi1 and the cloud-init drive
    expect(seen.images).toHaveLength(4)
    expect(seen.images).toContain('local-vm:4242/vm-4242-cloudinit.qcow2')
    expect(seen.images).toContain(seen.hotplugged.split(',')[0])
    // proxmoxer 1.2 keeps the reason phrase (its `errors` reads the body's data, which is null)
    expect(seen.bad).toEqual({status: 400, reason: 'Parameter verification failed.'})
    expect(seen.shutdown).toBe('OK')
    expect(seen.status_after).toBe('stopped')
    expect(seen.delete).toBe('OK')
    expect(seen.vms_after).toEqual([])
    expect(seen.images_after).toEqual([])
  }, 180_000)
})
