import {BaseCommand, inventoryFlag} from '../../src/cli/base-command.js'
import {reportFlag} from '../../src/cli/flags.js'
import {ExitCode} from '../../src/exit-codes.js'
import {validationSuite} from '../../src/report/suites.js'
import type {ValidationReport} from '../../src/inventory/report.js'

export default class InventoryValidate extends BaseCommand<typeof InventoryValidate> {
  static override summary = 'Check the inventory and list every problem with file:line:column.'
  static override description = `Reads the inventory (one YAML file, or every *.yaml/*.yml under a folder), checks it against inventory/schema.json and pgi's own rules (UAI check letters, duplicate UAI/vmid/address, subnets and gateways, hypervisor and node references, secret references, TLS pinning, age keys, groups, rings, maintenance windows) and lists every problem found in one run:

  FILE:LINE:COLUMN  RULE  MESSAGE  (SUGGESTION)

Exits 0 when there is no error (warnings are listed), 3 when there is at least one. Nothing is contacted: this only reads files. The rules are listed in docs/inventory.md.`

  static override examples = [
    {description: 'Check the inventory in ./inventory (or $PGI_INVENTORY):', command: '<%= config.bin %> <%= command.id %>'},
    {description: 'Check the example inventory shipped with pgi:', command: '<%= config.bin %> <%= command.id %> -i inventory/example'},
    {description: 'Check one file, and get the problems as JSON (for CI or an editor):', command: '<%= config.bin %> <%= command.id %> -i inventory/sites.yaml --json'},
  ]

  static override flags = {inventory: inventoryFlag, report: reportFlag}

  public async run(): Promise<ValidationReport> {
    const [{validateInventory}, {formatProblem, InventoryInvalidError}] = await Promise.all([
      import('../../src/inventory/report.js'),
      import('../../src/inventory/errors.js'),
    ])
    const report = await validateInventory(this.flags.inventory)
    if (!this.jsonEnabled()) {
      for (const p of report.problems) this.log(formatProblem(p))
      const counts = `${report.files.length} file${report.files.length === 1 ? '' : 's'}, ${report.hypervisors} hypervisor${report.hypervisors === 1 ? '' : 's'}, ${report.establishments} establishment${report.establishments === 1 ? '' : 's'}, ${report.groups} group${report.groups === 1 ? '' : 's'}`
      const verdict = report.valid ? 'valid' : `${report.errors} error${report.errors === 1 ? '' : 's'}`
      const warn = report.warnings > 0 ? `, ${report.warnings} warning${report.warnings === 1 ? '' : 's'}` : ''
      this.log(`${report.path}: ${counts}: ${verdict}${warn}`)
    }
    await this.writeReports(validationSuite(this.commandLine(), report, this.startedAt, report.valid ? ExitCode.OK : ExitCode.INVALID_INPUT))
    if (!report.valid) throw new InventoryInvalidError(report.path, report.problems, {listed: !this.jsonEnabled()})
    return report
  }
}
