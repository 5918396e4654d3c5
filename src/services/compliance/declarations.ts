/**
 * Column declarations (PUT/GET/DELETE /v1/admin/compliance/columns/...): which columns are
 * encrypted, which hold PII of which category, and how each role sees them. Declarations are
 * schema-wide (every tenant's rows share the tables), made by platform_admin and readable by tenant
 * admins; they live in strata.compliance_columns so every process sees the same policy.
 */
import type { Database } from '../../db/database.js';
import { ROLES, type RequestContext, type Role } from '../../domain.js';
import pg from 'pg';
import { badRequest, conflict, notFound } from '../../errors.js';
import type { SchemaRegistry } from '../data/index.js';
import { checkNoViewUses } from './lineage.js';
import { applyMask, parseMaskRule, PII_CATEGORIES, type MaskRule, type PiiCategory } from './masking.js';

export interface ColumnPolicy {
  table: string;
  column: string;
  encrypted: boolean;
  searchable: boolean;
  pii: PiiCategory | null;
  /** Masking rule per role; a role without one sees `null` (fail closed) unless in plaintext_roles. */
  masks: Partial<Record<Role, MaskRule>>;
  /** Roles that read the plaintext (rule `full`). */
  plaintext_roles: Role[];
  /** Encrypted under the key of the subject this column of the row names (null: the tenant's key). */
  subject_column?: string | null;
  declared_by: string;
  declared_at: string;
}

export interface DeclareInput {
  encrypted?: boolean;
  searchable?: boolean;
  pii?: string | null;
  masks?: Record<string, unknown>;
  plaintext_roles?: string[];
  subject_column?: string | null;
}

/** The companion column holding a searchable encrypted column's blind index. */
export const blindIndexColumn = (column: string) => `${column}_bidx`;

const TEXT_TYPES = new Set(['text', 'varchar', 'bpchar']);

interface Row {
  table_name: string;
  column_name: string;
  encrypted: boolean;
  searchable: boolean;
  pii: PiiCategory | null;
  masks: Partial<Record<Role, MaskRule>>;
  plaintext_roles: Role[];
  subject_column: string | null;
  declared_by: string;
  declared_at: Date;
}

const toPolicy = (r: Row): ColumnPolicy => ({
  table: r.table_name,
  column: r.column_name,
  encrypted: r.encrypted,
  searchable: r.searchable,
  pii: r.pii,
  masks: r.masks,
  plaintext_roles: r.plaintext_roles,
  subject_column: r.subject_column ?? null,
  declared_by: r.declared_by,
  declared_at: r.declared_at.toISOString(),
});

function isRole(r: unknown): r is Role {
  return typeof r === 'string' && (ROLES as readonly string[]).includes(r);
}

/** The rule a role reads a declared column with. */
export function ruleFor(policy: Pick<ColumnPolicy, 'masks' | 'plaintext_roles'>, role: Role): MaskRule {
  if (policy.plaintext_roles.includes(role)) return 'full';
  return policy.masks[role] ?? 'null';
}

/** A value as `role` may see it (the plaintext, already decrypted when the column is encrypted). */
export function maskValue(policy: Pick<ColumnPolicy, 'masks' | 'plaintext_roles' | 'pii'>, role: Role, value: unknown): unknown {
  return applyMask(value, ruleFor(policy, role), policy.pii);
}

export function createDeclarations(deps: { db: Database; schema: SchemaRegistry }) {
  const { db, schema } = deps;

  async function validate(table: string, column: string, input: DeclareInput) {
    const info = await schema.table(table);
    const col = info.columnMap.get(column);
    if (!col) throw badRequest('UNKNOWN_COLUMN', `table ${table} has no column ${column}`);
    if (input.pii !== undefined && input.pii !== null && !(PII_CATEGORIES as readonly string[]).includes(input.pii)) {
      throw badRequest('INVALID_PII_CATEGORY', `pii "${input.pii}" is not one of ${PII_CATEGORIES.join(', ')}`);
    }
    const masks: Partial<Record<Role, MaskRule>> = {};
    for (const [role, rule] of Object.entries(input.masks ?? {})) {
      if (!isRole(role)) throw badRequest('INVALID_ROLE', `masks: "${role}" is not a role (${ROLES.join(', ')})`);
      masks[role] = parseMaskRule(rule, `masks.${role}`);
    }
    const plaintext = input.plaintext_roles ?? [];
    for (const role of plaintext) if (!isRole(role)) throw badRequest('INVALID_ROLE', `plaintext_roles: "${String(role)}" is not a role (${ROLES.join(', ')})`);
    const encrypted = input.encrypted ?? false;
    const searchable = input.searchable ?? false;
    if (searchable && !encrypted) throw badRequest('SEARCHABLE_NEEDS_ENCRYPTED', `searchable applies to encrypted columns only (${table}.${column})`);
    if (encrypted) {
      if (!TEXT_TYPES.has(col.udt) || col.isArray) {
        throw badRequest('ENCRYPTED_COLUMN_TYPE', `${table}.${column} is ${col.type}; an encrypted column holds ciphertext text (text or varchar)`);
      }
      if (col.maxLength !== null) {
        throw badRequest('ENCRYPTED_COLUMN_TYPE', `${table}.${column} is ${col.type}; ciphertext is longer than its plaintext, so use text (no length limit)`);
      }
      if (info.primaryKey.includes(column)) throw badRequest('ENCRYPTED_KEY_COLUMN', `${table}.${column} is part of the primary key and cannot be encrypted`);
      if (searchable) {
        const bidx = info.columnMap.get(blindIndexColumn(column));
        if (!bidx || !TEXT_TYPES.has(bidx.udt)) {
          throw badRequest('BLIND_INDEX_COLUMN_MISSING', `a searchable ${table}.${column} needs a text column ${blindIndexColumn(column)} for its blind index (add it, with an index on (tenant_id, ${blindIndexColumn(column)}), in a migration)`);
        }
      }
    }
    const subjectColumn = input.subject_column ?? null;
    if (subjectColumn !== null) {
      if (!encrypted) throw badRequest('SUBJECT_KEY_NEEDS_ENCRYPTED', `subject_column applies to encrypted columns only (${table}.${column})`);
      if (!info.columnMap.has(subjectColumn)) throw badRequest('UNKNOWN_COLUMN', `table ${table} has no column ${subjectColumn}`);
      if (subjectColumn === column) throw badRequest('INVALID_SUBJECT_COLUMN', `${table}.${column} cannot be keyed by its own value`);
      const { rows: subj } = await db.adminQuery<{ columns: string[] }>(`SELECT columns FROM strata.compliance_subjects WHERE table_name = $1`, [table]);
      if (!subj[0]?.columns.includes(subjectColumn)) {
        throw badRequest('SUBJECT_COLUMN_NOT_DECLARED', `${table}.${subjectColumn} is not a declared subject column of ${table} (PUT /v1/admin/compliance/subjects/${table} first): the erasure must find the rows whose values it shreds`, { table, column: subjectColumn });
      }
    }
    return { masks, plaintext: plaintext as Role[], encrypted, searchable, pii: (input.pii ?? null) as PiiCategory | null, subjectColumn };
  }

  return {
    async declare(ctx: RequestContext, table: string, column: string, input: DeclareInput): Promise<ColumnPolicy> {
      const v = await validate(table, column, input);
      await checkNoViewUses(db, table, column);
      if (!v.encrypted) await refuseDecryption(db, schema, table, column);
      const { rows } = await db.adminQuery<Row>(
        `INSERT INTO strata.compliance_columns (table_name, column_name, encrypted, searchable, pii, masks, plaintext_roles, declared_by, subject_column)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (table_name, column_name) DO UPDATE SET encrypted = EXCLUDED.encrypted, searchable = EXCLUDED.searchable,
           pii = EXCLUDED.pii, masks = EXCLUDED.masks, plaintext_roles = EXCLUDED.plaintext_roles,
           declared_by = EXCLUDED.declared_by, declared_at = now(), subject_column = EXCLUDED.subject_column
         RETURNING *`,
        [table, column, v.encrypted, v.searchable, v.pii, JSON.stringify(v.masks), v.plaintext, ctx.actor, v.subjectColumn],
      );
      return toPolicy(rows[0]!);
    },
    async list(filter: { table?: string } = {}): Promise<ColumnPolicy[]> {
      const { rows } = await db.adminQuery<Row>(
        `SELECT * FROM strata.compliance_columns WHERE $1::text IS NULL OR table_name = $1 ORDER BY table_name, column_name`,
        [filter.table ?? null],
      );
      return rows.map(toPolicy);
    },
    async get(table: string, column: string): Promise<ColumnPolicy> {
      const { rows } = await db.adminQuery<Row>(`SELECT * FROM strata.compliance_columns WHERE table_name = $1 AND column_name = $2`, [table, column]);
      if (!rows[0]) throw notFound('COLUMN_NOT_DECLARED', `${table}.${column} has no compliance declaration`);
      return toPolicy(rows[0]);
    },
    async remove(table: string, column: string): Promise<void> {
      await refuseDecryption(db, schema, table, column);
      const { rowCount } = await db.adminQuery(`DELETE FROM strata.compliance_columns WHERE table_name = $1 AND column_name = $2`, [table, column]);
      if (!rowCount) throw notFound('COLUMN_NOT_DECLARED', `${table}.${column} has no compliance declaration`);
    },
  };
}

export type Declarations = ReturnType<typeof createDeclarations>;

/**
 * Un-declaring encryption (PUT with encrypted false, or DELETE) of a column that still holds
 * ciphertext is refused: 409 COLUMN_HOLDS_CIPHERTEXT. Decrypting would write the plaintext back into
 * the table, the change log and every later backup: the opposite of what the declaration was made
 * for, so it is not done silently by a declaration change. (Without ciphertext, nothing to undo.)
 */
async function refuseDecryption(db: Database, schema: SchemaRegistry, table: string, column: string): Promise<void> {
  const { rows } = await db.adminQuery<{ encrypted: boolean }>(`SELECT encrypted FROM strata.compliance_columns WHERE table_name = $1 AND column_name = $2`, [table, column]);
  if (!rows[0]?.encrypted) return;
  const info = await schema.table(table);
  if (!info.columnMap.has(column)) return;
  const { rowCount } = await db.adminQuery(`SELECT 1 FROM ${info.qualified} WHERE ${pg.escapeIdentifier(column)} LIKE 'sx1.%' OR ${pg.escapeIdentifier(column)} LIKE 'sxs1.%' LIMIT 1`);
  if (rowCount) {
    throw conflict('COLUMN_HOLDS_CIPHERTEXT', `${table}.${column} holds encrypted values: it cannot stop being encrypted (that would leave ciphertext no read decrypts, or write the plaintext back); keep it encrypted and change its masks instead`, { table, column });
  }
}
