/**
 * Is `now` inside an establishment's maintenance window (days, start–end local time in its time
 * zone; a window may cross midnight, then it belongs to the day it starts)? Uses Intl (built into
 * Node) for the time zone: no date library needed for "weekday and HH:MM in zone Z".
 */
import type {MaintenanceWindow, Weekday} from '../inventory/types.js'

const DAYS: Weekday[] = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat']

function localParts(now: Date, timezone: string): {day: Weekday; minutes: number} {
  const f = new Intl.DateTimeFormat('en-GB', {timeZone: timezone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'})
  const parts = Object.fromEntries(f.formatToParts(now).map((p) => [p.type, p.value]))
  const day = String(parts.weekday).toLowerCase().slice(0, 3) as Weekday
  return {day, minutes: Number(parts.hour) * 60 + Number(parts.minute)}
}

function toMinutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number)
  return h! * 60 + m!
}

export function inWindow(w: MaintenanceWindow | undefined, now: Date): boolean {
  if (!w) return true
  const {day, minutes} = localParts(now, w.timezone)
  const start = toMinutes(w.start)
  const end = toMinutes(w.end)
  if (start < end) return w.days.includes(day) && minutes >= start && minutes < end
  // crosses midnight: from `start` on a listed day, or before `end` the day after a listed day
  const yesterday = DAYS[(DAYS.indexOf(day) + 6) % 7]!
  return (w.days.includes(day) && minutes >= start) || (w.days.includes(yesterday) && minutes < end)
}

export function describeWindow(w: MaintenanceWindow | undefined): string {
  return w ? `${w.days.join(',')} ${w.start}-${w.end} ${w.timezone}` : 'any time'
}
