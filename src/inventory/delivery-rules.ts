import {isRecord, str, type Item} from './rule-values.js'
import type {DeliverySettings} from './types.js'

/**
 * The inventory's `delivery:` section (the chunk store of published image versions,
 * docs/delivery.md), resolved with its default. The schema checks the URLs' forms; nothing else
 * is needed across sections.
 */
export function checkDelivery(item: Item | undefined): DeliverySettings | undefined {
  if (!item || !isRecord(item.value)) return undefined
  const storeUrl = str(item.value.store_url)
  if (storeUrl === undefined) return undefined
  return {storeUrl, regionStore: str(item.value.region_store) ?? storeUrl, source: item.src.ref(item.path, 'key')}
}
