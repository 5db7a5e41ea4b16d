import type {ProblemList, SourceFile, YamlPath} from './source.js'
import {quote} from './redact.js'
import type {DeclaredDatabase} from './types.js'
import {int, isRecord, str, type Item} from './rule-values.js'

/** The inventory's rules about an establishment's declared databases (`databases:`), and their defaults. */

/** The database every establishment has unless the inventory says otherwise. */
export const DEFAULT_DATABASE = 'pgi'
/** The names the server's database engine keeps for itself (pgidb.py RESERVED_PREFIXES, check_name). */
export const RESERVED_DATABASE_PREFIXES = ['pgi_tmp_', 'pgi_template_', 'pgi_verify_'] as const
export const RESERVED_DATABASE_NAMES = ['postgres', 'template0', 'template1'] as const
/** pgi-db's rule for a company name: 1 to 120 printable characters (check_company_name). */
const MAX_COMPANY = 120

/** A name close to `name` that the engine accepts (lower case, _ for anything else), for suggestions. */
function databaseNameFor(name: string): string {
  let n = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .replace(/^_+|_+$/g, '')
  if (!/^[a-z]/.test(n)) n = `db_${n}`
  return n.slice(0, 63)
}

/**
 * The rules of a `databases:` list that JSON Schema cannot say: names the engine keeps for itself,
 * the same name twice. (The name's form is the schema's pattern; its message is given here too,
 * with a name that would do, since the engine would refuse the database at deploy time.)
 */
export function checkDatabaseNames(src: SourceFile, path: YamlPath, v: unknown, P: ProblemList): void {
  if (!Array.isArray(v)) return
  const seen = new Map<string, number>()
  v.forEach((d, i) => {
    if (!isRecord(d) || typeof d.name !== 'string') return
    const name = d.name
    const at: YamlPath = [...path, i, 'name']
    if (!/^[a-z][a-z0-9_]{0,62}$/.test(name)) {
      P.add(src, at, 'database-name', `database name ${quote(name, at)} is not valid: 1 to 63 lower-case letters, digits and _, starting with a letter`, {
        suggestion: `e.g. name: ${databaseNameFor(name) || DEFAULT_DATABASE}: a PostgreSQL name that needs no quoting, usable in Tryton's URLs`,
      })
      return
    }
    const prefix = RESERVED_DATABASE_PREFIXES.find((p) => name.startsWith(p))
    if (prefix || (RESERVED_DATABASE_NAMES as readonly string[]).includes(name)) {
      P.add(src, at, 'database-name', `database name "${name}" is reserved: ${prefix ? `names starting with ${prefix} are the server's own` : `${name} is PostgreSQL's own`}`, {
        suggestion: `choose another name, e.g. ${prefix ? name.slice(prefix.length) || DEFAULT_DATABASE : `${name}_pgi`}`,
      })
      return
    }
    const prev = seen.get(name)
    if (prev !== undefined) {
      const {line, column} = src.pos([...path, prev, 'name'])
      P.add(src, at, 'duplicate-database', `database "${name}" is declared twice (first at ${src.file}:${line}:${column})`, {
        suggestion: 'declare each database once; remove or rename one of them',
      })
    } else seen.set(name, i)
  })
}

/** The declared databases of one establishment, defaults applied (the list was checked by checkDatabaseNames). */
export function resolveDatabases(list: Item | undefined, estName: string, est: {src: SourceFile; path: YamlPath}, P: ProblemList): DeclaredDatabase[] {
  const company = (own: unknown): string => {
    const c = (str(own) ?? estName).trim()
    if (str(own) === undefined && [...c].length > MAX_COMPANY) {
      P.add(est.src, [...est.path, 'name'], 'database-company', `the establishment's name is longer than ${MAX_COMPANY} characters: it cannot name the company of its databases`, {
        suggestion: 'give each database a shorter company: databases: [{name: pgi, company: "…"}]',
      })
    }
    return c
  }
  if (!list) return [{name: DEFAULT_DATABASE, company: company(undefined), chart: 'fr', currency: 'EUR', source: est.src.ref(est.path)}]
  const out: DeclaredDatabase[] = []
  const names = new Set<string>()
  ;(list.value as unknown[]).forEach((d, i) => {
    if (!isRecord(d) || typeof d.name !== 'string' || names.has(d.name)) return
    names.add(d.name)
    const fy = int(d.fiscal_year)
    out.push({
      name: d.name,
      company: company(d.company),
      ...(fy !== undefined ? {fiscalYear: fy} : {}),
      chart: 'fr',
      currency: 'EUR',
      source: list.src.ref([...list.path, i], 'value'),
    })
  })
  return out
}
