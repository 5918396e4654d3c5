/**
 * The demo dataset for the embedded default: two tenants (acme, globex), each with pipelines, runs,
 * step trees and a few thousand log lines. Written through tenant sessions, so RLS checks every row.
 */
import type { Logger } from 'pino';
import type { Database } from './database.js';

export const DEMO_TENANTS = [
  { id: 'acme', name: 'Acme Corporation' },
  { id: 'globex', name: 'Globex Inc.' },
] as const;

export const SEED_SQL = [
  `INSERT INTO pipelines (name, description, status)
   SELECT 'pipeline-' || g, 'Nightly ' || (ARRAY['ingest','transform','report','backup'])[1 + g % 4] || ' pipeline number ' || g,
          (ARRAY['active','active','paused','archived'])[1 + g % 4]
   FROM generate_series(1, 25) g`,
  `INSERT INTO pipeline_runs (pipeline_id, status, params, started_at, finished_at)
   SELECT p.id, (ARRAY['succeeded','succeeded','failed','running','queued'])[1 + (g % 5)],
          jsonb_build_object('attempt', g % 3, 'region', (ARRAY['eu','us','ap'])[1 + g % 3]),
          now() - make_interval(hours => g), now() - make_interval(hours => g) + make_interval(mins => 5 + g % 40)
   FROM pipelines p CROSS JOIN generate_series(1, 10) g`,
  `INSERT INTO run_steps (run_id, name, status, duration_ms)
   SELECT r.id, (ARRAY['checkout','build','test','deploy'])[g], (ARRAY['succeeded','succeeded','failed','skipped'])[1 + (r.id + g) % 4], 100 * g + r.id % 997
   FROM pipeline_runs r CROSS JOIN generate_series(1, 4) g`,
  `INSERT INTO run_steps (run_id, parent_step_id, name, status, duration_ms)
   SELECT s.run_id, s.id, s.name || ':substep', 'succeeded', s.duration_ms / 2 FROM run_steps s WHERE s.name IN ('build', 'test')`,
  `INSERT INTO run_logs (run_id, level, message, at)
   SELECT r.id, (ARRAY['debug','info','info','warn','error'])[1 + (r.id + g) % 5],
          'step ' || g || ' of run ' || r.id || ': ' || (ARRAY['started worker','fetched sources','pipeline cache miss','retrying connection','finished with warnings'])[1 + g % 5],
          r.started_at + make_interval(secs => g * 7)
   FROM pipeline_runs r CROSS JOIN generate_series(1, 12) g`,
];

/** Seed each demo tenant whose pipelines table is empty. Returns the tenants seeded. */
export async function seedDemo(db: Database, log: Logger): Promise<string[]> {
  const seeded: string[] = [];
  for (const t of DEMO_TENANTS) {
    await db.adminQuery('INSERT INTO strata.tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING', [t.id, t.name]);
    const ctx = { tenantId: t.id, actor: 'seed', role: 'admin' as const, requestId: 'seed' };
    const done = await db.withTenant(ctx, async (tx) => {
      const { rows } = await tx.query<{ n: number }>('SELECT count(*)::int AS n FROM pipelines');
      if ((rows[0]?.n ?? 0) > 0) return false;
      for (const sql of SEED_SQL) await tx.query(sql);
      return true;
    }, { statementTimeoutMs: 120_000 });
    if (done) {
      seeded.push(t.id);
      log.info({ tenant: t.id }, 'seeded demo data');
    }
  }
  return seeded;
}
