import {createHash} from 'node:crypto'
import {createServer} from 'node:http'
import {request} from 'node:https'
import type {AddressInfo} from 'node:net'
import {connect} from 'node:tls'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {faultConfigFrom} from '../../../src/lab/faults.js'
import {startTestLab, TOKEN, type TestLab} from './lab-harness.js'

function upload(lab: TestLab, storage: string, fields: Record<string, string>, filename: string, content: Buffer): Promise<{status: number; reason: string; body: any}> {
  const boundary = '----pgi' + Math.random().toString(16).slice(2)
  const parts: Buffer[] = []
  for (const [k, v] of Object.entries(fields)) parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`))
  parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="filename"; filename="${filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`), content, Buffer.from(`\r\n--${boundary}--\r\n`))
  const body = Buffer.concat(parts)
  return new Promise((resolve, reject) => {
    const req = request({host: '127.0.0.1', port: lab.rt.ports.lab1, method: 'POST', path: `/api2/json/nodes/lab1/storage/${storage}/upload`, ca: lab.rt.certs.lab1!.cert, servername: 'localhost', headers: {Authorization: `PVEAPIToken=${TOKEN}`, 'Content-Type': `multipart/form-data; boundary=${boundary}`, 'Content-Length': body.length}}, (res) => {
      let t = ''
      res.on('data', (d: Buffer) => (t += d))
      res.on('end', () => resolve({status: res.statusCode!, reason: res.statusMessage!, body: JSON.parse(t)}))
    })
    req.on('error', reject)
    req.end(body)
  })
}

describe('lab storage, clone, template and faults', () => {
  let lab: TestLab
  beforeAll(async () => {
    lab = await startTestLab()
  })
  afterAll(async () => lab?.close())

  it('uploads an image with checksum verification into import content, then creates a VM from it', async () => {
    const img = Buffer.alloc(64 * 1024, 7)
    const sha = createHash('sha256').update(img).digest('hex')
    const bad = await upload(lab, 'local', {content: 'import', checksum: '0'.repeat(64), 'checksum-algorithm': 'sha256'}, 'pgi-2026.11.0.qcow2', img)
    expect(bad.status).toBe(500)
    expect(bad.reason).toMatch(/^checksum mismatch: got '[0-9a-f]{64}' != expect '0{64}'$/)
    const wrongStore = await upload(lab, 'local-vm', {content: 'import'}, 'x.qcow2', img)
    expect(wrongStore.reason).toBe("storage 'local-vm' does not support content-type 'import'")
    const up = await upload(lab, 'local', {content: 'import', checksum: sha, 'checksum-algorithm': 'sha256'}, 'pgi-2026.11.0.qcow2', img)
    expect(up.status, up.reason).toBe(200)
    expect((await lab.wait(up.body.data)).exitstatus).toBe('OK')
    const content = await lab.call('GET', '/nodes/lab1/storage/local/content', {content: 'import'})
    expect(content.body.data).toEqual([expect.objectContaining({volid: 'local:import/pgi-2026.11.0.qcow2', content: 'import', format: 'qcow2', size: img.length})])
    const c = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 2001, name: 'site-a', agent: 'enabled=1', virtio0: 'local-vm:0,import-from=local:import/pgi-2026.11.0.qcow2', ide2: 'local-vm:cloudinit', net0: 'virtio,bridge=vmbr0', ipconfig0: 'ip=10.2.0.10/16,gw=10.2.0.1', virtio1: 'local-vm:2,serial=pgi-data'})
    expect((await lab.wait(c.body.data)).exitstatus).toBe('OK')
    const missing = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 2002, virtio0: 'local-vm:0,import-from=local:import/none.qcow2'})
    const t = await lab.wait(missing.body.data)
    expect(t.exitstatus).toMatch(/does not exist/)
    expect((await lab.call('GET', '/nodes/lab1/qemu/2002/config')).status).toBe(500)
    // the guest reports the version of the image it was imported from
    const start = await lab.call('POST', '/nodes/lab1/qemu/2001/status/start')
    await lab.wait(start.body.data)
    const ex = await lab.call('POST', '/nodes/lab1/qemu/2001/agent/exec', {command: 'pgi-health'})
    const es = await lab.call('GET', '/nodes/lab1/qemu/2001/agent/exec-status', {pid: ex.body.data.pid})
    expect(JSON.parse(es.body.data['out-data']).image.version).toBe('2026.11.0')
    const rd = await lab.call('GET', '/nodes/lab1/qemu/2001/agent/file-read', {file: '/etc/pgi/image.json'})
    expect(JSON.parse(rd.body.data.content).version).toBe('2026.11.0')
  })

  it('downloads only from loopback, with checksum', async () => {
    const payload = Buffer.from('raw disk bytes')
    const srv = createServer((_, res) => res.end(payload))
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
    try {
      const port = (srv.address() as AddressInfo).port
      const sha = createHash('sha256').update(payload).digest('hex')
      const ok = await lab.call('POST', '/nodes/lab1/storage/local/download-url', {url: `http://127.0.0.1:${port}/img.raw`, content: 'import', filename: 'pulled.raw', checksum: sha, 'checksum-algorithm': 'sha256'})
      expect(ok.status, ok.reason).toBe(200)
      expect((await lab.wait(ok.body.data)).exitstatus).toBe('OK')
      const badSum = await lab.call('POST', '/nodes/lab1/storage/local/download-url', {url: `http://127.0.0.1:${port}/img.raw`, content: 'import', filename: 'bad.raw', checksum: 'f'.repeat(64), 'checksum-algorithm': 'sha256'})
      expect((await lab.wait(badSum.body.data)).exitstatus).toMatch(/^checksum mismatch: got '[0-9a-f]{64}' != expect 'f{64}'$/)
      const names = (await lab.call('GET', '/nodes/lab1/storage/local/content', {content: 'import'})).body.data.map((v: {volid: string}) => v.volid)
      expect(names).toContain('local:import/pulled.raw')
      expect(names).not.toContain('local:import/bad.raw')
      const far = await lab.call('POST', '/nodes/lab1/storage/local/download-url', {url: 'http://192.0.2.1/img.raw', content: 'import', filename: 'far.raw'})
      expect(far.status).toBe(500)
      expect(far.reason).toMatch(/only downloads from loopback/)
    } finally {
      srv.close()
    }
  })

  it('clones: the source carries lock "clone" meanwhile; templates give linked clones', async () => {
    const backend = lab.rt.backend as unknown as {copyDisk: (...a: unknown[]) => Promise<unknown>}
    const orig = backend.copyDisk.bind(backend)
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    backend.copyDisk = async (...a: unknown[]) => (await gate, orig(...a))
    await lab.call('POST', '/nodes/lab1/qemu/2001/status/stop').then((r) => lab.wait(r.body.data))
    const cl = await lab.call('POST', '/nodes/lab1/qemu/2001/clone', {newid: 2003, name: 'site-b', full: 1})
    expect(cl.status).toBe(200)
    // as PVE's vm_start: the lock is checked in the task, which fails
    const put = await lab.call('POST', '/nodes/lab1/qemu/2001/status/start')
    expect(put.status).toBe(200)
    expect((await lab.wait(put.body.data)).exitstatus).toBe('VM is locked (clone)')
    const st = await lab.call('GET', '/nodes/lab1/qemu/2001/status/current')
    expect(st.body.data.lock).toBe('clone')
    release()
    expect((await lab.wait(cl.body.data)).exitstatus).toBe('OK')
    backend.copyDisk = orig
    const cfg = await lab.call('GET', '/nodes/lab1/qemu/2003/config')
    expect(cfg.body.data.name).toBe('site-b')
    expect(cfg.body.data.virtio0).toMatch(/^local-vm:2003\/vm-2003-disk-0\.qcow2/)
    const tpl = await lab.call('POST', '/nodes/lab1/qemu/2003/template')
    expect((await lab.wait(tpl.body.data)).exitstatus).toBe('OK')
    const tcfg = await lab.call('GET', '/nodes/lab1/qemu/2003/config')
    expect(tcfg.body.data.template).toBe(1)
    expect(tcfg.body.data.virtio0).toMatch(/^local-vm:2003\/base-2003-disk-0\.qcow2/)
    const linked = await lab.call('POST', '/nodes/lab1/qemu/2003/clone', {newid: 2004, name: 'linked'})
    expect((await lab.wait(linked.body.data)).exitstatus).toBe('OK')
    const lcfg = await lab.call('GET', '/nodes/lab1/qemu/2004/config')
    expect(lcfg.body.data.virtio0).toMatch(/^local-vm:2003\/base-2003-disk-0\.qcow2\/2004\/vm-2004-disk-0\.qcow2/)
    const tstart = await lab.call('POST', '/nodes/lab1/qemu/2003/status/start')
    expect((await lab.wait(tstart.body.data)).exitstatus).toBe("you can't start a vm if it's a template")
  })

  it('resizes (grow only), deletes with purge, refuses to delete a running VM', async () => {
    const r = await lab.call('PUT', '/nodes/lab1/qemu/2001/resize', {disk: 'virtio1', size: '+1G'})
    expect((await lab.wait(r.body.data)).exitstatus).toBe('OK')
    expect((await lab.call('GET', '/nodes/lab1/qemu/2001/config')).body.data.virtio1).toMatch(/size=3G/)
    expect((await lab.call('PUT', '/nodes/lab1/qemu/2001/resize', {disk: 'virtio1', size: '1G'})).reason).toBe('shrinking disks is not supported')
    await lab.call('POST', '/nodes/lab1/qemu/2001/status/start').then((x) => lab.wait(x.body.data))
    expect((await lab.call('DELETE', '/nodes/lab1/qemu/2001', {purge: 1})).reason).toBe('VM 2001 is running - destroy failed')
    await lab.call('POST', '/nodes/lab1/qemu/2001/status/stop').then((x) => lab.wait(x.body.data))
    const d = await lab.call('DELETE', '/nodes/lab1/qemu/2001', {purge: 1, 'destroy-unreferenced-disks': 1})
    expect((await lab.wait(d.body.data)).exitstatus).toBe('OK')
    const vols = await lab.call('GET', '/nodes/lab1/storage/local-vm/content', {vmid: 2001})
    expect(vols.body.data).toEqual([])
  })

  it('answers the task log and lists tasks', async () => {
    const tasks = await lab.call('GET', '/nodes/lab1/tasks', {limit: 3})
    expect(tasks.body.data).toHaveLength(3)
    const log = await lab.call('GET', `/nodes/lab1/tasks/${encodeURIComponent(tasks.body.data[0].upid)}/log`)
    expect(log.body.data.at(-1).t).toMatch(/^TASK (OK|ERROR)/)
    expect(log.body.data[0].n).toBe(1)
  })
})

describe('PVE 8.4 guest-agent privileges and faults', () => {
  it('PVE 8.4 checks VM.Monitor for agent calls (the token role has it)', async () => {
    const lab = await startTestLab({pveVersion: '8.4'})
    try {
      const c = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 100, agent: 1, virtio0: 'local-vm:1'})
      await lab.wait(c.body.data)
      await lab.call('POST', '/nodes/lab1/qemu/100/status/start').then((x) => lab.wait(x.body.data))
      expect((await lab.call('POST', '/nodes/lab1/qemu/100/agent/ping')).status).toBe(200)
      const audit = await lab.call('POST', '/nodes/lab1/qemu/100/agent/ping', {}, {auth: {token: 'audit@pve!ro=11111111-2222-4333-8444-555566667777'}})
      expect(audit.reason).toBe('Permission check failed (/vms/100, VM.Monitor)')
    } finally {
      await lab.close()
    }
  })

  it('injects task failures and 500s reproducibly from the seed', async () => {
    const run = async () => {
      const lab = await startTestLab({faults: faultConfigFrom({seed: 5, task_failure_rate: 0.5, http_500_rate: 0.2})})
      const out: string[] = []
      try {
        for (let i = 0; i < 12; i++) {
          const r = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 300 + i, virtio0: 'local-vm:1'})
          if (r.status !== 200) {
            out.push(`${r.status}`)
            continue
          }
          out.push((await lab.wait(r.body.data)).exitstatus === 'OK' ? 'ok' : 'fail')
        }
      } finally {
        await lab.close()
      }
      return out
    }
    const a = await run()
    expect(a).toContain('fail')
    expect(a).toContain('ok')
    expect(await run()).toEqual(a)
  })

  it('a dead node accepts TCP but never answers; unhealthy guests report it', async () => {
    const lab = await startTestLab({nodes: 2, faults: faultConfigFrom({dead_nodes: ['lab2'], unhealthy_vms: ['lab1/100']})})
    try {
      const answered = await new Promise<string>((resolve) => {
        const s = connect({host: '127.0.0.1', port: lab.rt.ports.lab2!, ca: lab.rt.certs.lab2!.cert, servername: 'localhost'}, () => {
          s.write('GET /api2/json/version HTTP/1.1\r\nHost: x\r\n\r\n')
          setTimeout(() => (s.destroy(), resolve('no answer')), 300)
        })
        s.on('data', () => resolve('answered'))
        s.on('error', (e) => resolve(`error ${e.message}`))
      })
      expect(answered).toBe('no answer')
      const c = await lab.call('POST', '/nodes/lab1/qemu', {vmid: 100, agent: 1, virtio0: 'local-vm:1', virtio1: 'local-vm:1,serial=pgi-data'})
      await lab.wait(c.body.data)
      await lab.call('POST', '/nodes/lab1/qemu/100/status/start').then((x) => lab.wait(x.body.data))
      const ex = await lab.call('POST', '/nodes/lab1/qemu/100/agent/exec', {command: '/usr/local/sbin/pgi-health'})
      const es = await lab.call('GET', '/nodes/lab1/qemu/100/agent/exec-status', {pid: ex.body.data.pid})
      expect(es.body.data.exitcode).toBe(1)
      expect(JSON.parse(es.body.data['out-data']).healthy).toBe(false)
    } finally {
      await lab.close()
    }
  })
})
