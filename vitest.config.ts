import {defineConfig} from 'vitest/config'

// Two kinds of tests: fast unit tests (test/unit, run everywhere) and tests that drive real
// QEMU VMs, OpenSSH, age and a lab (test/e2e). CI runs both; developers can run `--project unit`.
export default defineConfig({
  test: {
    projects: [
      {test: {name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 20_000}},
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 30 * 60_000,
          hookTimeout: 30 * 60_000,
          fileParallelism: false,
        },
      },
    ],
  },
})
