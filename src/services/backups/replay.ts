/**
 * Change-log replay (point-in-time recovery): applies change events (the CDC contract: table_name
 * unqualified in schema public, pk/before/after as jsonb images) to a restored database, in order,
 * with `session_replication_role = replica` so neither foreign-key nor capture triggers fire and
 * nothing is captured again. Consecutive events of one table and operation are applied as one
 * set-based statement (jsonb_populate_recordset), as long as no primary key repeats in the batch.
 * The replayed events are also appended to the target's own change log, so it reads as the source's
 * did at that instant.
 */
import type pg from 'pg';
import { quoteIdent } from './pg.js';
import type { ChangeEvent } from './backups.js';

interface TableInfo {
  ident: string;
  /** Columns that can be written (not generated). */
  columns: string[];
  /** Columns that may be set by UPDATE (not GENERATED ALWAYS identities). */
  updatable: string[];
  pk: string[];
  /** Columns backed by a sequence, to advance after replay. */
  sequenced: Array<{ column: string; sequence: string }>;
}

const BATCH = 1000;

export interface ReplayStats {
  applied: number;
  tables: string[];
  last_id: string | null;
}

export function createApplier(c: pg.ClientBase, opts: { copyToChangeLog: boolean }) {
  const tables = new Map<string, TableInfo>();
  const touched = new Set<string>();
  let batch: ChangeEvent[] = [];
  let keys = new Set<string>();
  let applied = 0;
  let lastId: string | null = null;

  async function info(name: string): Promise<TableInfo> {
    const known = tables.get(name);
    if (known) return known;
    const { rows } = await c.query<{ attname: string; generated: boolean; always: boolean; pk: boolean; seq: string | null }>(
      `SELECT a.attname, a.attgenerated <> '' AS generated, a.attidentity = 'a' AS always,
              COALESCE(a.attnum = ANY(i.indkey), false) AS pk,
              pg_get_serial_sequence(format('public.%I', $1::text), a.attname) AS seq
         FROM pg_attribute a
         LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
        WHERE a.attrelid = to_regclass(format('public.%I', $1::text)) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum`,
      [name],
    );
    if (rows.length === 0) throw new Error(`change event for table ${name}, which does not exist in the restored database`);
    const t: TableInfo = {
      ident: `public.${quoteIdent(name)}`,
      columns: rows.filter((r) => !r.generated).map((r) => r.attname),
      updatable: rows.filter((r) => !r.generated && !r.always).map((r) => r.attname),
      pk: rows.filter((r) => r.pk).map((r) => r.attname),
      sequenced: rows.filter((r) => r.seq).map((r) => ({ column: r.attname, sequence: r.seq ?? '' })),
    };
    if (t.pk.length === 0) throw new Error(`table ${name} has no primary key; its change events cannot be replayed`);
    tables.set(name, t);
    return t;
  }

  async function flush(): Promise<void> {
    if (batch.length === 0) return;
    const first = batch[0] as ChangeEvent;
    const t = await info(first.table_name);
    const cols = t.columns.map(quoteIdent);
    // `=`, not IS NOT DISTINCT FROM: primary keys are never null, and only `=` can use the key's index.
    const match = (a: string, b: string) => t.pk.map((k) => `${a}.${quoteIdent(k)} = ${b}.${quoteIdent(k)}`).join(' AND ');
    if (first.op === 'insert') {
      await c.query(
        `INSERT INTO ${t.ident} (${cols.join(', ')}) OVERRIDING SYSTEM VALUE
         SELECT ${cols.map((x) => `r.${x}`).join(', ')} FROM jsonb_populate_recordset(NULL::${t.ident}, $1::jsonb) r`,
        [JSON.stringify(batch.map((e) => e.after))],
      );
    } else if (first.op === 'update') {
      await c.query(
        `UPDATE ${t.ident} AS t SET ${t.updatable.map((x) => `${quoteIdent(x)} = a.${quoteIdent(x)}`).join(', ')}
           FROM jsonb_array_elements($1::jsonb) e,
                jsonb_populate_record(NULL::${t.ident}, e->'after') a,
                jsonb_populate_record(NULL::${t.ident}, e->'pk') k
          WHERE ${match('t', 'k')}`,
        [JSON.stringify(batch.map((e) => ({ pk: e.pk, after: e.after })))],
      );
    } else {
      await c.query(`DELETE FROM ${t.ident} AS t USING jsonb_populate_recordset(NULL::${t.ident}, $1::jsonb) k WHERE ${match('t', 'k')}`, [
        JSON.stringify(batch.map((e) => e.pk)),
      ]);
    }
    if (opts.copyToChangeLog) {
      await c.query(
        `INSERT INTO strata.changes (id, txid, tenant_id, table_name, op, pk, before, after, actor, at)
         SELECT id, txid, tenant_id, table_name, op, pk, before, after, actor, at
           FROM jsonb_populate_recordset(NULL::strata.changes, $1::jsonb)`,
        [JSON.stringify(batch)],
      );
    }
    touched.add(first.table_name);
    applied += batch.length;
    batch = [];
    keys = new Set();
  }

  return {
    /** Queue one event (in order); applied in batches. */
    async apply(e: ChangeEvent): Promise<void> {
      if (e.op !== 'insert' && e.op !== 'update' && e.op !== 'delete') throw new Error(`change ${e.id} has an unknown op ${String(e.op)}`);
      const prev = batch[0];
      const key = JSON.stringify(e.pk);
      if (prev && (prev.table_name !== e.table_name || prev.op !== e.op || keys.has(key) || batch.length >= BATCH)) await flush();
      batch.push(e);
      keys.add(key);
      lastId = e.id;
    },
    flush,
    /** Flush, then advance the sequences of every table touched past the values replayed. */
    async finish(): Promise<ReplayStats> {
      await flush();
      for (const name of touched) {
        const t = await info(name);
        for (const s of t.sequenced) {
          await c.query(
            `SELECT setval($1::regclass, GREATEST((SELECT max(${quoteIdent(s.column)}) FROM ${t.ident}), (SELECT last_value FROM ${s.sequence})))
              WHERE (SELECT max(${quoteIdent(s.column)}) FROM ${t.ident}) IS NOT NULL`,
            [s.sequence],
          );
        }
      }
      if (opts.copyToChangeLog && lastId !== null) {
        const { rows } = await c.query<{ seq: string | null }>("SELECT pg_get_serial_sequence('strata.changes', 'id') AS seq");
        const seq = rows[0]?.seq;
        if (seq) await c.query(`SELECT setval($1::regclass, GREATEST((SELECT max(id) FROM strata.changes), (SELECT last_value FROM ${seq})))`, [seq]);
      }
      return { applied, tables: [...touched].sort(), last_id: lastId };
    },
    get applied() {
      return applied;
    },
  };
}
