/**
 * The student list of `pgi db class`, read and checked on this machine before anything is sent to
 * the VM, with the rules of the engine's own reader (pgidb.py read_students, docs/databases.md
 * "Classes: the student list"): UTF-8 (with or without BOM) or Windows-1252; `;`, `,` or tab; a
 * header naming the columns (nom, prénom, classe/division in any order, accents and case ignored;
 * or one "élève" column "NOM Prénom"), or no header and the columns in that order; blank lines
 * skipped; every bad line reported with its number; at most 500 students.
 *
 * The CSV reading is written here (a few lines, no CSV package among pgi's dependencies) to follow
 * Python's csv module as the engine uses it: quoted fields, doubled quotes, line numbers counted
 * in physical lines, so a line number given here is the one the engine would give.
 */
import {readFile, stat} from 'node:fs/promises'

import {ErrorCode, UserError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'

export const MAX_STUDENTS = 500
/** The engine reads at most 4 MiB of a student list. */
export const MAX_CSV_BYTES = 4 * 1024 * 1024

export interface Student {
  line: number
  lastName: string
  firstName: string
  class: string | null
}

export interface StudentRowError {
  line: number
  message: string
}

const HEADER_NAMES: Record<'last' | 'first' | 'class' | 'full', string[]> = {
  last: ['nom', 'nom de famille', 'nom eleve', 'nom de l eleve', 'name', 'last name', 'lastname', 'surname', 'family name'],
  first: ['prenom', 'prenoms', 'prenom eleve', 'first name', 'firstname', 'given name'],
  class: ['classe', 'division', 'class', 'groupe', 'group', 'code classe', 'structure', 'classes'],
  full: ['eleve', 'eleves', 'nom prenom', 'nom et prenom', 'student', 'nom complet'],
}

/** Lowercase ASCII (accents removed) with runs of other characters as one space (pgidb._fold). */
export function fold(s: string): string {
  return s
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, ' ')
    .trim()
}

/** pgidb._slug */
export function slug(s: string, sep = '.'): string {
  const esc = sep.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  return fold(s).replace(/[^a-z0-9]+/g, sep).replace(new RegExp(`^(?:${esc})+|(?:${esc})+$`, 'g'), '')
}

function decode(data: Uint8Array): string {
  let d = data
  if (d.length >= 3 && d[0] === 0xef && d[1] === 0xbb && d[2] === 0xbf) d = d.subarray(3)
  try {
    return new TextDecoder('utf-8', {fatal: true}).decode(d)
  } catch {
    return new TextDecoder('windows-1252').decode(d)
  }
}

/** Python's str.splitlines() separators that matter for a CSV's first line. */
const LINE_BREAK = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/

/**
 * Records of `text` with the physical line each ends on (csv.reader's line_num): fields split on
 * `delim`, double quotes around a field (a doubled quote inside is one quote), line breaks inside
 * quotes kept.
 */
function* records(text: string, delim: string): Generator<{cells: string[]; line: number}> {
  let line = 0
  let i = 0
  const n = text.length
  while (i < n) {
    const cells: string[] = []
    let cell = ''
    let quoted = false
    let started = false
    line++
    for (;;) {
      if (i >= n) {
        cells.push(cell)
        break
      }
      const c = text[i]!
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            cell += '"'
            i += 2
          } else {
            quoted = false
            i++
          }
        } else {
          if (c === '\n') line++
          else if (c === '\r' && text[i + 1] !== '\n') line++
          cell += c
          i++
        }
        continue
      }
      if (c === '"' && !started) {
        quoted = true
        started = true
        i++
      } else if (c === delim) {
        cells.push(cell)
        cell = ''
        started = false
        i++
      } else if (c === '\r' || c === '\n') {
        cells.push(cell)
        i += c === '\r' && text[i + 1] === '\n' ? 2 : 1
        break
      } else {
        cell += c
        started = true
        i++
      }
    }
    yield {cells, line}
  }
}

/** The students of a CSV and every bad line (pgidb.read_students). */
export function readStudents(data: Uint8Array | string): {students: Student[]; errors: StudentRowError[]} {
  const text = typeof data === 'string' ? data : decode(data)
  const errors: StudentRowError[] = []
  const first = text.split(LINE_BREAK).find((l) => l.trim() !== '') ?? ''
  if (!first) return {students: [], errors: [{line: 1, message: 'the file is empty'}]}
  const count = (d: string) => first.split(d).length - 1
  let delim = [';', ',', '\t'].reduce((best, d) => (count(d) > count(best) ? d : best), ';')
  if (count(delim) === 0) delim = ';'
  const students: Student[] = []
  let cols: Partial<Record<keyof typeof HEADER_NAMES, number>> | undefined
  for (const {cells: raw, line} of records(text, delim)) {
    const cells = raw.map((c) => c.trim())
    if (!cells.some((c) => c !== '')) continue
    if (!cols) {
      const mapping: Partial<Record<keyof typeof HEADER_NAMES, number>> = {}
      cells.map(fold).forEach((f, i) => {
        for (const [key, names] of Object.entries(HEADER_NAMES) as [keyof typeof HEADER_NAMES, string[]][]) {
          if (names.includes(f) && mapping[key] === undefined) mapping[key] = i
        }
      })
      if ((mapping.last !== undefined && mapping.first !== undefined) || mapping.full !== undefined) {
        cols = mapping
        continue
      }
      cols = {last: 0, first: 1, class: 2}
    }
    const c = cols
    const cell = (k: keyof typeof HEADER_NAMES) => {
      const i = c[k]
      return i !== undefined && i < cells.length ? cells[i]! : ''
    }
    let last: string
    let firstName: string
    if (c.full !== undefined && !(c.last !== undefined && c.first !== undefined)) {
      const full = cell('full')
      const words = full.split(/\s+/).filter(Boolean)
      const isLast = (w: string) => w.toUpperCase() === w && /\p{L}/u.test(w)
      last = words.filter(isLast).join(' ')
      firstName = words.filter((w) => !isLast(w)).join(' ')
      if (!last || !firstName) {
        errors.push({line, message: `'${full}': expected "NOM Prénom" (family name in capitals)`})
        continue
      }
    } else {
      last = cell('last')
      firstName = cell('first')
    }
    const klass = cell('class')
    const problems: string[] = []
    for (const [label, value] of [
      ['nom', last],
      ['prénom', firstName],
    ] as const) {
      if (!value) problems.push(`${label} manquant`)
      else if ([...value].length > 80) problems.push(`${label} trop long (${[...value].length} caractères, 80 au plus)`)
      else if (/[\p{C}\ufffd]/u.test(value)) problems.push(`${label} contient des caractères illisibles`)
      else if (!fold(value)) problems.push(`${label} sans lettre ni chiffre`)
    }
    if ([...klass].length > 40) problems.push('classe trop longue')
    if (problems.length > 0) {
      errors.push({line, message: problems.join(', ')})
      continue
    }
    students.push({line, lastName: last, firstName, class: klass || null})
  }
  if (students.length === 0 && errors.length === 0) errors.push({line: 1, message: 'no student in the file'})
  if (students.length > MAX_STUDENTS) errors.push({line: students[MAX_STUDENTS]!.line, message: `more than ${MAX_STUDENTS} students`})
  return {students, errors}
}

/**
 * Reads and checks the student list `file`: its bytes (sent to the VM as they are, so the
 * engine's line numbers are the file's) and its students, or PGI_DB_INVALID (exit 3) naming the
 * file and every bad line.
 */
export async function loadStudentList(file: string): Promise<{bytes: Buffer; students: Student[]}> {
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new UserError(ErrorCode.DB_INVALID, `cannot read the student list ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`, {
      exitCode: ExitCode.INVALID_INPUT,
      where: {file},
      suggestions: ['Give the CSV exported from the school software (SIECLE, Pronote) or a spreadsheet: nom;prénom;classe.'],
    })
  })
  if (!st.isFile()) throw new UserError(ErrorCode.DB_INVALID, `the student list ${file} is not a file`, {exitCode: ExitCode.INVALID_INPUT, where: {file}})
  if (st.size > MAX_CSV_BYTES) {
    throw new UserError(ErrorCode.DB_INVALID, `the student list ${file} is ${st.size} bytes; a class list is at most ${MAX_CSV_BYTES} bytes`, {exitCode: ExitCode.INVALID_INPUT, where: {file}})
  }
  const bytes = await readFile(file)
  const {students, errors} = readStudents(bytes)
  if (errors.length > 0) {
    const first = errors[0]!
    throw new UserError(
      ErrorCode.DB_INVALID,
      `the student list ${file} has ${errors.length} bad line${errors.length > 1 ? 's' : ''} (nothing was created): ${errors
        .slice(0, 10)
        .map((e) => `line ${e.line}: ${e.message}`)
        .join('; ')}${errors.length > 10 ? '; …' : ''}`,
      {
        exitCode: ExitCode.INVALID_INPUT,
        where: {file, line: first.line},
        details: {rows: errors},
        suggestions: ['Correct every line named (each student needs a family name and a first name), then run the same command again.'],
      },
    )
  }
  return {bytes, students}
}
