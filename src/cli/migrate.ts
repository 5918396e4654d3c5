/**
 * `npm run migrate -- up|down|status|plan|verify|redo [--to ID] [--steps N] [--dry-run] [--sql] [--dir PATH]`
 *
 * Reads DATABASE_URL (required). Prints one line per migration. Exit codes: 0 ok, 1 failure (the
 * message names the file), 2 usage or missing configuration.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { prepareCluster } from '../services/cluster/index.js';
import {
  createMigrator,
  defaultMigrationsDir,
  MigrationError,
  type PlanStep,
} from '../db/migrations/index.js';

const COMMANDS = ['up', 'down', 'status', 'plan', 'verify', 'redo'] as const;
type Command = (typeof COMMANDS)[number];

const USAGE = `usage: npm run migrate -- <${COMMANDS.join('|')}> [--to ID] [--steps N] [--dry-run] [--sql] [--dir PATH]
  up       apply pending migrations (up to and including --to)
  down     roll back one migration, --steps N, or until --to ID is the last applied (--to zero: all)
  status   list migrations: applied, pending, drift
  plan     show what up (or down, with --down) would run; --sql prints the SQL
  verify   check checksums, dependencies and heads; exit 1 on any problem
  redo     roll back the last migration and apply it again`;

function fail(code: number, line: string): never {
  process.stderr.write(`${line}\n`);
  process.exit(code);
}

function parse() {
  try {
    const { values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        to: { type: 'string' },
        steps: { type: 'string' },
        'dry-run': { type: 'boolean', default: false },
        sql: { type: 'boolean', default: false },
        down: { type: 'boolean', default: false },
        dir: { type: 'string' },
        'lock-timeout': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
    const command = positionals[0] as Command | undefined;
    if (values.help) fail(0, USAGE);
    if (!command || !COMMANDS.includes(command) || positionals.length > 1) fail(2, USAGE);
    const steps = values.steps === undefined ? undefined : Number(values.steps);
    if (steps !== undefined && !(Number.isInteger(steps) && steps >= 0))
      fail(2, 'migrate: --steps must be a whole number');
    const lockTimeout = Number(values['lock-timeout'] ?? process.env['MIGRATION_LOCK_TIMEOUT_MS'] ?? 10_000);
    if (!(Number.isInteger(lockTimeout) && lockTimeout >= 0))
      fail(2, 'migrate: --lock-timeout must be milliseconds');
    return { command, ...values, steps, lockTimeout };
  } catch (e) {
    fail(2, `migrate: ${(e as Error).message}\n${USAGE}`);
  }
}

const describe = (s: PlanStep, withSql: boolean): string =>
  `  ${s.direction.padEnd(4)} ${s.id}${withSql ? `\n${s.sql.trimEnd().replace(/^/gm, '    | ')}` : ''}`;

async function main(): Promise<number> {
  const args = parse();
  const url = process.env['DATABASE_URL'];
  if (!url) fail(2, 'migrate: DATABASE_URL is required (postgres://user@host:port/database)');

  const pool = new pg.Pool({ connectionString: url, max: 2, application_name: 'strata-migrate' });
  pool.on('error', (e) => process.stderr.write(`  warning: idle connection lost: ${e.message}\n`));
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const migrator = createMigrator({
    pool,
    dir: args.dir ?? defaultMigrationsDir(),
    lockTimeoutMs: args.lockTimeout,
    log: {
      info: (_obj, msg) => msg && out(`  ${msg}`),
      warn: (_obj, msg) => msg && process.stderr.write(`  warning: ${msg}\n`),
    },
  });
  const dry = args['dry-run'];
  const done = (steps: PlanStep[], verb: string) =>
    out(
      steps.length === 0
        ? 'nothing to do'
        : `${dry ? 'dry run (rolled back): would have ' : ''}${verb} ${steps.length} migration${steps.length === 1 ? '' : 's'}`,
    );

  try {
    switch (args.command) {
      case 'up':
        done(await migrator.up({ to: args.to, dryRun: dry }), 'applied');
        // on a Citus coordinator: distribute the tenant tables (a no-op on a single server)
        if (!dry) {
          const cluster = await prepareCluster(pool, { info: () => undefined });
          if (cluster) out(`cluster: ${cluster.distributed.length} distributed tables, ${cluster.reference.length} reference tables`);
        }
        return 0;
      case 'down':
        done(await migrator.down({ to: args.to, steps: args.steps, dryRun: dry }), 'rolled back');
        return 0;
      case 'redo':
        out((await migrator.redo()).length === 0 ? 'nothing to redo' : 'redo: rolled back and applied again');
        return 0;
      case 'plan': {
        const steps = await migrator.plan({ to: args.to, direction: args.down ? 'down' : 'up' });
        steps.forEach((s) => out(describe(s, args.sql)));
        out(steps.length === 0 ? 'nothing to do' : `${steps.length} step${steps.length === 1 ? '' : 's'}`);
        return 0;
      }
      case 'status': {
        const rows = await migrator.status();
        const width = Math.max(2, ...rows.map((r) => r.id.length));
        out(`${'id'.padEnd(width)}  ${'state'.padEnd(8)}  ${'applied at'.padEnd(24)}  depends on`);
        for (const r of rows) {
          const state = r.drift ? 'DRIFT' : r.checksum === '' ? 'NO FILE' : r.applied ? 'applied' : 'pending';
          out(
            `${r.id.padEnd(width)}  ${state.padEnd(8)}  ${(r.appliedAt?.toISOString() ?? '-').padEnd(24)}  ${r.dependsOn.join(', ') || '-'}`,
          );
        }
        return 0;
      }
      case 'verify': {
        const { ok, problems } = await migrator.verify();
        problems.forEach((p) => out(`  ${p.code}: ${p.message}`));
        out(ok ? 'ok' : `${problems.length} problem${problems.length === 1 ? '' : 's'}`);
        return ok ? 0 : 1;
      }
    }
  } catch (e) {
    const message = e instanceof MigrationError ? `${e.code}: ${e.message}` : (e as Error).message;
    process.stderr.write(`migrate ${args.command} failed: ${message}\n`);
    return 1;
  } finally {
    await pool.end();
  }
}

process.exitCode = await main();
