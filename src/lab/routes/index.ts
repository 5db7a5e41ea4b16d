import type {LabApi} from '../api.js'
import type {Handler} from '../context.js'
import {agentRoutes} from './agent.js'
import {clusterRoutes} from './cluster.js'
import {qemuRoutes} from './qemu.js'
import {snapshotRoutes} from './snapshots.js'
import {storageRoutes} from './storage.js'

/**
 * Every handler of the lab's API, by the handler ids of params.ts. The server gathers them here
 * (not LabApi itself), so that the routes import the API classes and never the other way round.
 */
export function labHandlers(api: LabApi): Record<string, Handler> {
  return {...clusterRoutes(api), ...qemuRoutes(api), ...snapshotRoutes(api), ...agentRoutes(api), ...storageRoutes(api)}
}
