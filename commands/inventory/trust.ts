import {Args, Flags} from '@oclif/core'

import {BaseCommand, inventoryFlag} from '../../src/cli/base-command.js'
import {secondsFlag} from '../../src/cli/flags.js'
import type {TrustReport} from '../../src/proxmox/trust.js'

export default class InventoryTrust extends BaseCommand<typeof InventoryTrust> {
  static override summary = "Show a hypervisor's TLS certificate and pin its fingerprint in the inventory."
  static override description = `Connects to the hypervisor's API URL, completes the TLS handshake without trusting the certificate (no request is sent), and shows its subject, issuer, validity and SHA-256 fingerprint, and whether it matches the fingerprint pinned in the inventory.

Compare the fingerprint with the one shown on the hypervisor itself (\`pvenode cert info\` on the node's console, or Datacenter → node → System → Certificates) before trusting it. With --write (after a confirmation, or --yes), the fingerprint is written into the hypervisor's YAML file in place, comments and layout kept, and the changed file:line is reported.

Exit status: 0 when the certificate matches the pin (or was written), 8 when it does not match or the hypervisor cannot be reached.`

  static override examples = [
    {description: 'Show the certificate of a hypervisor of the example inventory:', command: '<%= config.bin %> <%= command.id %> hv-marseille -i inventory/example'},
    {description: 'Pin it in the inventory after checking it on the node (asks first):', command: '<%= config.bin %> <%= command.id %> hv-marseille --write'},
    {description: 'In a script, as JSON, without a question:', command: '<%= config.bin %> <%= command.id %> hv-avignon --write --yes --json'},
  ]

  static override args = {
    hypervisor: Args.string({description: 'Name of the hypervisor in the inventory.', required: true}),
  }

  static override flags = {
    inventory: inventoryFlag,
    write: Flags.boolean({summary: "Write the certificate's fingerprint into the inventory (asks for confirmation unless --yes).", default: false}),
    timeout: secondsFlag({summary: 'Seconds to wait for the TLS handshake.', default: 10}),
  }

  public async run(): Promise<TrustReport> {
    const [{loadInventory}, {inspectHypervisor, writeFingerprint}, {ErrorCode, UnreachableError, UserError}] = await Promise.all([
      import('../../src/inventory/load.js'),
      import('../../src/proxmox/trust.js'),
      import('../../src/errors.js'),
    ])
    // Not loadValidInventory: trust must work while the pin is missing or wrong (which
    // validation reports), as long as the hypervisor itself can be read.
    const {inventory, problems} = await loadInventory(this.flags.inventory)
    const hv = inventory.hypervisors.get(this.args.hypervisor)
    if (!hv) {
      const known = [...inventory.hypervisors.keys()]
      throw new UserError(ErrorCode.UNKNOWN_HYPERVISOR, `no hypervisor "${this.args.hypervisor}" in ${inventory.path}`, {
        suggestions: [known.length > 0 ? `Known hypervisors: ${known.join(', ')}.` : 'The inventory defines no hypervisor (or it has errors: run pgi inventory validate).'],
      })
    }
    const errors = problems.filter((p) => p.severity === 'error' && p.file === hv.source.file)
    if (errors.length > 0) this.io.warn(`${hv.source.file} has ${errors.length} validation problem(s); run \`pgi inventory validate\``)

    const report = await inspectHypervisor(hv, {timeoutMs: this.flags.timeout})
    const c = report.certificate
    const cn = (o: Record<string, string | string[]>): string => Object.entries(o).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : v}`).join(', ')
    const match = report.matches === undefined ? (report.caFile ? `no pin (CA file ${report.caFile}: ${c.chainVerified ? 'verifies' : `does not verify: ${c.chainError}`})` : 'no pin') : report.matches ? 'yes' : 'NO'
    this.table(
      ['', report.hypervisor],
      [
        ['URL', report.url],
        ['Subject', cn(c.subject)],
        ['Issuer', cn(c.issuer)],
        ['Alt names', c.subjectAltName ?? ''],
        ['Valid', `${c.validFrom} → ${c.validTo}${c.expired ? ' (EXPIRED or not yet valid)' : ''}`],
        ['SHA-256', c.fingerprint256],
        ['Pinned', report.pinned ?? '(none)'],
        ['Matches', match],
      ],
    )

    if (this.flags.write) {
      if (report.matches === true) {
        this.io.info(`${hv.source.file}: the pinned fingerprint already matches; nothing to write`)
      } else {
        this.io.info(`Check this fingerprint on the hypervisor before trusting it: \`pvenode cert info\` on ${hv.name}'s console.`)
        await this.confirm(`Pin ${c.fingerprint256} for ${hv.name} in ${hv.source.file}?`)
        report.written = {...(await writeFingerprint(hv.source.file, hv.name, c.fingerprint256)), fingerprint: c.fingerprint256}
        const w = report.written
        this.io.info(`${w.file}:${w.line}:${w.column}: tls.fingerprint ${w.previous ? `changed (was ${w.previous})` : 'added'}`)
        if (!this.jsonEnabled()) this.log(`${w.file}:${w.line}: tls.fingerprint = "${c.fingerprint256}"`)
        return report
      }
    } else if (report.matches === false) {
      throw new UnreachableError(ErrorCode.TLS_MISMATCH, `the certificate of ${hv.name} does not match the pinned fingerprint:\n  expected ${report.pinned}\n  got      ${c.fingerprint256}`, {
        where: {hypervisor: hv.name},
        details: {report},
        suggestions: ['If the certificate was renewed on purpose, check it on the node (pvenode cert info) and run again with --write.'],
      })
    } else if (report.matches === undefined && !report.caFile) {
      this.io.info(`No fingerprint pinned for ${hv.name}: check it on the node (pvenode cert info), then run again with --write.`)
    }
    return report
  }
}
