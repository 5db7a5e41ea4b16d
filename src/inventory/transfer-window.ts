/**
 * The transfer window of a staging (`pgi rollout stage --transfer-window`, inventory
 * `delivery.transfer_window`, docs/delivery.md): when image bytes may cross the schools' links.
 *
 * Syntax: clauses separated by commas, each `[DAYS] [HH:MM-HH:MM]` with at least one of the two:
 *   `22:00-06:00`                     every night (a range may cross midnight: it belongs to the day it starts)
 *   `mon-fri 19:00-07:00,sat-sun`     weekday evenings and nights, whole weekends
 *   `wed 12:00-14:00,sat`             DAYS: one day or a range `mon-fri` (a range may wrap: `fri-mon`)
 * Times are local to the window's time zone (the Région's, Europe/Paris unless the inventory's
 * delivery.timezone says otherwise); `24:00` may end a range; `always` is the whole week.
 *
 * Written here rather than taken from npm: `opening_hours` (OpenStreetMap's syntax) evaluates in
 * the process's own time zone only and brings dependencies, and cron libraries describe instants,
 * not intervals. What is needed — "is it open at this instant in zone Z, and when does it open
 * next" — is the weekday and HH:MM in a zone, which Intl (built into Node) gives, as
 * src/rollout/window.ts does for the maintenance window.
 */
import {UsageError} from '../errors.js'

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const
const WEEK = 7 * 1440

export interface TransferWindow {
  /** The text it was parsed from (shown back to people). */
  spec: string
  timezone: string
  /** Open intervals in minutes of the local week (Monday 00:00 = 0), [start, end), end ≤ start + WEEK. */
  intervals: [number, number][]
}

export const DEFAULT_TIMEZONE = 'Europe/Paris'

function bad(spec: string, place: string, why: string, flag: string): UsageError {
  return new UsageError(`--${flag} "${spec}": ${place}: ${why}`, {
    where: {flag},
    suggestions: ['Write clauses separated by commas, each [DAYS] [HH:MM-HH:MM]: e.g. "22:00-06:00" or "mon-fri 19:00-07:00,sat-sun" (docs/delivery.md).'],
  })
}

function parseTime(t: string, spec: string, flag: string, allow24: boolean): number {
  const m = /^([01]?\d|2[0-4]):([0-5]\d)$/.exec(t)
  const v = m ? Number(m[1]) * 60 + Number(m[2]) : NaN
  if (!m || v > 1440 || (v === 1440 && !allow24)) throw bad(spec, `"${t}"`, 'not a time of day HH:MM (00:00 to 23:59; 24:00 only to end a range)', flag)
  return v
}

function parseDays(d: string, spec: string, flag: string): number[] {
  const m = /^([a-z]{3})(?:-([a-z]{3}))?$/.exec(d)
  const a = m ? DAYS.indexOf(m[1] as (typeof DAYS)[number]) : -1
  const b = m?.[2] ? DAYS.indexOf(m[2] as (typeof DAYS)[number]) : a
  if (a < 0 || b < 0) throw bad(spec, `"${d}"`, `not a day or a day range (${DAYS.join(', ')}; e.g. mon-fri)`, flag)
  const out: number[] = []
  for (let i = a; ; i = (i + 1) % 7) {
    out.push(i)
    if (i === b) break
  }
  return out
}

/** Parses a window; a bad one is a usage error (exit 2) naming the clause and the flag or key. */
export function parseTransferWindow(spec: string, opts: {timezone?: string; flag?: string} = {}): TransferWindow {
  const flag = opts.flag ?? 'transfer-window'
  const timezone = opts.timezone ?? DEFAULT_TIMEZONE
  try {
    new Intl.DateTimeFormat('en-GB', {timeZone: timezone})
  } catch {
    throw new UsageError(`time zone "${timezone}" of the transfer window is not an IANA time zone (e.g. Europe/Paris)`, {where: {flag}})
  }
  const text = spec.trim().toLowerCase()
  if (text === '') throw bad(spec, 'empty', 'no clause', flag)
  if (text === 'always') return {spec: 'always', timezone, intervals: [[0, WEEK]]}
  const intervals: [number, number][] = []
  text.split(',').forEach((raw, n) => {
    const clause = raw.trim()
    const parts = clause.split(/\s+/).filter(Boolean)
    const where = `clause ${n + 1} "${clause}"`
    if (parts.length === 0 || parts.length > 2) throw bad(spec, where, 'expected [DAYS] [HH:MM-HH:MM]', flag)
    let days = [0, 1, 2, 3, 4, 5, 6]
    let range: [number, number] = [0, 1440]
    for (const p of parts) {
      if (/^\d/.test(p)) {
        if (parts.length === 2 && p === parts[0]) throw bad(spec, where, 'the days come before the times', flag)
        const t = /^([^-]+)-([^-]+)$/.exec(p)
        if (!t) throw bad(spec, where, `"${p}" is not a time range HH:MM-HH:MM`, flag)
        const start = parseTime(t[1]!, spec, flag, false)
        const end = parseTime(t[2]!, spec, flag, true)
        if (start === end) throw bad(spec, where, `"${p}" is empty (start = end); write the days alone for whole days`, flag)
        range = [start, end < start ? end + 1440 : end]
      } else {
        if (parts.length === 2 && p === parts[1]) throw bad(spec, where, 'the days come before the times', flag)
        days = parseDays(p, spec, flag)
      }
    }
    for (const d of days) intervals.push([d * 1440 + range[0], d * 1440 + range[1]])
  })
  return {spec: spec.trim(), timezone, intervals}
}

/** Minutes of the local week (Monday 00:00 = 0) at `now` in `timezone`. */
function weekMinute(now: Date, timezone: string): number {
  const f = new Intl.DateTimeFormat('en-GB', {timeZone: timezone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'})
  const p = Object.fromEntries(f.formatToParts(now).map((x) => [x.type, x.value]))
  const day = DAYS.indexOf(String(p.weekday).toLowerCase().slice(0, 3) as (typeof DAYS)[number])
  return day * 1440 + Number(p.hour) * 60 + Number(p.minute)
}

export function isOpen(w: TransferWindow | undefined, now: Date): boolean {
  if (!w) return true
  const m = weekMinute(now, w.timezone)
  // an interval may run past the week's end (Sunday night into Monday): also test m + WEEK
  return w.intervals.some(([s, e]) => (m >= s && m < e) || (m + WEEK >= s && m + WEEK < e))
}

/**
 * The next instant the window opens (`now` itself when open), to the minute; undefined for a
 * window with no interval. Counted in local minutes, then checked against the clock minute by
 * minute around the candidate, so a daylight-saving change between now and then does not shift it.
 */
export function nextOpening(w: TransferWindow | undefined, now: Date): Date | undefined {
  if (!w || isOpen(w, now)) return now
  if (w.intervals.length === 0) return undefined
  const m = weekMinute(now, w.timezone)
  let ahead = Infinity
  for (const [s] of w.intervals) ahead = Math.min(ahead, (((s - m) % WEEK) + WEEK) % WEEK)
  const base = Math.floor(now.getTime() / 60_000) * 60_000
  let t = new Date(base + ahead * 60_000)
  // a DST change in between: up to two hours off, found by stepping minute by minute
  for (let i = 0; i < 120 && !isOpen(w, t); i++) t = new Date(t.getTime() + 60_000)
  for (let i = 0; i < 120 && isOpen(w, new Date(t.getTime() - 60_000)) && t.getTime() - 60_000 > now.getTime(); i++) t = new Date(t.getTime() - 60_000)
  return t
}

/** The instant the open window closes next (undefined when closed now, or open all week). */
export function nextClosing(w: TransferWindow | undefined, now: Date): Date | undefined {
  if (!w || !isOpen(w, now)) return undefined
  const m = weekMinute(now, w.timezone)
  // follow the intervals that touch or overlap (sat then sun, a night into the morning), round the week
  let pos = m
  let ahead = 0
  for (;;) {
    const reach = w.intervals.map(([s, e]) => (pos >= s && pos < e ? e - pos : pos + WEEK >= s && pos + WEEK < e ? e - pos - WEEK : 0)).reduce((x, y) => Math.max(x, y), 0)
    if (reach === 0) break
    ahead += reach
    pos = (pos + reach) % WEEK
    if (ahead >= WEEK) return undefined
  }
  const base = Math.floor(now.getTime() / 60_000) * 60_000
  let t = new Date(base + ahead * 60_000)
  // a DST change in between: stepped to the clock's first closed minute
  for (let i = 0; i < 120 && isOpen(w, t); i++) t = new Date(t.getTime() + 60_000)
  for (let i = 0; i < 120 && !isOpen(w, new Date(t.getTime() - 60_000)) && t.getTime() - 60_000 > now.getTime(); i++) t = new Date(t.getTime() - 60_000)
  return t
}

/** "2026-12-07 19:00 Europe/Paris": an instant as the window's zone says it. */
export function localTime(d: Date, timezone: string): string {
  const f = new Intl.DateTimeFormat('sv-SE', {timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'})
  return `${f.format(d)} ${timezone}`
}
