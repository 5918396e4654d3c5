/**
 * Change data capture end to end against the real PostgreSQL: capture in the writing transaction,
 * the visibility horizon under concurrent writers, keyset pages, SSE resume over a real socket, row
 * history, undo and its conflicts, partitions/retention, tenant isolation and bad input.
 */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import WebSocket from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RequestContext } from '../src/domain.js';
import { createTestApp, type TestApp } from './helpers/app.js';
import { TEST_APP_PASSWORD, TEST_APP_ROLE } from './helpers/constants.js';
import { expectNoCheckedOutClients } from './helpers/leaks.js';

type Json = Record<string, unknown>;
interface Event {
  id: string;
  txid: string;
  tenant_id: string;
  table: string;
  op: string;
  pk: Json;
  before: Json | null;
  after: Json | null;
  actor: string | null;
  at: string;
}

const PORT = 3221;
const acme: RequestContext = { requestId: 'req-cdc', tenantId: 'acme', actor: 'writer@acme', role: 'writer' };

describe('change data capture', () => {
  let t: TestApp;
  let writer: Record<string, string>;
  let reader: Record<string, string>;
  let globex: Record<string, string>;
  beforeAll(async () => {
    t = await createTestApp({ env: { CHANGES_POLL_MS: '200', CHANGES_HEARTBEAT_MS: '200' } });
    writer = await t.auth('writer', 'acme');
    reader = await t.auth('reader', 'acme');
    globex = await t.auth('writer', 'globex');
  });
  afterAll(() => t.close());
  afterEach(() => expectNoCheckedOutClients(t.db));

  const call = async (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, headers: Record<string, string>, payload?: unknown) => {
    const res = await t.app.inject({ method, url, headers, payload: payload as never });
    return { status: res.statusCode, body: res.body ? res.json<Json>() : {} };
  };
  const code = (r: { body: Json }) => (r.body['error'] as Json | undefined)?.['code'];
  const count = async (where = 'true', values: unknown[] = []) =>
    Number((await t.db.adminQuery<{ n: string }>(`SELECT count(*) AS n FROM strata.changes WHERE ${where}`, values)).rows[0]?.n);
  const allChanges = async (headers = reader, extra = '') => {
    const out: Event[] = [];
    let after = '0';
    for (;;) {
      const r = await call('GET', `/v1/changes?after=${after}&limit=100${extra}`, headers);
      expect(r.status).toBe(200);
      const data = r.body['data'] as Event[];
      out.push(...data);
      if (!r.body['next_cursor']) return out;
      after = r.body['next_cursor'] as string;
    }
  };
  const insertPipeline = async (name: string, headers = writer) => {
    const r = await call('POST', '/v1/tables/pipelines/rows', headers, { name });
    expect(r.status).toBe(201);
    return (r.body['data'] as Json)['id'] as string;
  };
  /** A raw connection as the application role (a tenant session without the service around it). */
  const appClient = async () => {
    const u = new URL(t.database.url);
    u.username = TEST_APP_ROLE;
    u.password = TEST_APP_PASSWORD;
    const c = new pg.Client({ connectionString: u.toString() });
    await c.connect();
    return c;
  };

  it('captures insert, update and delete with before/after, pk, actor, tenant and the transaction', async () => {
    const start = await count();
    const id = await insertPipeline('cdc-one');
    expect((await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, { status: 'paused' })).status).toBe(200);
    expect((await call('DELETE', `/v1/tables/pipelines/rows/${id}`, writer)).status).toBeLessThan(300);
    expect(await count()).toBe(start + 3);
    const events = (await allChanges()).filter((e) => e.pk['id'] === Number(id));
    expect(events.map((e) => e.op)).toEqual(['insert', 'update', 'delete']);
    const [ins, upd, del] = events as [Event, Event, Event];
    expect(ins).toMatchObject({ tenant_id: 'acme', table: 'pipelines', actor: 'user-writer@acme', before: null, pk: { id: Number(id) } });
    expect(ins.after).toMatchObject({ name: 'cdc-one', status: 'active', tenant_id: 'acme' });
    expect(upd.before).toMatchObject({ status: 'active' });
    expect(upd.after).toMatchObject({ status: 'paused' });
    expect(del.before).toMatchObject({ status: 'paused' });
    expect(del.after).toBeNull();
    expect(BigInt(ins.id) < BigInt(upd.id) && BigInt(upd.id) < BigInt(del.id)).toBe(true);
    // the same transaction shares txid and at: a bulk insert of two rows
    const bulk = await call('POST', '/v1/tables/pipelines/rows', writer, [{ name: 'cdc-b1' }, { name: 'cdc-b2' }]);
    expect(bulk.status).toBe(201);
    const last = (await allChanges()).slice(-2);
    expect(last[0]?.txid).toBe(last[1]?.txid);
    expect(last[0]?.at).toBe(last[1]?.at);
  });

  it('emits nothing for a rolled-back transaction, a rolled-back savepoint or a failed write', async () => {
    const start = await count();
    await expect(
      t.db.withTenant(acme, async (tx) => {
        await tx.query("INSERT INTO pipelines (name) VALUES ('cdc-rolled-back')");
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    await t.db.withTenant(acme, async (tx) => {
      await tx.query("INSERT INTO pipelines (name) VALUES ('cdc-kept')");
      await expect(tx.savepoint(async (sp) => {
        await sp.query("INSERT INTO pipelines (name) VALUES ('cdc-sp-rolled-back')");
        throw new Error('inner');
      })).rejects.toThrow('inner');
    });
    const bad = await call('POST', '/v1/tables/pipelines/rows', writer, { name: 'x', status: 'nonsense' });
    expect(bad.status).toBe(400);
    expect(await count()).toBe(start + 1);
    expect(await count("after->>'name' IN ('cdc-rolled-back', 'cdc-sp-rolled-back')")).toBe(0);
  });

  it('lets a tenant session neither forge, change nor delete events', async () => {
    const c = await appClient();
    try {
      await c.query("SELECT set_config('strata.tenant_id', 'acme', false)");
      const forge = c.query(
        "INSERT INTO strata.changes (id, txid, tenant_id, table_name, op, pk, at) VALUES (999999, pg_current_xact_id(), 'acme', 'pipelines', 'insert', '{}', now())",
      );
      await expect(forge).rejects.toMatchObject({ code: '42501' });
      await expect(c.query("UPDATE strata.changes SET actor = 'forged'")).rejects.toMatchObject({ code: '42501' });
      await expect(c.query('DELETE FROM strata.changes')).rejects.toMatchObject({ code: '42501' });
      await expect(c.query('SELECT count(*) FROM strata.changes_default')).rejects.toMatchObject({ code: '42501' });
      // reads are row-level secured: only the session's tenant
      const { rows } = await c.query<{ n: string }>("SELECT count(*) AS n FROM strata.changes WHERE tenant_id <> 'acme'");
      expect(rows[0]?.n).toBe('0');
    } finally {
      await c.end();
    }
    expect(await count("actor = 'forged' OR id = 999999")).toBe(0);
  });

  it('never lets a reader skip an event: concurrent writers, a reader following under the horizon', async () => {
    const before = (await allChanges()).at(-1)?.id ?? '0';
    const row = await insertPipeline('cdc-counter');
    const writers = await Promise.all(Array.from({ length: 6 }, () => appClient()));
    let stop = false;
    const seen: Event[] = [];
    // The reader follows with next_cursor / last id, as a consumer would, while writers interleave.
    const follower = (async () => {
      let after = before;
      while (!stop) {
        const r = await call('GET', `/v1/changes?after=${after}&limit=50`, reader);
        const data = r.body['data'] as Event[];
        seen.push(...data);
        if (data.length) after = data[data.length - 1]!.id;
        else await sleep(2);
      }
      for (;;) {
        const r = await call('GET', `/v1/changes?after=${after}&limit=500`, reader);
        const data = r.body['data'] as Event[];
        seen.push(...data);
        if (!data.length) break;
        after = data[data.length - 1]!.id;
      }
    })();
    let rolledBack = 0;
    await Promise.all(
      writers.map(async (c, w) => {
        for (let i = 0; i < 15; i++) {
          await c.query('BEGIN');
          await c.query("SELECT set_config('strata.tenant_id', 'acme', true), set_config('strata.actor', $1, true)", [`w${w}`]);
          await c.query('INSERT INTO pipelines (name) VALUES ($1)', [`cdc-c-${w}-${i}`]);
          // hold the transaction open (its id taken) while others commit higher ids
          await sleep(Math.floor(Math.random() * 6));
          await c.query("UPDATE pipelines SET description = coalesce(description, '') || 'x' WHERE id = $1", [row]);
          await c.query('INSERT INTO pipelines (name) VALUES ($1)', [`cdc-c2-${w}-${i}`]);
          if (i % 5 === 4) {
            await c.query('ROLLBACK');
            rolledBack++;
          } else await c.query('COMMIT');
        }
      }),
    );
    stop = true;
    await follower;
    await Promise.all(writers.map((c) => c.end()));
    const committed = (
      await t.db.adminQuery<{ id: string }>("SELECT c.id::text AS id FROM strata.changes c WHERE c.tenant_id = 'acme' AND c.id > $1 ORDER BY c.id", [before])
    ).rows.map((r) => r.id);
    expect(rolledBack).toBe(18);
    expect(committed.length).toBe(1 + 6 * 12 * 3);
    // every committed event seen exactly once, in id order: no skipped lower id, no duplicate
    const seenIds = seen.map((e) => e.id);
    expect({ missing: committed.filter((id) => !seenIds.includes(id)), dup: seenIds.length - new Set(seenIds).size }).toEqual({ missing: [], dup: 0 });
    expect(seenIds).toEqual(committed);
    // per row, ids follow commit order: the counter row's description grows by one 'x' per event
    const counter = seen.filter((e) => e.table === 'pipelines' && e.op === 'update' && e.pk['id'] === Number(row));
    expect(counter.length).toBe(72);
    counter.forEach((e, i) => {
      expect((e.before?.['description'] as string | null)?.length ?? 0).toBe(i);
      expect((e.after?.['description'] as string).length).toBe(i + 1);
    });
  });

  it('pages with next_cursor and filters by table and op', async () => {
    const all = await allChanges();
    const page = await call('GET', '/v1/changes?limit=3', reader);
    expect((page.body['data'] as Event[]).map((e) => e.id)).toEqual(all.slice(0, 3).map((e) => e.id));
    expect(page.body['next_cursor']).toBe(all[2]?.id);
    const updates = await allChanges(reader, '&table=pipelines&op=update');
    expect(updates.length).toBe(all.filter((e) => e.table === 'pipelines' && e.op === 'update').length);
    expect(updates.every((e) => e.op === 'update')).toBe(true);
  });

  it('rejects bad cursors, unknown tables and ops, and too-large limits with 400 codes', async () => {
    for (const [url, c] of [
      ['/v1/changes?after=abc', 'BAD_CURSOR'],
      ['/v1/changes?after=-1', 'BAD_CURSOR'],
      ['/v1/changes?after=99999999999999999999', 'BAD_CURSOR'],
      ['/v1/changes?table=nope', 'UNKNOWN_TABLE'],
      ['/v1/changes?op=upsert', 'BAD_OP'],
      ['/v1/changes?limit=100000', 'LIMIT_TOO_LARGE'],
      ['/v1/changes/stream?after=x', 'BAD_CURSOR'],
      ['/v1/changes/stream?table=nope', 'UNKNOWN_TABLE'],
      ['/v1/tables/pipelines/rows/abc/history', 'INVALID_VALUE'],
      ['/v1/tables/pipelines/rows/1/history?after=z', 'BAD_CURSOR'],
    ] as const) {
      const r = await call('GET', url, reader);
      expect(r.status, url).toBe(400);
      expect(code(r), url).toBe(c);
    }
    expect((await call('GET', '/v1/tables/nope/rows/1/history', reader)).status).toBe(404);
    expect((await call('GET', '/v1/changes', {})).status).toBe(401);
  });

  it('answers who changed a row, what and when (history), tenant-scoped', async () => {
    const id = await insertPipeline('cdc-history');
    await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, { description: 'one' });
    await call('PATCH', `/v1/tables/pipelines/rows/${id}`, await t.auth('admin', 'acme'), { description: 'two' });
    const h = await call('GET', `/v1/tables/pipelines/rows/${id}/history?limit=2`, reader);
    expect(h.status).toBe(200);
    const first = h.body['data'] as Event[];
    expect(first.map((e) => e.op)).toEqual(['insert', 'update']);
    const rest = await call('GET', `/v1/tables/pipelines/rows/${id}/history?after=${h.body['next_cursor'] as string}`, reader);
    const second = rest.body['data'] as Event[];
    expect(second.map((e) => [e.op, e.actor, e.after?.['description']])).toEqual([['update', 'user-admin@acme', 'two']]);
    expect(rest.body['next_cursor']).toBeNull();
    // another tenant sees no history of acme's row
    const other = await call('GET', `/v1/tables/pipelines/rows/${id}/history`, globex);
    expect(other.status).toBe(200);
    expect(other.body['data']).toEqual([]);
  });

  it('undoes an update, an insert and a delete, capturing each undo', async () => {
    const id = await insertPipeline('cdc-undo');
    await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, { description: 'changed', status: 'paused' });
    const hist = async () => (await call('GET', `/v1/tables/pipelines/rows/${id}/history`, reader)).body['data'] as Event[];
    const upd = (await hist()).at(-1)!;
    const undo = await call('POST', `/v1/changes/${upd.id}/undo`, writer);
    expect(undo.status).toBe(200);
    expect(undo.body['data']).toMatchObject({ undone: upd.id, op: 'update', row: { description: null, status: 'active' } });
    const afterUndo = await hist();
    expect(afterUndo.at(-1)).toMatchObject({ op: 'update', id: (undo.body['data'] as Json)['change_id'], after: { status: 'active' } });
    // delete, then undo the delete: the row comes back as it was
    await call('DELETE', `/v1/tables/pipelines/rows/${id}`, writer);
    const del = (await hist()).at(-1)!;
    const back = await call('POST', `/v1/changes/${del.id}/undo`, writer);
    expect(back.status).toBe(200);
    expect(back.body['data']).toMatchObject({ op: 'insert', row: { id: Number(id), name: 'cdc-undo' } });
    expect((await call('GET', `/v1/tables/pipelines/rows/${id}`, reader)).status).toBe(200);
    // undo the original insert: the row goes
    const ins = (await hist())[0]!;
    expect(ins.op).toBe('insert');
    const gone = await call('POST', `/v1/changes/${ins.id}/undo`, writer);
    expect(gone.status).toBe(200);
    expect((await call('GET', `/v1/tables/pipelines/rows/${id}`, reader)).status).toBe(404);
  });

  it('undoes the delete of a row whose key is GENERATED ALWAYS AS IDENTITY, with its own id back', async () => {
    await t.db.adminQuery(`
      CREATE TABLE public.cdc_always (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id text NOT NULL DEFAULT NULLIF(current_setting('strata.tenant_id', true), ''),
        label text NOT NULL,
        label_len int GENERATED ALWAYS AS (length(label)) STORED
      );
      ALTER TABLE public.cdc_always ENABLE ROW LEVEL SECURITY;
      ALTER TABLE public.cdc_always FORCE ROW LEVEL SECURITY;
      CREATE POLICY tenant_isolation ON public.cdc_always USING (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''))
        WITH CHECK (tenant_id = NULLIF(current_setting('strata.tenant_id', true), ''));
      GRANT SELECT, INSERT, UPDATE, DELETE ON public.cdc_always TO strata_tenant;
      SELECT strata.enable_capture('public.cdc_always');
    `);
    await t.app.services.schema.refresh();
    const created = await call('POST', '/v1/tables/cdc_always/rows', writer, [{ label: 'first' }, { label: 'second' }]);
    expect(created.status).toBe(201);
    const id = String(((created.body['data'] as Json[])[0] as Json)['id']);
    expect((await call('DELETE', `/v1/tables/cdc_always/rows/${id}`, writer)).status).toBe(200);
    const hist = (await call('GET', `/v1/tables/cdc_always/rows/${id}/history`, reader)).body['data'] as Event[];
    const del = hist.at(-1)!;
    expect(del.op).toBe('delete');
    const back = await call('POST', `/v1/changes/${del.id}/undo`, writer);
    expect(back.status).toBe(200);
    expect(back.body['data']).toMatchObject({ op: 'insert', row: { id: Number(id), label: 'first', label_len: 5 } });
    const row = await call('GET', `/v1/tables/cdc_always/rows/${id}`, reader);
    expect(row.status).toBe(200);
    expect(row.body['data']).toMatchObject({ id: Number(id), label: 'first' });
    // and an update of the restored row is undone too (the identity column is left alone)
    expect((await call('PATCH', `/v1/tables/cdc_always/rows/${id}`, writer, { label: 'renamed' })).status).toBe(200);
    const upd = ((await call('GET', `/v1/tables/cdc_always/rows/${id}/history`, reader)).body['data'] as Event[]).at(-1)!;
    const undone = await call('POST', `/v1/changes/${upd.id}/undo`, writer);
    expect(undone.status).toBe(200);
    expect(undone.body['data']).toMatchObject({ op: 'update', row: { id: Number(id), label: 'first', label_len: 5 } });
    expect(Number((await t.db.adminQuery<{ n: string }>('SELECT count(*) AS n FROM public.cdc_always')).rows[0]!.n)).toBe(2);
  });

  it('refuses an undo with 409 and both versions when the row changed since, writing nothing', async () => {
    const id = await insertPipeline('cdc-conflict');
    await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, { description: 'first' });
    await call('PATCH', `/v1/tables/pipelines/rows/${id}`, writer, { description: 'second' });
    const events = (await call('GET', `/v1/tables/pipelines/rows/${id}/history`, reader)).body['data'] as Event[];
    const start = await count();
    const r = await call('POST', `/v1/changes/${events[1]!.id}/undo`, writer);
    expect(r.status).toBe(409);
    expect(code(r)).toBe('UNDO_CONFLICT');
    const details = (r.body['error'] as Json)['details'] as { expected: Json; current: Json };
    expect(details.expected['description']).toBe('first');
    expect(details.current['description']).toBe('second');
    expect(await count()).toBe(start);
    const row = await call('GET', `/v1/tables/pipelines/rows/${id}`, reader);
    expect((row.body['data'] as Json)['description']).toBe('second');
    // undoing an insert whose row was deleted since is a conflict too
    await call('DELETE', `/v1/tables/pipelines/rows/${id}`, writer);
    const r2 = await call('POST', `/v1/changes/${events[0]!.id}/undo`, writer);
    expect(r2.status).toBe(409);
    expect(((r2.body['error'] as Json)['details'] as Json)['current']).toBeNull();
  });

  it('keeps undo to writers of the same tenant and rejects bad ids, writing nothing', async () => {
    const id = await insertPipeline('cdc-undo-guard');
    const ev = ((await call('GET', `/v1/tables/pipelines/rows/${id}/history`, reader)).body['data'] as Event[])[0]!;
    const start = await count();
    const r1 = await call('POST', `/v1/changes/${ev.id}/undo`, reader);
    expect(r1.status).toBe(403);
    const r2 = await call('POST', `/v1/changes/${ev.id}/undo`, globex);
    expect(r2.status).toBe(404);
    expect(code(r2)).toBe('CHANGE_NOT_FOUND');
    const r3 = await call('POST', '/v1/changes/not-a-number/undo', writer);
    expect(r3.status).toBe(400);
    expect(code(r3)).toBe('BAD_CURSOR');
    expect(await count()).toBe(start);
    expect((await call('GET', `/v1/tables/pipelines/rows/${id}`, reader)).status).toBe(200);
  });

  it('never shows one tenant the events of another', async () => {
    await insertPipeline('cdc-globex', globex);
    const acmeEvents = await allChanges(reader);
    const globexEvents = await allChanges(globex);
    expect(acmeEvents.length).toBeGreaterThan(0);
    expect(acmeEvents.every((e) => e.tenant_id === 'acme')).toBe(true);
    expect(globexEvents.length).toBeGreaterThan(0);
    expect(globexEvents.every((e) => e.tenant_id === 'globex')).toBe(true);
  });

  describe('SSE over a real socket', () => {
    beforeAll(async () => {
      await t.app.listen({ port: PORT, host: '127.0.0.1' });
    });

    /** Open a stream, collect `n` change messages, then disconnect. */
    function collect(headers: Record<string, string>, query: string, n: number): Promise<{ ids: string[]; events: Event[]; heartbeats: number }> {
      return new Promise((resolve, reject) => {
        const events: Event[] = [];
        let heartbeats = 0;
        let buf = '';
        const req = http.get({ host: '127.0.0.1', port: PORT, path: `/v1/changes/stream${query}`, headers }, (res) => {
          if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buf += chunk;
            let i: number;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const block = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (block.startsWith(': heartbeat')) heartbeats++;
              const data = block.split('\n').find((l) => l.startsWith('data: '));
              if (data && block.includes('event: change')) events.push(JSON.parse(data.slice(6)) as Event);
              if (events.length >= n && heartbeats > 0) {
                req.destroy();
                resolve({ ids: events.map((e) => e.id), events, heartbeats });
                return;
              }
            }
          });
        });
        req.on('error', (err) => {
          if (events.length < n) reject(err);
        });
      });
    }

    it('streams new events, and resumes from Last-Event-ID without loss or duplicates', async () => {
      const head = (await allChanges(reader)).at(-1)!.id;
      const firstRun = collect(writer, `?after=${head}&table=pipelines`, 3);
      for (let i = 0; i < 3; i++) await insertPipeline(`sse-${i}`);
      const first = await firstRun;
      expect(first.events.map((e) => e.after?.['name'])).toEqual(['sse-0', 'sse-1', 'sse-2']);
      // written while disconnected
      for (let i = 3; i < 6; i++) await insertPipeline(`sse-${i}`);
      const lastId = first.ids.at(-1)!;
      const secondRun = collect({ ...writer, 'last-event-id': lastId }, '?after=0', 4);
      await insertPipeline('sse-6');
      const second = await secondRun;
      expect(second.events.map((e) => e.after?.['name'])).toEqual(['sse-3', 'sse-4', 'sse-5', 'sse-6']);
      const ids = [...first.ids, ...second.ids];
      expect(new Set(ids).size).toBe(ids.length);
      expect([...ids].sort((a, b) => Number(BigInt(a) - BigInt(b)))).toEqual(ids);
      expect(second.heartbeats).toBeGreaterThan(0);
    });

    it('streams only the caller tenant\'s events', async () => {
      const head = (await allChanges(globex)).at(-1)?.id ?? '0';
      const run = collect(globex, `?after=${head}`, 1);
      await insertPipeline('sse-acme-private');
      await insertPipeline('sse-globex', globex);
      const got = await run;
      expect(got.events.map((e) => [e.tenant_id, e.after?.['name']])).toEqual([['globex', 'sse-globex']]);
    });

    it('delivers the GraphQL subscription changes(table:) over a WebSocket, tenant-scoped', async () => {
      const head = (await allChanges(reader)).at(-1)?.id ?? '0';
      const ws = new WebSocket(`ws://127.0.0.1:${PORT}/graphql`, 'graphql-transport-ws', { headers: reader });
      const got: Array<{ id: string; op: string; tenant_id: string; after: Json | null }> = [];
      const done = new Promise<void>((resolve, reject) => {
        ws.on('error', reject);
        ws.on('open', () => ws.send(JSON.stringify({ type: 'connection_init', payload: {} })));
        ws.on('message', (raw: Buffer) => {
          const msg = JSON.parse(raw.toString()) as { type: string; payload?: { data?: { changes: (typeof got)[number] }; errors?: unknown } };
          if (msg.type === 'connection_ack') {
            ws.send(
              JSON.stringify({
                id: '1',
                type: 'subscribe',
                payload: { query: `subscription { changes(table: ["pipelines"], after: "${head}") { id op tenant_id after } }` },
              }),
            );
            // written after the subscription is registered: globex's must never arrive
            setTimeout(() => {
              void (async () => {
                await insertPipeline('gql-globex', globex);
                await insertPipeline('gql-1');
                await insertPipeline('gql-2');
              })();
            }, 50);
          } else if (msg.type === 'next' && msg.payload?.data) {
            got.push(msg.payload.data.changes);
            if (got.length === 2) {
              ws.send(JSON.stringify({ id: '1', type: 'complete' }));
              ws.close();
              resolve();
            }
          } else if (msg.type === 'error' || msg.payload?.errors) reject(new Error(JSON.stringify(msg)));
        });
      });
      await done;
      expect(got.map((e) => [e.tenant_id, e.op, e.after?.['name']])).toEqual([
        ['acme', 'insert', 'gql-1'],
        ['acme', 'insert', 'gql-2'],
      ]);
    });

    it('rejects a bad Last-Event-ID with 400 before streaming', async () => {
      const r = await t.app.inject({ method: 'GET', url: '/v1/changes/stream', headers: { ...reader, 'last-event-id': 'nope' } });
      expect(r.statusCode).toBe(400);
      expect(r.json<{ error: { code: string } }>().error.code).toBe('BAD_CURSOR');
    });
  });

  it('notifies LISTENers at commit only for tables captured with notify', async () => {
    const listener = new pg.Client({ connectionString: t.database.url });
    await listener.connect();
    const got: string[] = [];
    listener.on('notification', (m) => got.push(m.payload ?? ''));
    try {
      await listener.query('LISTEN strata_changes');
      await insertPipeline('quiet-by-default');
      await t.db.adminQuery("SELECT strata.enable_capture('public.pipelines', true)");
      await insertPipeline('notifying');
      await vi.waitFor(() => expect(got.length).toBeGreaterThan(0), { timeout: 5000, interval: 20 });
      await listener.query('SELECT 1'); // every notification of both (committed) writes is in by now
      expect(got).toEqual(['acme']);
      // still captured the same way
      expect((await allChanges()).at(-1)?.after?.['name']).toBe('notifying');
    } finally {
      await t.db.adminQuery("SELECT strata.enable_capture('public.pipelines')");
      await listener.end();
    }
  });

  it('ends open change streams cleanly when the server shuts down', async () => {
    const other = await createTestApp();
    let closed = false;
    let closing: Promise<void> = Promise.resolve();
    try {
      await other.app.listen({ port: 3227, host: '127.0.0.1' });
      const headers = await other.auth('reader', 'acme');
      const ended = new Promise<string>((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port: 3227, path: '/v1/changes/stream', headers }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            body += c;
            // the stream is open: now shut the server down under it
            if (body.includes(': stream of change events') && !closed) {
              closed = true;
              closing = other.close();
            }
          });
          res.on('end', () => resolve(body));
        });
        req.on('error', reject);
      });
      const body = await ended;
      expect(body.startsWith(': stream of change events')).toBe(true);
      await closing; // the app's close completes: nothing held it open
    } finally {
      if (!closed) await other.close();
    }
  });

  it('creates partitions ahead and drops those past retention', async () => {
    await t.db.adminQuery("SELECT strata.ensure_change_partition(((now() AT TIME ZONE 'UTC')::date - 40))");
    const parts = async () =>
      (await t.db.adminQuery<{ relname: string }>("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'strata.changes'::regclass")).rows.map(
        (r) => r.relname,
      );
    const today = new Date().toISOString().slice(0, 10).replace(/-/g, '');
    const old = new Date(Date.now() - 40 * 86_400_000).toISOString().slice(0, 10).replace(/-/g, '');
    expect(await parts()).toContain(`changes_p${old}`);
    const { rows } = await t.db.adminQuery<{ created: number; dropped: number }>('SELECT * FROM strata.maintain_change_partitions(10, 30)');
    expect(rows[0]?.dropped).toBe(1);
    const after = await parts();
    expect(after).toContain(`changes_p${today}`);
    expect(after).not.toContain(`changes_p${old}`);
    expect(after.filter((p) => p !== 'changes_default').length).toBeGreaterThanOrEqual(11);
  });
});
