import {readFile} from 'node:fs/promises'

import {parse as parseYaml} from 'yaml'

import {ErrorCode, UserError} from '../errors.js'

/**
 * Fault injection for the lab, from flags or a YAML file. Every decision is a pure function of the
 * seed, the kind of fault, a stable key (node, VM, task type) and how many times that key was asked
 * before — not of a global call order — so a failing test replays the same faults for the same
 * requests even when unrelated requests interleave differently.
 *
 * YAML format (all keys optional):
 *   seed: 42
 *   task_failure_rate: 0.05      # fraction of async tasks that end with an error
 *   http_500_rate: 0.01          # fraction of API requests answered 500 before doing anything
 *   latency_ms: 50               # added to every API request (or {min: 10, max: 200})
 *   lock_contention_rate: 0.1    # fraction of config writes that fail "can't lock file … got timeout"
 *   dead_nodes: [lab3]           # nodes that accept TCP connections but never answer
 *   unhealthy_vms: [lab1/1001]   # guests whose PGI never becomes healthy
 *   unhealthy_rate: 0.02         # fraction of guests whose PGI never becomes healthy
 */
export interface FaultConfig {
  seed: number
  taskFailureRate: number
  http500Rate: number
  latencyMs: {min: number; max: number}
  lockContentionRate: number
  deadNodes: string[]
  /** "node/vmid" */
  unhealthyVms: string[]
  unhealthyRate: number
}

export const NO_FAULTS: FaultConfig = {
  seed: 1,
  taskFailureRate: 0,
  http500Rate: 0,
  latencyMs: {min: 0, max: 0},
  lockContentionRate: 0,
  deadNodes: [],
  unhealthyVms: [],
  unhealthyRate: 0,
}

function rate(v: unknown, name: string, file: string): number {
  if (v === undefined) return 0
  if (typeof v !== 'number' || !(v >= 0 && v <= 1)) {
    throw new UserError(ErrorCode.USAGE, `${file}: ${name} must be a number between 0 and 1, got ${JSON.stringify(v)}`, {where: {file}})
  }
  return v
}

/** Builds a FaultConfig from a plain object (the YAML's snake_case keys). */
export function faultConfigFrom(obj: Record<string, unknown>, source = 'faults'): FaultConfig {
  const known = new Set(['seed', 'task_failure_rate', 'http_500_rate', 'latency_ms', 'lock_contention_rate', 'dead_nodes', 'unhealthy_vms', 'unhealthy_rate'])
  for (const k of Object.keys(obj)) {
    if (!known.has(k)) throw new UserError(ErrorCode.USAGE, `${source}: unknown key "${k}"`, {suggestions: [`Known keys: ${[...known].join(', ')}`], where: {file: source}})
  }
  const lat = obj.latency_ms
  let latencyMs = {min: 0, max: 0}
  if (typeof lat === 'number') latencyMs = {min: lat, max: lat}
  else if (lat && typeof lat === 'object') {
    const l = lat as {min?: number; max?: number}
    latencyMs = {min: Number(l.min ?? 0), max: Number(l.max ?? l.min ?? 0)}
  }
  if (!(latencyMs.min >= 0 && latencyMs.max >= latencyMs.min)) throw new UserError(ErrorCode.USAGE, `${source}: latency_ms must be a number or {min, max} with 0 <= min <= max`, {where: {file: source}})
  if (obj.seed !== undefined && !Number.isInteger(Number(obj.seed))) throw new UserError(ErrorCode.USAGE, `${source}: seed must be an integer`, {where: {file: source}})
  const strings = (v: unknown, name: string): string[] => {
    if (v === undefined) return []
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' && typeof x !== 'number')) throw new UserError(ErrorCode.USAGE, `${source}: ${name} must be a list`, {where: {file: source}})
    return v.map(String)
  }
  return {
    seed: obj.seed === undefined ? 1 : Number(obj.seed),
    taskFailureRate: rate(obj.task_failure_rate, 'task_failure_rate', source),
    http500Rate: rate(obj.http_500_rate, 'http_500_rate', source),
    latencyMs,
    lockContentionRate: rate(obj.lock_contention_rate, 'lock_contention_rate', source),
    deadNodes: strings(obj.dead_nodes, 'dead_nodes'),
    unhealthyVms: strings(obj.unhealthy_vms, 'unhealthy_vms'),
    unhealthyRate: rate(obj.unhealthy_rate, 'unhealthy_rate', source),
  }
}

export async function loadFaultFile(file: string): Promise<FaultConfig> {
  const text = await readFile(file, 'utf8')
  const obj = (parseYaml(text) ?? {}) as Record<string, unknown>
  if (typeof obj !== 'object' || Array.isArray(obj)) throw new UserError(ErrorCode.USAGE, `${file}: expected a YAML mapping`, {where: {file}})
  return faultConfigFrom(obj, file)
}

/** FaultConfig → the YAML object form (for lab.json and docs). */
export function faultConfigToObject(f: FaultConfig): Record<string, unknown> {
  return {
    seed: f.seed,
    task_failure_rate: f.taskFailureRate,
    http_500_rate: f.http500Rate,
    latency_ms: f.latencyMs,
    lock_contention_rate: f.lockContentionRate,
    dead_nodes: f.deadNodes,
    unhealthy_vms: f.unhealthyVms,
    unhealthy_rate: f.unhealthyRate,
  }
}

// xmur3 string hash + mulberry32: tiny, well-known seeded PRNG pair (public domain). A dependency
// (seedrandom) would bring a global Math.random patcher we do not want; 15 lines are enough here.
export function xmur3(str: string): number {
  let h = 1779033703 ^ str.length
  for (let i = 0; i < str.length; i++) {
    h = Math.imul(h ^ str.charCodeAt(i), 3432918353)
    h = (h << 13) | (h >>> 19)
  }
  h = Math.imul(h ^ (h >>> 16), 2246822507)
  h = Math.imul(h ^ (h >>> 13), 3266489909)
  return (h ^= h >>> 16) >>> 0
}

export function mulberry32(a: number): number {
  a = (a + 0x6d2b79f5) | 0
  let t = Math.imul(a ^ (a >>> 15), 1 | a)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/** Seeded, replayable fault decisions. */
export class Faults {
  readonly #counters = new Map<string, number>()
  constructor(readonly config: FaultConfig = NO_FAULTS) {}

  /** A uniform number in [0,1) for the n-th question about (kind, key). */
  draw(kind: string, key: string): number {
    const k = `${kind}:${key}`
    const n = this.#counters.get(k) ?? 0
    this.#counters.set(k, n + 1)
    return mulberry32(xmur3(`${this.config.seed}:${k}:${n}`))
  }

  /** Does this async task (type on VM/key) fail? */
  taskFails(type: string, key: string): boolean {
    return this.config.taskFailureRate > 0 && this.draw('task', `${type}:${key}`) < this.config.taskFailureRate
  }

  /** Is this request answered with an injected 500? */
  http500(node: string, method: string, path: string): boolean {
    return this.config.http500Rate > 0 && this.draw('http500', `${node}:${method}:${path}`) < this.config.http500Rate
  }

  /** Latency to add to a request, ms. */
  latency(node: string, path: string): number {
    const {min, max} = this.config.latencyMs
    if (max <= 0) return 0
    return Math.round(min + (max - min) * this.draw('latency', `${node}:${path}`))
  }

  /** Does this config write hit lock contention? */
  lockContention(node: string, vmid: number): boolean {
    return this.config.lockContentionRate > 0 && this.draw('lock', `${node}:${vmid}`) < this.config.lockContentionRate
  }

  nodeDead(node: string): boolean {
    return this.config.deadNodes.includes(node)
  }

  /** Is this guest's PGI never healthy? Stable per VM (no counter): the same VMs every run. */
  guestUnhealthy(node: string, vmid: number): boolean {
    if (this.config.unhealthyVms.includes(`${node}/${vmid}`)) return true
    if (this.config.unhealthyRate <= 0) return false
    return mulberry32(xmur3(`${this.config.seed}:unhealthy:${node}/${vmid}`)) < this.config.unhealthyRate
  }
}
