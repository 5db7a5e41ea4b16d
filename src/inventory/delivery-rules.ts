import {asPgiError} from '../errors.js'
import {parseBandwidthKib} from './offsite-rules.js'
import {isRecord, str, type Item} from './rule-values.js'
import type {ProblemList} from './source.js'
import {DEFAULT_TIMEZONE, parseTransferWindow} from './transfer-window.js'
import type {DeliverySettings} from './types.js'

/**
 * The inventory's `delivery:` section (the chunk store of published image versions and the
 * pacing of stagings, docs/delivery.md), resolved with its defaults. The schema checks the URLs'
 * and the cap's forms; the transfer window's syntax and time zone are checked here, at their place.
 */
export function checkDelivery(item: Item | undefined, P: ProblemList): DeliverySettings | undefined {
  if (!item || !isRecord(item.value)) return undefined
  const v = item.value
  const storeUrl = str(v.store_url)
  const timezone = str(v.timezone) ?? DEFAULT_TIMEZONE
  const totalBwlimitKiB = parseBandwidthKib(v.total_bwlimit)
  let transferWindow: DeliverySettings['transferWindow']
  const spec = str(v.transfer_window)
  if (spec !== undefined) {
    try {
      transferWindow = parseTransferWindow(spec, {timezone, flag: 'transfer-window'})
    } catch (err) {
      const e = asPgiError(err)
      const tzBad = /time zone/.test(e.message)
      P.add(item.src, [...item.path, tzBad ? 'timezone' : 'transfer_window'], 'delivery-transfer-window', `delivery.${tzBad ? 'timezone' : 'transfer_window'}: ${e.message.replace(/^--transfer-window /, '')}`, {suggestion: e.suggestions[0]})
    }
  }
  if (storeUrl === undefined && totalBwlimitKiB === undefined && transferWindow === undefined) return undefined
  return {
    ...(storeUrl !== undefined ? {storeUrl, regionStore: str(v.region_store) ?? storeUrl} : {}),
    ...(totalBwlimitKiB !== undefined ? {totalBwlimitKiB} : {}),
    ...(transferWindow ? {transferWindow} : {}),
    timezone,
    source: item.src.ref(item.path, 'key'),
  }
}
