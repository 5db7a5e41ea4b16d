/**
 * The engine's rules for names (pgidb.py NAME_RE, PREFIX_RE, LOGIN_RE, RESERVED_PREFIXES), checked
 * on this machine when the command line is parsed, so a bad name is refused before any hypervisor
 * is asked. Small on purpose: the CLI's flag parsers load it with every command.
 */
/** Database names: a PostgreSQL identifier that needs no quoting. */
export const DB_NAME_RE = /^[a-z][a-z0-9_]{0,62}$/
export const DB_PREFIX_RE = /^[a-z][a-z0-9_]{0,39}$/
export const LOGIN_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/
export const RESERVED_PREFIXES = ['pgi_tmp_', 'pgi_template_', 'pgi_verify_']
const RESERVED_NAMES = ['postgres', 'template0', 'template1']

/** Why `name` is not a valid database name, or undefined. */
export function dbNameProblem(name: string): string | undefined {
  if (!DB_NAME_RE.test(name)) return `"${name}" is not a valid database name: 1 to 63 characters among lowercase letters, digits and _, starting with a letter`
  if (RESERVED_PREFIXES.some((p) => name.startsWith(p)) || RESERVED_NAMES.includes(name)) return `"${name}" is reserved (names starting with ${RESERVED_PREFIXES.join(', ')} are the engine's own)`
  return undefined
}


/** The console's e-mail rule (console/accounts.py EMAIL_RE), checked here before the VM is asked. */
export const TEACHER_EMAIL_RE = /^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$/

/** Why `email` is not an address the console accepts, or undefined. */
export function teacherEmailProblem(email: string): string | undefined {
  const e = email.trim()
  if (!TEACHER_EMAIL_RE.test(e) || e.includes('..')) return `"${email}" is not an e-mail address (e.g. marie.curie@ac-aix-marseille.fr)`
  return undefined
}

/** Why `name` is not a teacher's name the console accepts (1 to 120 printable characters), or undefined. */
export function teacherNameProblem(name: string): string | undefined {
  const n = name.trim()
  // the console refuses Unicode "C" categories (control, format, unassigned, private use)
  if (n.length === 0 || n.length > 120 || /\p{C}/u.test(n)) return `the name must be 1 to 120 printable characters (got ${JSON.stringify(name.slice(0, 40))}${name.length > 40 ? '…' : ''})`
  return undefined
}
