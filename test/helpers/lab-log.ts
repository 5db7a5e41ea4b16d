/** What a lab daemon's request log (`<lab dir>/requests.jsonl`) says, for tests that check "nothing was changed". */
import {stat} from 'node:fs/promises'
import {join} from 'node:path'

import {readRequestLog} from '../../src/lab/server.js'

/** The number of write requests (anything but GET) in the lab's log, once the log stopped growing (the daemon appends after answering). */
export async function labWriteRequests(labDir: string): Promise<number> {
  const file = join(labDir, 'requests.jsonl')
  let size = -1
  for (;;) {
    const now = (await stat(file).catch(() => ({size: 0}))).size
    if (now === size) break
    size = now
    await new Promise((r) => setTimeout(r, 300))
  }
  return (await readRequestLog(file)).filter((e) => e.method !== 'GET').length
}
