import {constants} from 'node:fs'
import {mkdtemp, open, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, describe, expect, it} from 'vitest'

import {probeBlockHost, pveBlockSettings, type BlockHost} from '../../../src/lab/pve-drive.js'

/** The lab gives each disk the cache and aio PVE gives it (qemu-server's print_drive_commandline_full). */

const full: BlockHost = {direct: true, ioUring: true}

describe("PVE's block settings for a lab VM's disks", () => {
  it('a disk without options gets cache=none and aio=io_uring; a CD-ROM keeps the host cache (QEMU default) with io_uring', () => {
    expect(pveBlockSettings({media: 'disk'}, full)).toEqual({cache: 'none', aio: 'io_uring'})
    expect(pveBlockSettings({media: 'cdrom'}, full)).toEqual({aio: 'io_uring'})
  })

  it("the config's own cache and aio are passed through", () => {
    expect(pveBlockSettings({media: 'disk', cache: 'writeback'}, full)).toEqual({cache: 'writeback', aio: 'io_uring'})
    expect(pveBlockSettings({media: 'disk', cache: 'directsync', aio: 'native'}, full)).toEqual({cache: 'directsync', aio: 'native'})
    expect(pveBlockSettings({media: 'disk', aio: 'threads'}, full)).toEqual({cache: 'none', aio: 'threads'})
    expect(pveBlockSettings({media: 'cdrom', cache: 'none'}, full)).toEqual({cache: 'none', aio: 'io_uring'})
  })

  it('without io_uring, PVE picks native AIO for direct I/O and threads otherwise', () => {
    const noUring = {direct: true, ioUring: false}
    expect(pveBlockSettings({media: 'disk'}, noUring)).toMatchObject({cache: 'none', aio: 'native'})
    expect(pveBlockSettings({media: 'disk', cache: 'writeback'}, noUring)).toMatchObject({cache: 'writeback', aio: 'threads'})
    expect(pveBlockSettings({media: 'disk', aio: 'io_uring'}, noUring)).toEqual({cache: 'none', aio: 'threads', note: 'aio=io_uring is not available to QEMU on this host: aio=threads instead'})
  })

  it('on a directory that refuses O_DIRECT the lab falls back to the host cache and says so (where PVE would not start the VM)', () => {
    const b = pveBlockSettings({media: 'disk'}, {direct: false, ioUring: true})
    expect(b).toEqual({cache: 'writeback', aio: 'io_uring', note: "cache=none needs O_DIRECT, which the lab's storage directory refuses: cache=writeback instead"})
    expect(pveBlockSettings({media: 'disk', aio: 'native'}, {direct: false, ioUring: false})).toMatchObject({cache: 'writeback', aio: 'threads'})
  })

  describe('probe', () => {
    const dirs: string[] = []
    afterAll(async () => {
      for (const d of dirs) await rm(d, {recursive: true, force: true})
    })

    it("finds what this host's temporary directory takes with qemu-io, and leaves nothing behind", async () => {
      const dir = await mkdtemp(join(tmpdir(), 'pgi-block-probe-'))
      dirs.push(dir)
      const host = await probeBlockHost(join(dir, 'storage'))
      // O_DIRECT checked apart, by opening a file there with it (EINVAL where it is refused)
      const oDirect = await open(join(dir, 'direct'), constants.O_CREAT | constants.O_RDWR | constants.O_DIRECT).then(
        async (f) => (await f.close(), true),
        () => false,
      )
      expect(host.direct).toBe(oDirect)
      expect(typeof host.ioUring).toBe('boolean')
      expect(await readdir(join(dir, 'storage'))).toEqual([])
    })
  })
})
