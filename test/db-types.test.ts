import { readFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkLiterals, introspect, OUTPUT_FILE, renderTypes } from '../scripts/gen-db-types.js';
import { createTestDatabase, type TestDatabase } from './helpers/databases.js';

describe('generated Kysely types (src/db/generated/tenant-db.ts)', () => {
  let database: TestDatabase;
  let client: pg.Client;
  beforeAll(async () => {
    database = await createTestDatabase(); // a clone of the template every migration was applied to
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
  });
  afterAll(async () => {
    await client.end();
    await database.drop();
  });

  it('matches what the generator makes of the migrated schema (run `npm run db:types` when this fails)', async () => {
    const generated = renderTypes(await introspect(client));
    const committed = await readFile(path.resolve(OUTPUT_FILE), 'utf8');
    expect(committed).toBe(generated);
  });

  it('depends on the catalog only, not on the order rows arrive in', async () => {
    const columns = await introspect(client);
    const shuffled = columns.map((c, i) => ({ c, k: (i * 7919) % 101 })).sort((a, b) => a.k - b.k).map((x) => x.c);
    expect(renderTypes(shuffled)).toBe(renderTypes(columns));
  });

  it('types defaults, identities, nullability, bigint, jsonb, timestamps and CHECK literal lists', async () => {
    const out = renderTypes(await introspect(client));
    expect(out).toContain("status: Defaulted<'active' | 'paused' | 'archived'>;");
    expect(out).toContain('id: Defaulted<Int8>;');
    expect(out).toContain('params: Defaulted<Json>;');
    expect(out).toContain('export type Defaulted<T> = ColumnType<SelectType<T>, InsertType<T> | undefined, UpdateType<T>>;');
    expect(out).toContain('started_at: Timestamp | null;');
    expect(out).toContain('  pipelines: Pipelines;');
    expect(out).toContain("  'strata.api_keys': StrataApiKeys;");
    expect(out).not.toContain('schema_migrations');
  });

  it('reads only exact `col = ANY (ARRAY[...])` checks as literal unions', () => {
    expect(checkLiterals("CHECK ((status = ANY (ARRAY['a'::text, 'it''s'::text])))", 'status')).toEqual(['a', "it's"]);
    expect(checkLiterals("CHECK (((level)::text = ANY ((ARRAY['x'::character varying, 'y'::character varying])::text[])))", 'level')).toEqual(['x', 'y']);
    expect(checkLiterals("CHECK ((status = ANY (ARRAY['a'::text])))", 'other')).toBeNull();
    expect(checkLiterals('CHECK ((duration_ms >= 0))', 'duration_ms')).toBeNull();
  });
});
