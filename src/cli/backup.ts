/**
 * `strata backup create|list|verify|restore` (also `npm run backup -- <command>`): the backup
 * services called directly, in this process (no API, no token, no queue), printing progress to
 * stderr and the result as one JSON document on stdout. Reads the same environment as the service
 * (DATABASE_URL required; BACKUP_DIR or BACKUP_S3_*; REDIS_URL for an in-place restore's
 * maintenance flag). Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration.
 */
import { parseArgs } from 'node:util';
import { loadConfig, ConfigError } from '../config.js';
import { isAppError } from '../errors.js';
import { createBackupService, type ProgressUpdate } from '../services/backups/index.js';
import { createRestoreService, type RestoreRequest } from '../services/backups/index.js';

const USAGE = `usage: strata backup <command> [options]
  create [--kind full|incremental]          take a backup (default full), then apply retention
  list [--json]                             list backups, newest first
  verify <backup-id>                        checksum + real restore into a scratch database + row counts
  restore (--backup <id> | --until <ISO timestamp>) [--target new_database|in_place] [--database NAME]
                                            restore a backup or an instant (default target new_database)`;

function fail(code: number, line: string): never {
  process.stderr.write(`${line}\n`);
  process.exit(code);
}

function progressPrinter(): (p: ProgressUpdate) => void {
  let last = '';
  return ({ phase, done, total }) => {
    const line = total === null ? `${phase}: ${done}` : `${phase}: ${done}/${total} (${total <= 0 ? 100 : Math.round((done / total) * 100)}%)`;
    if (line === last) return;
    last = line;
    process.stderr.write(`  ${line}\n`);
  };
}

export async function main(argv = process.argv.slice(2)): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        kind: { type: 'string', default: 'full' },
        json: { type: 'boolean', default: false },
        backup: { type: 'string' },
        until: { type: 'string' },
        target: { type: 'string', default: 'new_database' },
        database: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    fail(2, `backup: ${(e as Error).message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  const [command, arg] = positionals;
  if (values.help) fail(0, USAGE);
  if (!command || !['create', 'list', 'verify', 'restore'].includes(command)) fail(2, USAGE);
  if (!process.env['DATABASE_URL']) fail(2, 'backup: DATABASE_URL is required (the database to back up / restore from)');
  let config;
  try {
    // The CLI signs no tokens: a placeholder satisfies the API's JWT_SECRET requirement.
    config = loadConfig({ JWT_SECRET: 'cli-does-not-use-tokens-cli-does-not-use-tokens', ...process.env });
  } catch (e) {
    if (e instanceof ConfigError) fail(2, `backup: ${e.message}`);
    throw e;
  }
  const adminUrl = config.DATABASE_URL ?? '';
  const log = {
    info: () => undefined,
    debug: () => undefined,
    warn: (obj: unknown, msg?: string) => process.stderr.write(`  warning: ${msg ?? String(obj)}\n`),
    error: (obj: unknown, msg?: string) => process.stderr.write(`  error: ${msg ?? String(obj)}\n`),
  };
  const backups = createBackupService({ config, adminUrl, log });
  const out = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
  const progress = progressPrinter();
  try {
    if (command === 'list') {
      const all = await backups.list();
      if (values.json) out(all);
      else {
        process.stdout.write(`${'ID'.padEnd(30)} ${'KIND'.padEnd(11)} ${'STATUS'.padEnd(9)} ${'VERIFIED'.padEnd(8)} ${'SIZE'.padStart(12)}  SNAPSHOT AT\n`);
        for (const b of all) {
          const verified = b.verifications.length ? (b.verifications[b.verifications.length - 1]?.ok ? 'yes' : 'FAILED') : '-';
          process.stdout.write(`${b.id.padEnd(30)} ${b.kind.padEnd(11)} ${b.status.padEnd(9)} ${verified.padEnd(8)} ${String(b.size ?? '-').padStart(12)}  ${b.snapshot_at ?? '-'}\n`);
        }
      }
      return 0;
    }
    if (command === 'create') {
      if (values.kind !== 'full' && values.kind !== 'incremental') fail(2, 'backup: --kind must be full or incremental');
      await backups.checkCreate(values.kind);
      process.stderr.write(`taking a ${values.kind} backup of ${backups.database} into ${backups.store.location}\n`);
      const m = await backups.create(values.kind, { trigger: 'cli', progress });
      const pruned = await backups.prune();
      out({ ...m, pruned });
      return 0;
    }
    if (command === 'verify') {
      if (!arg) fail(2, 'backup: verify needs a backup id');
      process.stderr.write(`verifying ${arg}\n`);
      const v = await backups.verify(arg, { progress });
      out(v);
      if (!v.ok) process.stderr.write(`verification FAILED: ${v.reason ?? ''}\n`);
      return v.ok ? 0 : 1;
    }
    const target = values.target;
    if (target !== 'new_database' && target !== 'in_place') fail(2, 'backup: --target must be new_database or in_place');
    const req: RestoreRequest = {
      target,
      ...(values.backup !== undefined ? { backup_id: values.backup } : {}),
      ...(values.until !== undefined ? { until: values.until } : {}),
      ...(values.database !== undefined ? { database: values.database } : {}),
    };
    const restores = createRestoreService({ backups, redisUrl: config.REDIS_URL, changeRetentionDays: config.CHANGES_RETENTION_DAYS, cachePrefix: config.CACHE_PREFIX });
    const plan = await restores.plan(req);
    process.stderr.write(
      `restoring ${plan.base.id}${plan.incrementals.length ? ` + ${plan.incrementals.length} incremental(s)` : ''}${plan.until ? `, replaying the change log up to ${plan.until}` : ''} into ${plan.database}${target === 'in_place' ? ' (in place)' : ''}\n`,
    );
    out(await restores.restore(req, { progress }));
    return 0;
  } catch (e) {
    if (isAppError(e)) {
      process.stderr.write(`backup: ${e.code}: ${e.message}\n`);
      return e.statusCode < 500 ? 2 : 1;
    }
    process.stderr.write(`backup: ${(e as Error).message}\n`);
    return 1;
  }
}
