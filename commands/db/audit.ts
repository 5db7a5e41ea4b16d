import {BaseCommand} from '../../src/cli/base-command.js'
import {auditActorFlag, auditLimitFlag, dbFleetFlags, sinceFlag, uaiArg, withDbContext} from '../../src/cli/db.js'
import type {AuditEntry} from '../../src/db/console.js'

export default class DbAudit extends BaseCommand<typeof DbAudit> {
  static override summary = "Print the teachers' console's audit log: who did what, on what, when, with what result."
  static override description = `Every action in the establishment's console, newest first: logins (failed ones too), account changes (from the console's AMI page or \`pgi db teacher …\`, actor cli:root), every job queued and its end, every refusal (another teacher's class, a form without its token, too many login attempts). Results: ok, en file (queued), échec (failed), refusé (refused). Read in the VM through its guest agent (pgi-console audit).`
  static override examples = [
    {description: 'The last day', command: '<%= config.bin %> <%= command.id %> 0130040Y --since 24h'},
    {description: 'Since the start of the school year, one teacher, as JSON', command: '<%= config.bin %> <%= command.id %> 0130040Y --since 2026-09-01 --actor marie.curie@ac-aix-marseille.fr --json'},
  ]

  static override args = {uai: uaiArg}
  static override flags = {...dbFleetFlags, since: sinceFlag, limit: auditLimitFlag, actor: auditActorFlag}

  async run(): Promise<{uai: string; since: string | null; entries: AuditEntry[]}> {
    const {readAudit} = await import('../../src/db/console.js')
    const f = this.flags
    const r = await withDbContext(f, this.io, (ctx) => readAudit(ctx, this.args.uai, {limit: f.limit, ...(f.since ? {since: f.since} : {}), ...(f.actor ? {actor: f.actor} : {})}))
    this.table(
      ['when (UTC)', 'who', 'action', 'on', 'result', 'detail', 'from'],
      r.entries.map((e) => [e.at, e.actor, e.action, e.target ?? '', e.result, (e.detail ?? '').slice(0, 80), e.ip ?? '']),
    )
    this.log(`${r.uai}: ${r.entries.length} entr${r.entries.length === 1 ? 'y' : 'ies'}${r.since ? ` since ${r.since}` : ''}${r.entries.length === f.limit ? ` (the newest ${f.limit}: --limit for more)` : ''}`)
    return r
  }
}
