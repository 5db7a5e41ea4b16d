import {ErrorCode, PgiError, TimeoutError, UserError} from '../errors.js'
import {PveApiError, PveTaskError, type PveWhere} from './errors.js'
import type {PveTaskStatus, PveTaskSummary, WaitOptions} from './types.js'
import {parseUpid, tryParseUpid} from './upid.js'
import {DEFAULT_TASK_TIMEOUT_MS} from './options.js'
import {type Params, seg} from './encoding.js'
import {type Reconciled, lockGaveUp, PveTransport} from './transport.js'

/** Proxmox VE tasks: waiting for one (per-type timeouts, the log tail on failure), their logs and lists, starting one with reconciliation. */
export class PveTasks extends PveTransport {
  // ---------------------------------------------------------------------------------------------
  // tasks

  protected taskTimeout(type: string): number {
    return this.taskTimeouts[type] ?? DEFAULT_TASK_TIMEOUT_MS
  }

  async waitTask(node: string, upid: string, wait: WaitOptions = {}): Promise<PveTaskStatus> {
    let u
    try {
      u = parseUpid(upid)
    } catch (err) {
      throw new PveApiError({status: 200, pveMessage: `expected a task id, got ${JSON.stringify(upid)}`, method: 'GET', path: `/nodes/${node}/tasks`, where: this.where(node), cause: err})
    }
    const vmid = /^\d+$/.test(u.id) ? Number(u.id) : undefined
    const where = this.where(u.node || node, vmid)
    this.rememberTask(upid)
    const timeout = wait.timeoutMs ?? this.taskTimeout(u.type)
    const start = this.now()
    let delay = this.pollInitial
    const path = `/nodes/${seg(u.node || node)}/tasks/${seg(upid)}/status`
    for (;;) {
      if (wait.signal?.aborted) throw wait.signal.reason
      const st = await this.get<PveTaskStatus>(path, undefined, where).catch((err: unknown) => {
        throw this.taskUnknown(err, u.type, upid, where)
      })
      if (st.status === 'stopped') {
        const exit = st.exitstatus ?? ''
        if (exit === 'OK' || /^WARNINGS: \d+$/.test(exit)) {
          if (exit !== 'OK') {
            const tail = await this.taskLogTail(u.node || node, upid, 10).catch(() => [])
            this.io.warn(`task ${u.type} ended with ${exit}`, {...where, log: tail.join(' | ')})
          }
          return {...st, upid, node: u.node || node, type: st.type ?? u.type, starttime: st.starttime ?? u.starttime}
        }
        const logTail = await this.taskLogTail(u.node || node, upid, 20).catch(() => [])
        throw new PveTaskError({upid, taskType: u.type, exitstatus: exit || '(no exit status)', logTail, where})
      }
      const elapsed = this.now() - start
      if (elapsed >= timeout) {
        throw new TimeoutError(`task ${u.type} still running after ${Math.round(elapsed / 1000)} s (limit ${Math.round(timeout / 1000)} s)`, {
          where,
          details: {upid, taskType: u.type, timeoutMs: timeout},
          suggestions: [
            'The task goes on running on the hypervisor: check it in its Tasks panel before doing anything else with this VM.',
            `Allow more time for ${u.type} tasks if the storage or link is slow (task timeout option).`,
          ],
        })
      }
      wait.onProgress?.(`${u.type} running (${Math.round(elapsed / 1000)} s)`)
      await this.pause(Math.min(delay, Math.max(0, timeout - elapsed)), wait.signal)
      delay = Math.min(this.pollMax, Math.round(delay * 1.5))
    }
  }

  /**
   * The status of a started task could not be read (after the retries of `get`): the task itself
   * may have succeeded, so the failure is named for what it is. An unreachable hypervisor is left
   * as it is (its own code and exit status say what happened).
   */
  protected taskUnknown(err: unknown, type: string, upid: string, where: PveWhere): unknown {
    if (!(err instanceof PgiError) || err.code === ErrorCode.UNREACHABLE || err.code === ErrorCode.TLS_MISMATCH) return err
    return new UserError(ErrorCode.PVE_TASK_UNKNOWN, `task ${type} was started, but its status could not be read: ${err.message}`, {
      where,
      cause: err,
      exitCode: err.exitCode,
      details: {upid, taskType: type},
      suggestions: [
        'The task may have finished on the hypervisor: run the command again, it carries on from what the hypervisor holds.',
        `Or look at the task there: pvenode task status ${upid}`,
      ],
    })
  }

  async taskLog(node: string, upid: string, opts: {start?: number; limit?: number} = {}): Promise<string[]> {
    const u = tryParseUpid(upid)
    const lines = await this.get<{n: number; t: string}[]>(`/nodes/${seg(u?.node ?? node)}/tasks/${seg(upid)}/log`, {start: opts.start ?? 0, limit: opts.limit ?? 500}, this.where(node))
    return (lines ?? []).map((l) => l.t)
  }

  /** The last `n` lines of a task log (PVE gives the line count as `total` beside `data`). */
  async taskLogTail(node: string, upid: string, n: number): Promise<string[]> {
    const u = tryParseUpid(upid)
    const path = `/nodes/${seg(u?.node ?? node)}/tasks/${seg(upid)}/log`
    const first = await this.request<{n: number; t: string}[]>('GET', path, {start: 0, limit: n}, {where: this.where(node), wantBody: true})
    const total = typeof (first.body as {total?: unknown})?.total === 'number' ? (first.body as {total: number}).total : (first.data ?? []).length
    let lines = first.data ?? []
    if (total > n) lines = (await this.request<{n: number; t: string}[]>('GET', path, {start: total - n, limit: n}, {where: this.where(node)})).data ?? []
    return lines.map((l) => l.t).filter((t) => t !== 'no content')
  }

  /** Recent tasks on a node (newest first), e.g. to find the task a lost request started. */
  async listTasks(node: string, filter: {vmid?: number; type?: string; since?: number; limit?: number} = {}): Promise<PveTaskSummary[]> {
    const rows = await this.get<PveTaskSummary[]>(
      `/nodes/${seg(node)}/tasks`,
      {vmid: filter.vmid, typefilter: filter.type, since: filter.since, limit: filter.limit ?? 50, source: 'all'},
      this.where(node, filter.vmid),
    )
    return rows ?? []
  }

  protected rememberTask(upid: string): void {
    this.knownTasks.add(upid)
    if (this.knownTasks.size > 10_000) this.knownTasks.delete(this.knownTasks.values().next().value!)
  }

  /**
   * Finds a task of `type` (our token's, started since `sinceMs`, give or take 5 s of clock skew)
   * that an unanswered request may have started: not one this client already knows.
   */
  protected async findStartedTask(node: string, type: string, id: number | string | undefined, sinceMs: number): Promise<string | undefined> {
    const tasks = await this.listTasks(node, {type, vmid: typeof id === 'number' ? id : undefined, since: Math.floor(sinceMs / 1000) - 5})
    const user = this.tokenId.split('!')[0]
    const mine = tasks.filter((t) => t.type === type && (id === undefined || String(t.id) === String(id)) && (t.user === this.tokenId || t.user === user) && t.starttime * 1000 >= sinceMs - 5000 && !this.knownTasks.has(t.upid))
    return mine.sort((a, b) => b.starttime - a.starttime)[0]?.upid
  }

  /**
   * POST/DELETE that returns a UPID, then wait for the task. Lock errors (from the call or the
   * task) are retried within the lock budget; after an ambiguous network error, `state` and the
   * node's task list say whether the request was applied.
   */
  protected async runTask(
    method: 'POST' | 'DELETE' | 'PUT',
    node: string,
    path: string,
    params: Params | undefined,
    o: {where: PveWhere; type: string; taskId?: number | string; state?: () => Promise<boolean>; wait?: WaitOptions; idempotent?: boolean},
  ): Promise<void> {
    const lockStart = this.now()
    let attempt = 0
    for (;;) {
      if (o.wait?.signal?.aborted) throw o.wait.signal.reason
      const sent = this.now()
      const reconcile = async (): Promise<Reconciled> => {
        const upid = await this.findStartedTask(node, o.type, o.taskId, sent)
        if (upid) return {applied: true, upid}
        if (o.state && (await o.state())) return {applied: true}
        return {applied: false}
      }
      try {
        const r = await this.request<unknown>(method, path, params, {where: o.where, reconcile, idempotent: o.idempotent})
        const upid = r.data
        if (typeof upid === 'string') this.rememberTask(upid)
        if (typeof upid === 'string' && tryParseUpid(upid)) await this.waitTask(node, upid, o.wait)
        else if (r.reconciled === undefined && upid !== null && upid !== undefined) {
          this.io.debug(`PVE ${method} ${path} returned no task id`, {data: upid})
        }
        return
      } catch (err) {
        if (err instanceof PveTaskError && err.isLocked && this.now() - lockStart < this.retry.lockTimeoutMs) {
          const d = this.backoff(attempt++)
          this.io.info(`${o.type}: ${err.exitstatus}; trying again in ${(d / 1000).toFixed(1)} s`, o.where)
          await this.pause(d, o.wait?.signal)
          continue
        }
        if (err instanceof PveTaskError && err.isLocked) throw lockGaveUp(err, this.now() - lockStart)
        throw err
      }
    }
  }
}
