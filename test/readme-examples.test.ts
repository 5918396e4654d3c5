/**
 * The curl examples of the README and of the docs pages (docs/*.md), run against a started app (seeded demo data, real PostgreSQL and
 * Redis), so they stay true: every runnable example must answer 2xx. Skipped, by rule: examples
 * with placeholders (`<id>`, `sk_...`, `[...]`), streams (`-N`), file downloads (`-O`), several commands on
 * one line, and the few listed in SKIP with the reason.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

/** The README and every hand-written docs page (configuration.md is generated and has no examples). */
const PAGES = ['README.md', ...readdirSync('docs').filter((f) => f.endsWith('.md') && f !== 'configuration.md').sort().map((f) => `docs/${f}`)];
const allCurls = () => PAGES.flatMap((p) => readmeCurls(readFileSync(p, 'utf8')));

/** Examples that cannot run in a test process, by a fragment of the command, with the reason. */
const SKIP: Array<[RegExp, string]> = [
  [/\/v1\/admin\/(queries\/top|index-advice)|explain/, 'needs pg_stat_statements / HypoPG in the server'],
  [/\/v1\/transactions/, 'deletes pk 42 and inserts pk 1 of the demo data: the outcome depends on the seed'],
  [/search-indexes\/run_steps|\/v1\/views\/runs_per_pipeline\/rows/, 'needs the job of the example before it to have run (no workers here)'],
  [/example\.com/, 'a webhook URL is resolved when created: no DNS in tests'],
  [/\/v1\/admin\/(backups|restores)/, 'needs a backup store and pg_dump; covered by the backup tests'],
  [/\/v1\/admin\/tenants\/initech/, 'depends on a tenant created by an earlier example in another order'],
  [/\/v1\/admin\/(cluster|tenants\/[^/]+\/(placement|isolate|move))/, 'needs a Citus cluster (409 NOT_A_CLUSTER on one server); covered by the Citus suite'],
  [/\/v1\/testing\//, 'needs TESTING_MODE=true; covered by the testing-mode tests'],
  [/x-strata-sandbox/i, 'needs the sandbox copy job of the example before it to have run (no workers here); covered by test/sandboxes.test.ts'],
  [/-X POST \S*\/v1\/admin\/partitions/, 'needs a range-partitioned table declared by a migration (the demo schema has none) and pg_partman; covered by test/partitions.test.ts'],
  [/\/rest\/v1\/rpc\//, 'names a function of the reader\'s own schema'],
  [/\/v1\/admin\/tenants\/acme.*limits/, 'changes the limits of the tenant the other examples run as'],
  [/\/v1\/tables\/pipelines\/rows\?status=eq\.paused/, 'a mass update of the demo rows the other examples read (its 413 needs rows past the bound; test/write-bounds.test.ts)'],
  [/\/v1\/admin\/compliance\/keys\/rotate/, 'needs ENCRYPTION_MASTER_KEYS (501 without it); covered by test/compliance-ops.test.ts'],
  [/customers/, 'encrypted columns need ENCRYPTION_MASTER_KEYS, which the examples app does not set; covered by test/compliance-paths.test.ts'],
];

/** The curl commands of the README's bash blocks, continuation lines and multi-line quotes joined. */
export function readmeCurls(markdown: string): string[] {
  const out: string[] = [];
  const blocks = markdown.split('```bash').slice(1).map((b) => b.split('```')[0] ?? '');
  for (const block of blocks) {
    const lines = block.split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (!/^curl\s/.test(lines[i]!)) continue;
      let cmd = lines[i]!;
      const open = () => ((cmd.match(/'/g) ?? []).length % 2 === 1 ? true : /\\\s*$/.test(cmd));
      while (open() && i + 1 < lines.length) {
        // a backslash continuation joins with a space; a line break inside quotes is kept
        const continued = /\\\s*$/.test(cmd);
        cmd = continued ? `${cmd.replace(/\\\s*$/, '')} ${lines[++i]!}` : `${cmd}\n${lines[++i]!}`;
      }
      out.push(cmd);
    }
  }
  return out;
}

const stripComment = (cmd: string) => {
  // a trailing `# ...` outside quotes
  let quoted = false;
  for (let i = 0; i < cmd.length; i++) {
    const c = cmd[i];
    if (c === "'" || c === '"') quoted = !quoted;
    if (!quoted && c === '#' && /\s/.test(cmd[i - 1] ?? ' ')) return cmd.slice(0, i).trimEnd();
  }
  return cmd;
};

function run(cmd: string, env: Record<string, string>): Promise<string> {
  return new Promise((resolve) => {
    execFile('sh', ['-c', `${cmd} -s -o /dev/null -w '%{http_code}' --max-time 15`], { env: { ...process.env, ...env }, timeout: 20_000 }, (_err, stdout) => resolve(stdout.trim()));
  });
}

describe('README examples', () => {
  let t: TestApp;
  let env: Record<string, string>;
  let port: number;
  beforeAll(async () => {
    t = await createTestApp({ seed: true });
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    port = (t.app.server.address() as { port: number }).port;
    const admin = await t.token('admin', 'acme');
    const analyst = await t.token('analyst', 'acme');
    env = {
      T: admin,
      ADMIN: admin,
      A: analyst,
      ANALYST: analyst,
      P: await t.token('platform_admin', null),
      W: await t.token('writer', 'acme'),
      R: await t.token('reader', 'acme'),
    };
  });
  afterAll(async () => {
    await t?.close();
  });

  it('finds the examples', () => {
    expect(readmeCurls(readFileSync('README.md', 'utf8')).length).toBeGreaterThan(8);
    expect(allCurls().length).toBeGreaterThan(60);
  });

  it('answers every runnable curl example of README.md and docs/ with 2xx', async () => {
    const failures: string[] = [];
    let ran = 0;
    for (const raw of allCurls()) {
      const cmd = stripComment(raw).replaceAll('localhost:3000', `127.0.0.1:${port}`);
      if (/<[a-z_]+>|\.\.\.|\s-N\s|\s-O|;\s*curl/.test(cmd) || SKIP.some(([re]) => re.test(cmd))) continue;
      const status = await run(cmd, env);
      ran++;
      if (!/^2\d\d$/.test(status)) failures.push(`${status}: ${cmd.replace(/\s+/g, ' ').slice(0, 200)}`);
    }
    expect(ran).toBeGreaterThan(25);
    expect(failures).toEqual([]);
  }, 240_000);
});
