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

