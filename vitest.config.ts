import {defineConfig} from 'vitest/config'

/**
 * Three kinds of tests:
 * - `unit` (test/unit): the engine's modules, the bundled CLI on simulated labs, and the image's
 *   tools run natively against throwaway PostgreSQL clusters; files in parallel;
 * - `cli` (test/e2e without VMs: the CLI, credentials, CI pipeline and lab tests on simulated labs,
 *   age, OpenSSH); one file at a time, each starts labs and many CLI processes;
 * - `e2e` (test/e2e with real QEMU VMs); one file at a time, they share the machine's cores with
 *   their emulated guests.
 * scripts/test.sh runs `e2e` beside `unit` + `cli` (two vitest processes): most of the VM tests'
 * time is a guest booting or working, and the unit suites' time is PostgreSQL and trytond child
 * processes, so on two cores the two halves overlap instead of adding up. `npx vitest run` alone
 * runs all three, the sequential ones one after another; developers can run `--project unit`.
 */
const CLI_E2E = ['test/e2e/cli/**/*.test.ts', 'test/e2e/credentials/**/*.test.ts', 'test/e2e/ci/**/*.test.ts', 'test/e2e/lab/lab-cli.test.ts']

export default defineConfig({
  test: {
    projects: [
      // files in parallel on cores - 1 workers (vitest's default; one on two cores, the other core
      // going to the VM tests beside them). A test that runs the bundled CLI a few times takes 3 to
      // 5 s per run on two busy cores: 60 s per test still stops a hang early
      {test: {name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 60_000}},
      {
        test: {
          name: 'cli',
          include: CLI_E2E,
          testTimeout: 30 * 60_000,
          hookTimeout: 30 * 60_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          exclude: CLI_E2E,
          testTimeout: 30 * 60_000,
          hookTimeout: 30 * 60_000,
          fileParallelism: false,
        },
      },
    ],
  },
})
