/**
 * Webhooks of a tenant (admin): create (the signing secret is shown once), read, change, delete,
 * list delivery attempts, and check a replay range. Everything runs in the caller's tenant session:
 * strata.webhooks and strata.webhook_deliveries have row-level security, and the secret column is
 * not readable by tenant sessions at all (only the delivery workers, as owner, read it).
 */
import { randomBytes } from 'node:crypto';
import type { Database } from '../../db/database.js';
import type { SessionContext } from '../../db/session.js';
import { badRequest, conflict, notFound } from '../../errors.js';
import { CHANGE_OPS, parseCursor, type ChangeService } from './changes.js';
import { checkWebhookUrl } from './webhook-url.js';

export interface Webhook {
  id: string;
  tenant_id: string;
  url: string;
  tables: string[];
  ops: string[];
  ordering: 'row' | 'table' | 'webhook';
  active: boolean;
  cursor: string;
  attempt: number;
  next_attempt_at: string;
  created_by: string;
  created_at: string;
  updated_at: string;
}

export interface WebhookDelivery {
  id: string;
  change_id: string;
  attempt: number;
  status: 'succeeded' | 'failed' | 'dead';
  http_status: number | null;
  error: string | null;
  duration_ms: number;
  replay: boolean;
  at: string;
}

export interface WebhookInput {
  url?: string;
  tables?: string[];
  ops?: string[];
  ordering?: 'row' | 'table' | 'webhook';
  active?: boolean;
}

const COLUMNS = `id, tenant_id, url, tables, ops, ordering, active, cursor::text AS cursor, attempt, next_attempt_at, created_by, created_at, updated_at`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const webhookNotFound = (id: string) => notFound('WEBHOOK_NOT_FOUND', `webhook ${id} does not exist`);

export function createWebhookService(deps: { db: Database; changes: ChangeService; allowPrivate: boolean; maxLimit: number; maxPerTenant?: number }) {
  const { db, changes } = deps;

  async function checkInput(input: WebhookInput): Promise<void> {
    if (input.url !== undefined) await checkWebhookUrl(input.url, deps.allowPrivate);
    if (input.ops !== undefined) {
      if (!input.ops.length) throw badRequest('BAD_OP', 'ops must name at least one of insert, update, delete');
    }
    await changes.checkFilter({ tables: input.tables, ops: input.ops });
  }

  const dedupe = (xs: string[] | undefined) => (xs === undefined ? undefined : [...new Set(xs)]);

  async function get(ctx: SessionContext, id: string): Promise<Webhook> {
    if (!UUID.test(id)) throw webhookNotFound(id);
    const { rows } = await db.tenantQuery<Webhook>(ctx, `SELECT ${COLUMNS} FROM strata.webhooks WHERE id = $1`, [id], { readOnly: true });
    if (!rows[0]) throw webhookNotFound(id);
    return rows[0];
  }

  return {
    /** Create a webhook; it receives the tenant's events committed from now on. */
    async create(ctx: SessionContext, input: Required<Pick<WebhookInput, 'url'>> & WebhookInput): Promise<Webhook & { secret: string }> {
      await checkInput(input);
      const secret = `whsec_${randomBytes(32).toString('base64url')}`;
      return db.withTenant(ctx, async (tx) => {
        // At most maxPerTenant webhooks (WEBHOOK_TENANT_MAX); creations of one tenant are serialised.
        if (deps.maxPerTenant !== undefined) {
          await tx.query("SELECT pg_advisory_xact_lock(hashtext('strata.webhooks'), hashtext($1))", [ctx.tenantId ?? '']);
          const n = await tx.query<{ n: number }>('SELECT count(*)::int AS n FROM strata.webhooks');
          if ((n.rows[0]?.n ?? 0) >= deps.maxPerTenant) {
            throw conflict('WEBHOOK_LIMIT_REACHED', `this tenant already has ${deps.maxPerTenant} webhooks (WEBHOOK_TENANT_MAX); delete one first`);
          }
        }
        // Start after the newest event under the horizon: everything not yet exposed is delivered.
        const horizon = await tx.query<{ h: string }>('SELECT strata.change_horizon($1)::text AS h', [ctx.tenantId]);
        const h = await tx.query<{ c: string }>(
          `SELECT coalesce((SELECT max(id) FROM strata.changes WHERE tenant_id = $1 AND id <= $2::bigint), 0)::text AS c`,
          [ctx.tenantId, horizon.rows[0]?.h ?? '0'],
        );
        const { rows } = await tx.query<Webhook>(
          `INSERT INTO strata.webhooks (url, tables, ops, ordering, secret, active, cursor) VALUES ($1, $2, $3, $4, $5, $6, $7::bigint) RETURNING ${COLUMNS}`,
          [input.url, dedupe(input.tables) ?? [], dedupe(input.ops) ?? [...CHANGE_OPS], input.ordering ?? 'row', secret, input.active ?? true, h.rows[0]?.c ?? '0'],
        );
        return { ...rows[0]!, secret };
      });
    },

    async list(ctx: SessionContext): Promise<Webhook[]> {
      const { rows } = await db.tenantQuery<Webhook>(ctx, `SELECT ${COLUMNS} FROM strata.webhooks ORDER BY created_at, id`, [], { readOnly: true });
      return rows;
    },

    get,

    async update(ctx: SessionContext, id: string, input: WebhookInput): Promise<Webhook> {
      await get(ctx, id);
      await checkInput(input);
      const { rows } = await db.tenantQuery<Webhook>(ctx, 
        `UPDATE strata.webhooks SET url = coalesce($2, url), tables = coalesce($3, tables), ops = coalesce($4, ops), active = coalesce($5, active),
            ordering = coalesce($6, ordering), next_attempt_at = CASE WHEN $5 IS TRUE THEN now() ELSE next_attempt_at END, updated_at = now()
          WHERE id = $1 RETURNING ${COLUMNS}`,
        [id, input.url ?? null, dedupe(input.tables) ?? null, dedupe(input.ops) ?? null, input.active ?? null, input.ordering ?? null],
      );
      if (!rows[0]) throw webhookNotFound(id);
      return rows[0];
    },

    async remove(ctx: SessionContext, id: string): Promise<Webhook> {
      if (!UUID.test(id)) throw webhookNotFound(id);
      const { rows } = await db.tenantQuery<Webhook>(ctx, `DELETE FROM strata.webhooks WHERE id = $1 RETURNING ${COLUMNS}`, [id]);
      if (!rows[0]) throw webhookNotFound(id);
      return rows[0];
    },

    /** Delivery attempts, oldest first, keyset-paged by attempt id. */
    async deliveries(ctx: SessionContext, id: string, q: { after?: string; limit?: number }): Promise<{ data: WebhookDelivery[]; next_cursor: string | null }> {
      await get(ctx, id);
      const after = parseCursor(q.after);
      const limit = q.limit ?? 100;
      if (limit > deps.maxLimit) throw badRequest('LIMIT_TOO_LARGE', `limit must be at most ${deps.maxLimit}`);
      const { rows } = await db.tenantQuery<WebhookDelivery>(ctx, 
        `SELECT id::text AS id, change_id::text AS change_id, attempt, status, http_status, error, duration_ms, replay, at
           FROM strata.webhook_deliveries WHERE webhook_id = $1 AND id > $2::bigint ORDER BY id LIMIT $3`,
        [id, after, limit + 1],
        { readOnly: true },
      );
      const more = rows.length > limit;
      const data = more ? rows.slice(0, limit) : rows;
      return { data, next_cursor: more ? (data[data.length - 1]?.id ?? null) : null };
    },

    /** Check a replay request: the webhook is the caller's and `after < until`. */
    async checkReplay(ctx: SessionContext, id: string, range: { after?: string; until?: string }): Promise<{ after: string; until: string | undefined }> {
      await get(ctx, id);
      const after = parseCursor(range.after);
      const until = range.until === undefined ? undefined : parseCursor(range.until, 'until');
      if (until !== undefined && BigInt(until) <= BigInt(after)) throw badRequest('BAD_RANGE', `until (${until}) must be greater than after (${after})`);
      return { after, until };
    },
  };
}

export type WebhookService = ReturnType<typeof createWebhookService>;
