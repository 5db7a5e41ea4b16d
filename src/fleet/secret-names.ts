/**
 * The per-establishment secrets and where they live in the secret store:
 * `establishments/<UAI>/{sql-admin,tryton-admin,ami-password}`, plus, while a rotation is in
 * flight, `establishments/<UAI>/pending/<name>`.
 *
 * In a module of their own (re-exported by secrets.ts) so that `pgi credentials rotate` can list
 * them in its --only flag without loading the secret store and age with every command.
 */
export const ESTABLISHMENT_SECRETS = ['sql-admin', 'tryton-admin', 'ami-password'] as const
export type EstablishmentSecretName = (typeof ESTABLISHMENT_SECRETS)[number]
