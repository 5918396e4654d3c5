/** /healthz (the process is alive) and /readyz (database, Redis and migrations are in order). */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';

const Check = Type.Object({ ok: Type.Boolean(), error: Type.Optional(Type.String()) });
const Ready = Type.Object({
  status: Type.Union([Type.Literal('ready'), Type.Literal('not_ready')]),
  checks: Type.Object({ database: Check, redis: Check, migrations: Check }),
});

/** One dependency check, bounded by `timeoutMs` (READYZ_TIMEOUT_MS): a hung dependency counts as failed. */
async function check(fn: () => Promise<boolean>, failure: string, timeoutMs: number): Promise<{ ok: boolean; error?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const run = fn();
  run.catch(() => undefined); // a late failure after the timeout is not unhandled
  try {
    const r = await Promise.race([run, timedOut]);
    if (r === 'timeout') return { ok: false, error: `no answer within ${timeoutMs} ms` };
    return r ? { ok: true } : { ok: false, error: failure };
  } catch (err) {
    return { ok: false, error: err instanceof Error ? err.message : String(err) };
  } finally {
    clearTimeout(timer);
  }
}

export default async function healthRoutes(app: FastifyInstance) {
  app.get(
    '/healthz',
    { schema: { tags: ['health'], response: { 200: Type.Object({ status: Type.Literal('ok') }) } } },
    async () => ({ status: 'ok' as const }),
  );
  app.get(
    '/readyz',
    { schema: { tags: ['health'], response: { 200: Ready, 503: Ready } } },
    async (_request, reply) => {
      const bound = app.config.READYZ_TIMEOUT_MS;
      const [database, redis, migrations] = await Promise.all([
        check(async () => (await app.db.adminQuery('SELECT 1')).rowCount === 1, 'no answer', bound),
        check(async () => (await app.redis.ping()) === 'PONG', 'no answer', bound),
        check(() => (app.migrator ? app.migrator.isCurrent() : Promise.resolve(true)), 'pending migrations or checksum drift', bound),
      ]);
      const ok = database.ok && redis.ok && migrations.ok;
      return reply.code(ok ? 200 : 503).send({ status: ok ? 'ready' : 'not_ready', checks: { database, redis, migrations } });
    },
  );
}
