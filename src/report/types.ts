/**
 * What a CI report holds, whatever the command: one suite (the command's run) of cases — one per
 * establishment, or one per inventory problem — each passed, failed, errored or skipped with its
 * reason. src/report/write.ts renders it as JUnit XML (what GitLab, GitHub and Jenkins show as
 * test results) or as Markdown (a merge-request comment, a job summary).
 */
export type CaseStatus = 'passed' | 'failed' | 'error' | 'skipped'

export interface ReportCase {
  /** The group the case belongs to in CI's view (`pgi.rollout.canary`, `pgi.inventory.sites.yaml`). */
  classname: string
  /** One line naming the subject: "0130040Y Lycée Mistral (hv-nord/pve1 VM 1001)". */
  name: string
  status: CaseStatus
  /** What happened, in one line (the outcome and its reason). */
  message: string
  /** Short kind of the result (outcome, rule, verdict): JUnit's `type` attribute. */
  kind: string
  /** Further lines (steps, suggestions) shown with the case. */
  detail?: string
  durationMs?: number
  /** Columns of the Markdown table, in order (the same keys for every case of a suite). */
  columns: Record<string, string>
}

export interface ReportSuite {
  /** `pgi rollout start 2026.12.0`, `pgi status` … */
  name: string
  /** One sentence: the verdict of the whole run (its state and counts). */
  summary: string
  timestamp: string
  durationMs: number
  /** The command's exit code (README's table). */
  exitCode: number
  /** Facts about the run (rollout id, version, inventory), as JUnit properties. */
  properties: Record<string, string>
  cases: ReportCase[]
}

export type ReportFormat = 'junit' | 'markdown'

export interface ReportTarget {
  format: ReportFormat
  file: string
}

export const REPORT_FORMATS: readonly ReportFormat[] = ['junit', 'markdown']
