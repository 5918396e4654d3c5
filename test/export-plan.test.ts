/**
 * The pure parts of exports: literal inlining (COPY takes no bind parameters) and row counting over
 * COPY output split at arbitrary chunk boundaries. The database-facing behaviour is in
 * test/exports.test.ts and test/export-jobs.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { inlineBuilderParams, inlineStatementParams, sqlLiteral } from '../src/services/exports/index.js';
import { rowCounter } from '../src/services/exports/index.js';
import { csvField } from './helpers/export-data.js';

describe('sqlLiteral', () => {
  it('quotes values as PostgreSQL literals, arrays as array literals, null as NULL', () => {
    expect(sqlLiteral(null)).toBe('NULL');
    expect(sqlLiteral("it's")).toBe("'it''s'");
    expect(sqlLiteral('back\\slash')).toBe(" E'back\\\\slash'");
    expect(sqlLiteral(42)).toBe("'42'");
    expect(sqlLiteral(true)).toBe("'true'");
    expect(sqlLiteral(['a', 'b"c', null])).toBe(` E'{"a","b\\\\"c",NULL}'`); // the element's backslash escape is itself escaped
    expect(sqlLiteral({ k: "v'" })).toBe(`'{"k":"v''"}'`);
  });
});

describe('inlineBuilderParams', () => {
  it('replaces $n outside quoted identifiers and strings only', () => {
    const sql = `SELECT t0."a$1" FROM "public"."x" t0 WHERE t0."b" = $1 AND t0."c" = ANY($2) AND '$1' <> $10`;
    const values = ['v', [1, 2], 3, 4, 5, 6, 7, 8, 9, "ten'"];
    expect(inlineBuilderParams(sql, values)).toBe(`SELECT t0."a$1" FROM "public"."x" t0 WHERE t0."b" = 'v' AND t0."c" = ANY('{"1","2"}') AND '$1' <> 'ten'''`);
  });
});

describe('inlineStatementParams', () => {
  it('replaces parameters where the parser finds them, not inside strings, comments or dollar quotes', async () => {
    const sql = "SELECT 'é $1' AS a, $1::int AS b /* $2 */, $$ $2 $$ AS c, $2 AS d";
    expect(await inlineStatementParams(sql, [7, "x'y"])).toBe("SELECT 'é $1' AS a, '7'::int AS b /* $2 */, $$ $2 $$ AS c, 'x''y' AS d");
  });
});

describe('rowCounter', () => {
  const csv = ['id,name', ...Array.from({ length: 50 }, (_, i) => `${i},${csvField(i % 3 === 0 ? `a\n"b",\r\nc${i}` : `p${i}`)}`)].join('\n') + '\n';

  it('counts CSV rows with quoted newlines at every chunk size, header excluded', () => {
    for (const size of [1, 2, 3, 7, 64, csv.length]) {
      const c = rowCounter('csv');
      const buf = Buffer.from(csv);
      for (let i = 0; i < buf.length; i += size) c.push(buf.subarray(i, i + size));
      expect(c.rows, `chunk size ${size}`).toBe(50);
    }
  });

  it('counts NDJSON lines', () => {
    const c = rowCounter('ndjson');
    c.push(Buffer.from('{"a":"x\\ny"}\n{"a'));
    c.push(Buffer.from('":1}\n'));
    expect(c.rows).toBe(2);
  });
});
