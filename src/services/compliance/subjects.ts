/**
 * Subject declarations (PUT/GET/DELETE /v1/admin/compliance/subjects/{table}): which columns of a
 * table identify a data subject (a row belongs to subject X when any of them equals X) and what an
 * erasure does to its rows: `delete` them, or `anonymize` them (the subject columns and every
 * declared PII column set to null, or to an `erased:<uuid>` tombstone where the column is NOT NULL
 * text). Schema-wide like the column declarations: platform_admin declares, tenant admins read.
 * Kept apart from strata.compliance_columns so that API stays as it is.
 */
import type { Database } from '../../db/database.js';
import type { RequestContext } from '../../domain.js';
import { badRequest, notFound } from '../../errors.js';
import type { SchemaRegistry, TableInfo } from '../data/index.js';

export type SubjectAction = 'delete' | 'anonymize';
export const SUBJECT_ACTIONS: readonly SubjectAction[] = ['delete', 'anonymize'];

export interface SubjectDeclaration {
  table: string;
  columns: string[];
  action: SubjectAction;
  declared_by: string;
  declared_at: string;
}

interface Row {
  table_name: string;
  columns: string[];
  action: SubjectAction;
  declared_by: string;
  declared_at: Date;
}

const toDecl = (r: Row): SubjectDeclaration => ({ table: r.table_name, columns: r.columns, action: r.action, declared_by: r.declared_by, declared_at: r.declared_at.toISOString() });

const TEXT = new Set(['text', 'varchar', 'bpchar']);

/** Whether a column can take an erasure tombstone or null when its row is anonymized. */
export function anonymizable(t: TableInfo, column: string): { ok: true } | { ok: false; why: string } {
  const c = t.columnMap.get(column);
  if (!c) return { ok: false, why: `table ${t.name} has no column ${column}` };
  if (t.primaryKey.includes(column)) return { ok: false, why: `${t.name}.${column} is part of the primary key` };
  if (t.foreignKeys.some((fk) => fk.columns.includes(column)) && !c.nullable) return { ok: false, why: `${t.name}.${column} is a NOT NULL foreign key` };
  if (!c.nullable && !(TEXT.has(c.udt) && !c.isArray)) return { ok: false, why: `${t.name}.${column} is NOT NULL ${c.type}: it can be neither nulled nor tombstoned` };
  return { ok: true };
}

export function createSubjects(deps: { db: Database; schema: SchemaRegistry }) {
  const { db, schema } = deps;
  return {
    async declare(ctx: RequestContext, table: string, input: { columns: string[]; action: string }): Promise<SubjectDeclaration> {
      const info = await schema.table(table);
      if (!info.hasTenantId) throw badRequest('NOT_A_TENANT_TABLE', `table ${table} has no tenant_id: subjects are a tenant's data`);
      if (!(SUBJECT_ACTIONS as readonly string[]).includes(input.action)) {
        throw badRequest('INVALID_SUBJECT_ACTION', `action "${input.action}" is not one of ${SUBJECT_ACTIONS.join(', ')}`);
      }
      const columns = input.columns;
      if (!columns.length) throw badRequest('SUBJECT_COLUMNS_REQUIRED', 'columns names at least one column identifying the subject');
      for (const col of columns) {
        if (!info.columnMap.has(col)) throw badRequest('UNKNOWN_COLUMN', `table ${table} has no column ${col}`);
        if (col === 'tenant_id') throw badRequest('INVALID_SUBJECT_COLUMN', 'tenant_id identifies a tenant, not a data subject');
        if (input.action === 'anonymize') {
          const a = anonymizable(info, col);
          if (!a.ok) throw badRequest('SUBJECT_COLUMN_NOT_ANONYMIZABLE', `${a.why}: declare action "delete" for ${table}, or a nullable column`);
        }
      }
      const { rows } = await db.adminQuery<Row>(
        `INSERT INTO strata.compliance_subjects (table_name, columns, action, declared_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (table_name) DO UPDATE SET columns = EXCLUDED.columns, action = EXCLUDED.action, declared_by = EXCLUDED.declared_by, declared_at = now()
         RETURNING *`,
        [table, columns, input.action, ctx.actor],
      );
      return toDecl(rows[0]!);
    },
    async list(): Promise<SubjectDeclaration[]> {
      const { rows } = await db.adminQuery<Row>(`SELECT * FROM strata.compliance_subjects ORDER BY table_name`);
      return rows.map(toDecl);
    },
    async get(table: string): Promise<SubjectDeclaration> {
      const { rows } = await db.adminQuery<Row>(`SELECT * FROM strata.compliance_subjects WHERE table_name = $1`, [table]);
      if (!rows[0]) throw notFound('SUBJECT_NOT_DECLARED', `table ${table} has no subject declaration`);
      return toDecl(rows[0]);
    },
    async remove(table: string): Promise<void> {
      const { rowCount } = await db.adminQuery(`DELETE FROM strata.compliance_subjects WHERE table_name = $1`, [table]);
      if (!rowCount) throw notFound('SUBJECT_NOT_DECLARED', `table ${table} has no subject declaration`);
    },
  };
}

export type Subjects = ReturnType<typeof createSubjects>;
