/**
 * The one place the declared policy is applied (issue 15). Every read and write path asks it for a
 * per-request guard and calls the guard; nothing else decides what a role sees.
 *
 * - Policy: the declarations, loaded in one query and cached in process memory (POLICY_TTL_MS; a
 *   declaration made through this process applies at once). A table without declarations costs the
 *   hot path nothing: `guard()` answers undefined when nothing is declared at all, and the SQL of an
 *   undeclared table is unchanged.
 * - Reads: the SQL builders wrap each declared column's output with a tag naming its table and
 *   column (`columnSql`): `chr(31) || 'sx:<table>.<column>:' || to_json(value)`. `reveal()` walks the
 *   JSON the statement returned, decrypts tagged ciphertext (AAD: tenant, table, column) and applies
 *   the caller's rule, so aliases, casts, embeds and spreads cannot carry a value out unmasked. Every
 *   plaintext it lets through is recorded in the access audit (buffered: no round trip).
 * - Writes: `protectRow()` encrypts the plaintext of encrypted columns with the tenant's current data
 *   key and fills the blind index column of searchable ones; a blind index cannot be written directly.
 * - Filters and order: an encrypted column filters by equality through its blind index (`eq`, `neq`,
 *   `in` on searchable columns; `is` on any), everything else on it is 400; a column a role sees
 *   masked cannot be filtered or ordered by that role (a filter would be an oracle for the value).
 */
import { createHash } from 'node:crypto';
import type { Database } from '../../db/database.js';
import type { RequestContext, Role } from '../../domain.js';
import { AppError, badRequest } from '../../errors.js';
import type { AuditLog } from './audit.js';
import { ruleFor, blindIndexColumn, type ColumnPolicy, type Declarations } from './declarations.js';
import { blindIndex, decryptWithAad, encryptWithAad, fieldAad, isCiphertext, keyVersionOf } from './envelope.js';
import type { TenantKeys } from './keys.js';
import { parse } from '../data/index.js';
import { applyMask, compileMask, type MaskRule } from './masking.js';
import { hasSubjectKeyed, isSubjectFieldCiphertext, type SubjectFields } from './subject-fields.js';

const POLICY_TTL_MS = 2000;
/** The tag's prefix as it appears inside JSON text (chr(31) is escaped as \u001f). */
const TAG_JSON = '\\u001fsx:';
const TAG = '\u001fsx:';

export interface PolicySnapshot {
  readonly version: number;
  readonly tables: ReadonlyMap<string, ReadonlyMap<string, ColumnPolicy>>;
  readonly searchable: boolean;
}

/** What a builder needs to know of one declared column, for the caller's role. */
export interface GuardedColumn {
  encrypted: boolean;
  searchable: boolean;
  /** The role reads the plaintext. */
  plaintext: boolean;
}

/**
 * What reveal() does with one declared column for one role, made once per policy version and role
 * (not per request or value): its policy, the role's rule and the rule as a function. Keyed by the
 * column's tag prefix (`\u001fsx:<table>.<column>:`), so a tagged value finds its plan with one
 * lookup of the text before its value.
 */
interface ColumnPlan {
  readonly table: string;
  readonly column: string;
  readonly policy: ColumnPolicy;
  readonly rule: MaskRule;
  readonly mask: (value: unknown) => unknown;
}

const plansBySnapshot = new WeakMap<PolicySnapshot, Map<Role, Map<string, ColumnPlan>>>();

function plansFor(snap: PolicySnapshot, role: Role): Map<string, ColumnPlan> {
  let byRole = plansBySnapshot.get(snap);
  if (!byRole) plansBySnapshot.set(snap, (byRole = new Map<Role, Map<string, ColumnPlan>>()));
  let plans = byRole.get(role);
  if (!plans) {
    plans = new Map<string, ColumnPlan>();
    for (const [table, cols] of snap.tables) {
      for (const [column, policy] of cols) {
        const rule = ruleFor(policy, role);
        plans.set(`${TAG}${table}.${column}:`, { table, column, policy, rule, mask: compileMask(rule, policy.pii) });
      }
    }
    byRole.set(role, plans);
  }
  return plans;
}

export interface RevealOptions {
  /** Where the values go (`rows`, `graphql`, `export`, `search`...): recorded in the audit. */
  path: string;
}

const encryptedFilterError = (table: string, column: string, op: string) =>
  badRequest('ENCRYPTED_COLUMN_FILTER', `${table}.${column} is encrypted: only eq, neq and in (through its blind index, when declared searchable) and is.null can filter it, not ${op}`, { table, column });
const maskedFilterError = (table: string, column: string) =>
  badRequest('MASKED_COLUMN_FILTER', `${table}.${column} is masked for this role: it cannot be filtered or ordered by`, { table, column });

export function createEnforcement(deps: { db: Database; declarations: Declarations; keys: TenantKeys; audit: AuditLog; subjects?: SubjectFields }) {
  let snapshot: PolicySnapshot | undefined;
  let loadedAt = 0;
  let loading: Promise<PolicySnapshot> | undefined;
  let version = 0;

  function load(): Promise<PolicySnapshot> {
    loading ??= deps.declarations
      .list()
      .then((all) => {
        const tables = new Map<string, Map<string, ColumnPolicy>>();
        for (const p of all) {
          let t = tables.get(p.table);
          if (!t) tables.set(p.table, (t = new Map<string, ColumnPolicy>()));
          t.set(p.column, p);
        }
        snapshot = { version: ++version, tables, searchable: all.some((p) => p.searchable) };
        loadedAt = Date.now();
        return snapshot;
      })
      .finally(() => {
        loading = undefined;
      });
    return loading;
  }

  /** The policy: cached; past its TTL the cached one answers while a reload runs beside it. */
  function policy(): PolicySnapshot | Promise<PolicySnapshot> {
    if (!snapshot) return load();
    if (Date.now() - loadedAt > POLICY_TTL_MS && !loading) void load().catch(() => undefined);
    return snapshot;
  }

  /**
   * The guard of one request, or undefined when no column is declared at all (the common case:
   * nothing to do). It is cheap to make: the keys it needs come from the tenant key cache.
   */
  async function guard(ctx: RequestContext): Promise<Guard | undefined> {
    const p = policy();
    const snap = p instanceof Promise ? await p : p;
    if (snap.tables.size === 0) return undefined;
    let indexKey: Buffer | AppError | undefined;
    if (snap.searchable && ctx.tenantId) {
      try {
        indexKey = deps.keys.cached?.(ctx.tenantId, 'index', 'latest')?.key ?? (await deps.keys.index(ctx.tenantId));
      } catch (err) {
        if (!(err instanceof AppError)) throw err;
        indexKey = err;
      }
    }
    const g = new Guard(snap, ctx, deps.keys, deps.audit, indexKey);
    if (deps.subjects && hasSubjectKeyed(snap)) g.subjects = deps.subjects;
    return g;
  }

  /**
   * Analyst SQL (POST /v1/sql, SQL exports): encrypted columns read as the ciphertext stored, which
   * the sandbox cannot decrypt. A declared column stored in plaintext that the role may not read in
   * full cannot be named at all (in the select list, a filter, a function, a join), nor reached
   * through `*` or a whole-row reference of its table: 400 SQL_MASKED_COLUMN, before anything runs.
   */
  async function checkSql(sql: string, role: Role): Promise<void> {
    const p = policy();
    const snap = p instanceof Promise ? await p : p;
    const masked = new Map<string, string[]>(); // table -> its columns masked for the role
    for (const [table, cols] of snap.tables) {
      const names = [...cols.values()].filter((c) => !c.encrypted && ruleFor(c, role) !== 'full').map((c) => c.column);
      if (names.length) masked.set(table, names);
    }
    if (masked.size === 0) return;
    let tree: unknown;
    try {
      tree = await parse(sql);
    } catch {
      return; // the SQL guard answers the syntax error
    }
    const relations = new Set<string>();
    const refs: string[][] = [];
    const visit = (n: unknown) => {
      if (Array.isArray(n)) return n.forEach(visit);
      if (!n || typeof n !== 'object') return;
      const o = n as Record<string, unknown>;
      const rv = o['RangeVar'] as { relname?: string; alias?: { aliasname?: string } } | undefined;
      if (rv?.relname && masked.has(rv.relname)) {
        relations.add(rv.relname);
        if (rv.alias?.aliasname) relations.add(rv.alias.aliasname);
      }
      const cr = o['ColumnRef'] as { fields?: Array<Record<string, { sval?: string }>> } | undefined;
      if (cr?.fields) refs.push(cr.fields.map((f) => (f['String'] ? (f['String'].sval ?? '') : f['A_Star'] ? '*' : '')));
      for (const v of Object.values(o)) visit(v);
    };
    visit(tree);
    if (relations.size === 0) return;
    const names = new Set([...relations].flatMap((r) => masked.get(r) ?? []));
    const refuse = (what: string) =>
      badRequest('SQL_MASKED_COLUMN', `${what}: declared columns this role reads masked (${[...names].sort().join(', ')}) cannot be read through SQL; use the rows API, which masks them`, { columns: [...names].sort() });
    for (const fields of refs) {
      const last = fields[fields.length - 1] ?? '';
      if (last === '*') throw refuse('* over a table with masked columns');
      if (names.has(last)) throw refuse(`column ${last}`);
      if (fields.length === 1 && relations.has(last)) throw refuse(`the whole row of ${last}`);
    }
  }

  /**
   * Synchronously, without making a guard: true when the policy in force declares nothing on
   * `table`, so a read of that table's own columns (no select, no embeds) needs no guard at all;
   * false when it declares something there, or before the policy is first loaded (ask guard()).
   */
  function undeclared(table: string): boolean {
    const p = policy();
    return !(p instanceof Promise) && !p.tables.has(table);
  }

  return {
    guard,
    undeclared,
    policy,
    checkSql,
    /** The declarations of `tables` as a short digest (result-cache keys: an answer is valid under one policy only). */
    policyTag: (tables: readonly string[]) => policyTagOf(policy(), tables),
    /** Reload now (after a declaration changed). */
    async refresh(): Promise<void> {
      await load();
    },
  };
}

export type Enforcement = ReturnType<typeof createEnforcement>;

async function policyTagOf(p: PolicySnapshot | Promise<PolicySnapshot>, tables: readonly string[]): Promise<string> {
  const snap = p instanceof Promise ? await p : p;
  const parts = tables.map((t) => {
    const cols = snap.tables.get(t);
    return cols ? [...cols.values()].map((c) => [c.table, c.column, c.encrypted, c.searchable, c.pii, c.masks, c.plaintext_roles, c.subject_column ?? null]) : [];
  });
  if (parts.every((x) => x.length === 0)) return '-';
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url').slice(0, 16);
}

/** The policy applied for one request (one tenant, one role). */
export class Guard {
  /** Set once a builder tagged a column: the answer then goes through reveal(). */
  tagged = false;
  /** Set when a declared column is keyed per subject (subject-fields.ts). */
  subjects: SubjectFields | undefined;
  /** This request's data keys by version, the current one, and the AAD of each field (tenant, table, column). */
  private readonly dataKeys = new Map<number, Buffer>();
  private currentKey: Promise<{ version: number; key: Buffer }> | undefined;
  private readonly aads = new Map<string, Buffer>();
  /**
   * The ciphertexts this request made (protectRow) with their plaintext, by `<table>.<column>` and
   * ciphertext: the representation a write returns carries them, and decrypting a value made a
   * moment ago under the same tenant, table and column only gives back the same plaintext.
   */
  private readonly sealed = new Map<string, string>();

  constructor(
    readonly snap: PolicySnapshot,
    readonly ctx: RequestContext,
    private readonly keys: TenantKeys,
    private readonly audit: AuditLog,
    private readonly indexKey: Buffer | AppError | undefined,
  ) {}

  get version(): number {
    return this.snap.version;
  }

  /** The declared columns of a table (undefined when none). */
  table(table: string): ReadonlyMap<string, ColumnPolicy> | undefined {
    return this.snap.tables.get(table);
  }

  rule(p: ColumnPolicy, role: Role = this.ctx.role): MaskRule {
    return ruleFor(p, role);
  }

  column(table: string, column: string): GuardedColumn | undefined {
    const p = this.snap.tables.get(table)?.get(column);
    if (!p) return undefined;
    return { encrypted: p.encrypted, searchable: p.searchable, plaintext: ruleFor(p, this.ctx.role) === 'full' };
  }

  /** Is `column` of `table` the blind index of a declared searchable column? */
  isBlindIndex(table: string, column: string): boolean {
    if (!column.endsWith('_bidx')) return false;
    const p = this.snap.tables.get(table)?.get(column.slice(0, -'_bidx'.length));
    return !!p?.searchable;
  }

  omit(table: string, column: string): boolean {
    return this.isBlindIndex(table, column);
  }

  /** A select-list expression of a column: tagged when declared, as it is otherwise. */
  columnSql(table: string, column: string, expr: string): string {
    if (this.isBlindIndex(table, column)) {
      // the blind index reveals equality: it is not part of any answer
      return 'NULL::text';
    }
    if (!this.snap.tables.get(table)?.has(column)) return expr;
    this.tagged = true;
    return `(chr(31) || 'sx:${table}.${column}:' || to_json(${expr})::text)`;
  }

  /**
   * The guard of a streamed or job export (COPY: the rows never pass through the service, so no
   * value can be decrypted or masked on the way): encrypted columns go out as their ciphertext, a
   * declared plaintext column the role reads masked is refused (400 EXPORT_MASKED_COLUMN), blind
   * indexes are left out, filters and order are checked as on the rows API.
   */
  forExport(): {
    columnSql(table: string, column: string, expr: string): string;
    omit(table: string, column: string): boolean;
    checkFilter: Guard['checkFilter'];
    blindIndexOf: Guard['blindIndexOf'];
    checkOrder: Guard['checkOrder'];
  } {
    return {
      columnSql: (table, column, expr) => {
        if (this.isBlindIndex(table, column)) return 'NULL::text';
        const c = this.column(table, column);
        if (c && !c.encrypted && !c.plaintext) {
          throw badRequest('EXPORT_MASKED_COLUMN', `${table}.${column} is masked for this role and an export streams stored values: leave it out of select (or read it through the rows API, which masks it)`, { table, column });
        }
        return expr;
      },
      omit: (table, column) => this.isBlindIndex(table, column),
      checkFilter: (table, column, op, opts) => this.checkFilter(table, column, op, opts),
      blindIndexOf: (table, column, value) => this.blindIndexOf(table, column, value),
      checkOrder: (table, column) => this.checkOrder(table, column),
    };
  }

  /** The blind-index token of a filter value (400 when the column is not searchable). */
  blindIndexOf(table: string, column: string, value: string): string {
    if (this.indexKey instanceof AppError) throw this.indexKey;
    if (!this.indexKey) throw badRequest('ENCRYPTED_COLUMN_FILTER', `${table}.${column} cannot be filtered without a tenant`);
    return blindIndex(value, this.indexKey, { table, column });
  }

  /** Check a filter's column and operator; returns the blind index column when the filter goes through it. */
  checkFilter(table: string, column: string, op: string, opts: { path?: boolean; quant?: boolean } = {}): { via: 'bidx'; column: string } | { via: 'null' } | undefined {
    const c = this.column(table, column);
    if (!c) {
      if (this.isBlindIndex(table, column)) throw badRequest('BLIND_INDEX_FILTER', `${table}.${column} is a blind index; filter on ${column.slice(0, -5)} instead`, { table, column });
      return undefined;
    }
    if (op === 'is') return { via: 'null' };
    if (c.encrypted) {
      if (opts.path || opts.quant || !['eq', 'neq', 'in'].includes(op)) throw encryptedFilterError(table, column, op);
      if (!c.searchable) throw badRequest('ENCRYPTED_COLUMN_NOT_SEARCHABLE', `${table}.${column} is encrypted without a blind index (declare it searchable for equality filters)`, { table, column });
      return { via: 'bidx', column: blindIndexColumn(column) };
    }
    if (!c.plaintext) throw maskedFilterError(table, column);
    return undefined;
  }

  /** 400 when ordering by `column` would reveal or leak through ordering. */
  checkOrder(table: string, column: string): void {
    const c = this.column(table, column);
    if (!c) return;
    if (c.encrypted) throw badRequest('ENCRYPTED_COLUMN_ORDER', `${table}.${column} is encrypted: it cannot be ordered by`, { table, column });
    if (!c.plaintext) throw maskedFilterError(table, column);
  }

  /** An aggregate (min, max, sum, avg, group by) over a declared column the role does not read in full: 400. */
  checkAggregate(table: string, column: string, fn: string): void {
    const c = this.column(table, column);
    if (!c) return;
    if (c.encrypted || !c.plaintext) {
      throw badRequest('MASKED_COLUMN_AGGREGATE', `${fn} of ${table}.${column} would reveal a ${c.encrypted ? 'encrypted' : 'masked'} value; it is refused`, { table, column });
    }
  }

  /**
   * A row about to be written: plaintext of encrypted columns becomes ciphertext (the tenant's
   * current data key), searchable ones get their blind index. Returns a new object.
   */
  async protectRow(table: string, row: Record<string, unknown>): Promise<Record<string, unknown>> {
    const declared = this.snap.tables.get(table);
    if (!declared) return row;
    let out: Record<string, unknown> | undefined;
    for (const key of Object.keys(row)) {
      if (this.isBlindIndex(table, key)) throw badRequest('BLIND_INDEX_READ_ONLY', `${table}.${key} is a blind index kept by the server; write ${key.slice(0, -5)} instead`, { table, column: key });
      const p = declared.get(key);
      if (!p?.encrypted) continue;
      out ??= { ...row };
      const v = row[key];
      if (v === null || v === undefined) {
        if (p.searchable) out[blindIndexColumn(key)] = null;
        continue;
      }
      const text = typeof v === 'string' ? v : JSON.stringify(v);
      const tenantId = this.tenant();
      out[key] =
        p.subject_column && this.subjects
          ? await this.subjects.protect(tenantId, p, row, text, () => this.seal(tenantId, table, key, text))
          : await this.seal(tenantId, table, key, text);
      if (p.searchable) out[blindIndexColumn(key)] = this.blindIndexOf(table, key, text);
    }
    return out ?? row;
  }

  /** JSON text from a statement the builders tagged: decrypted, masked, audited. */
  async reveal(text: string, opts: RevealOptions): Promise<string> {
    if (!this.tagged || !text.includes(TAG_JSON)) return text;
    const doc = JSON.parse(text) as unknown;
    const out = await this.revealValue(doc, opts);
    return JSON.stringify(out);
  }

  /**
   * A parsed JSON value (rows, a page, a GraphQL answer) with tagged strings resolved, in place
   * (the value is the caller's own parse or copy): one walk finds the tagged strings, the data key
   * versions they name are loaded (cached per tenant), then each is decrypted and masked by its
   * column's plan. Returns the value (a tagged string at the root comes back resolved).
   */
  async revealValue(doc: unknown, opts: RevealOptions): Promise<unknown> {
    if (this.subjects) doc = await this.subjects.resolve(doc, this.ctx.tenantId);
    const plans = plansFor(this.snap, this.ctx.role);
    const sites: Site[] = [];
    const root: Site | undefined = typeof doc === 'string' ? siteOf(doc, undefined, '') : undefined;
    if (root) sites.push(root);
    else collect(doc, sites);
    if (sites.length === 0) return doc;
    const tenantId = this.ctx.tenantId;
    // the data key versions the ciphertexts name (async, cached per tenant)
    for (const site of sites) {
      if (typeof site.value === 'string' && isCiphertext(site.value)) {
        const v = keyVersionOf(site.value);
        if (v !== null && tenantId && !this.dataKeys.has(v)) this.dataKeys.set(v, this.keys.cached?.(tenantId, 'data', v)?.key ?? (await this.keys.version(tenantId, v)));
      }
    }
    let seen: Map<string, { columns: Set<string>; rows: Set<object> }> | undefined;
    let result = doc;
    for (const site of sites) {
      const plan = plans.get(site.prefix);
      let out: unknown;
      if (!plan) out = null; // a declaration removed while the statement ran: fail closed
      else if (plan.rule === 'null' || site.value === null) out = null;
      else {
        let plain = site.value;
        if (plan.policy.encrypted && isCiphertext(plain)) plain = this.open(plain, plan.table, plan.column, tenantId ?? '');
        if (plan.rule === 'full') {
          seen ??= new Map();
          let a = seen.get(plan.table);
          if (!a) seen.set(plan.table, (a = { columns: new Set(), rows: new Set() }));
          a.columns.add(plan.column);
          if (site.holder) a.rows.add(site.holder);
          out = plain;
        } else out = plan.mask(plain);
      }
      if (site === root) result = out;
      else setOwn(site.holder!, site.key, out);
    }
    // every plaintext let through is in the access audit (buffered: no round trip)
    if (seen) for (const [table, a] of seen) this.audit.record(this.ctx, table, [...a.columns], a.rows.size, opts.path);
    return result;
  }

  /** Plaintext of `table.column` sealed under the tenant's current data key (remembered, so the answer of this write need not decrypt it again). */
  private async seal(tenantId: string, table: string, column: string, text: string): Promise<string> {
    const { key: dek, version } = this.keys.cached?.(tenantId, 'data', 'latest') ?? (await (this.currentKey ??= this.keys.current(tenantId)));
    const sealed = encryptWithAad(text, dek, version, this.aadOf(tenantId, table, column));
    this.sealed.set(`${table}.${column}\0${sealed}`, text);
    return sealed;
  }

  /** The plaintext of a ciphertext of `table.column`: made by this request (protectRow), or decrypted (a wrong tenant or column: 422). */
  private open(value: string, table: string, column: string, tenantId: string): string {
    const own = this.sealed.get(`${table}.${column}\0${value}`);
    if (own !== undefined) return own;
    const version = keyVersionOf(value) ?? 0;
    // a key the tenant does not have (another tenant's ciphertext) fails the tag check: 422
    return decryptWithAad(value, this.dataKeys.get(version) ?? Buffer.alloc(32), this.aadOf(tenantId, table, column), { table, column });
  }

  /** The additional authenticated data of a field, made once per request and column. */
  private aadOf(tenantId: string, table: string, column: string): Buffer {
    const k = `${tenantId}\0${table}\0${column}`;
    let aad = this.aads.get(k);
    if (!aad) this.aads.set(k, (aad = fieldAad({ tenantId, table, column })));
    return aad;
  }

  private pending = new Map<string, { columns: Set<string>; rows: Set<object> }>();

  /**
   * One field value of a row (GraphQL column resolvers): decrypted and masked; a plaintext answer is
   * added to the request's audit entry, written by flushAudit() when the request resolves.
   */
  async revealField(table: string, column: string, value: unknown, holder: object): Promise<unknown> {
    const p = this.snap.tables.get(table)?.get(column);
    if (!p) return value;
    if (this.isBlindIndex(table, column)) return null;
    if (value === null || value === undefined) return null;
    const rule = ruleFor(p, this.ctx.role);
    if (rule === 'null') return null;
    let plain: unknown = value;
    if (this.subjects && p.encrypted && isSubjectFieldCiphertext(value)) {
      plain = await this.subjects.decrypt(this.ctx.tenantId ?? '', value, table, column).catch((err: unknown) => {
        if (err instanceof AppError && err.code === 'KEY_NOT_FOUND') return null; // shredded: the value is gone
        throw err;
      });
      if (plain === null) return null;
    } else if (p.encrypted && isCiphertext(value)) {
      const tenantId = this.ctx.tenantId ?? '';
      const version = keyVersionOf(value) ?? 0;
      if (!this.dataKeys.has(version)) this.dataKeys.set(version, await this.keys.version(tenantId, version));
      plain = this.open(value, table, column, tenantId);
    }
    if (rule === 'full') {
      let a = this.pending.get(table);
      if (!a) this.pending.set(table, (a = { columns: new Set(), rows: new Set() }));
      a.columns.add(column);
      a.rows.add(holder);
      return plain;
    }
    const masked = applyMask(plain, rule, p.pii);
    // GraphQL types the field by the column: a mask of another type (a range of an Int) is null
    return typeof value === typeof masked || typeof value === 'string' ? masked : null;
  }

  /** Write the audit entries collected by revealField (one per table). */
  flushAudit(path: string): void {
    for (const [table, a] of this.pending) this.audit.record(this.ctx, table, [...a.columns], a.rows.size, path);
    this.pending.clear();
  }

  /**
   * Plain row objects of `table` (keyed by column name, as stored: ciphertext for encrypted
   * columns), as this role may see them: for paths whose SQL is not built by the tagging builders
   * (GraphQL resolvers, the change feed, undo answers).
   */
  async revealRows<T extends Record<string, unknown> | null | undefined>(table: string, rows: T[], opts: RevealOptions & { decrypt?: boolean }): Promise<T[]> {
    const declared = this.snap.tables.get(table);
    if (!declared) return rows;
    const tagged = rows.map((r) => {
      if (!r || typeof r !== 'object') return r;
      const copy: Record<string, unknown> = { ...r };
      for (const [col] of declared) {
        if (!(col in copy)) continue;
        const v = copy[col];
        copy[col] = v === null || v === undefined ? null : `${TAG}${table}.${col}:${JSON.stringify(v)}`;
      }
      for (const k of Object.keys(copy)) if (this.isBlindIndex(table, k)) delete copy[k];
      return copy;
    });
    this.tagged = true;
    return (await this.revealValue(tagged, opts)) as T[];
  }

  /**
   * Rows for a path that must never carry plaintext (change events, webhook bodies): encrypted
   * columns stay ciphertext, other declared columns are masked by `role`'s rule (plaintext only
   * when that role reads it in full), blind indexes dropped. Synchronous: no key is needed.
   */
  maskStored(table: string, row: Record<string, unknown> | null, role: Role = this.ctx.role): Record<string, unknown> | null {
    return maskStoredRow(this.snap, table, row, role);
  }

  private tenant(): string {
    if (!this.ctx.tenantId) throw badRequest('TENANT_REQUIRED', 'writing an encrypted column needs a tenant');
    return this.ctx.tenantId;
  }
}

/** See Guard.maskStored. */
export function maskStoredRow(snap: PolicySnapshot, table: string, row: Record<string, unknown> | null, role: Role): Record<string, unknown> | null {
  const declared = snap.tables.get(table);
  if (!declared || !row) return row;
  const out: Record<string, unknown> = { ...row };
  for (const [col, p] of declared) {
    if (p.searchable) delete out[blindIndexColumn(col)];
    if (!(col in out)) continue;
    const v = out[col];
    if (v === null || v === undefined) continue;
    if (p.encrypted && (isCiphertext(v) || isSubjectFieldCiphertext(v))) continue; // ciphertext: the receiver cannot read it
    const rule = ruleFor(p, role);
    out[col] = rule === 'full' ? v : applyMask(v, rule, p.pii);
  }
  return out;
}

/** A tagged string found in a JSON value: where it is, its column's tag prefix and its value. */
interface Site {
  holder: Record<string, unknown> | unknown[] | undefined;
  key: string | number;
  prefix: string;
  value: unknown;
}

/**
 * The site of a tagged string (`\u001fsx:<table>.<column>:<JSON value>`), or undefined when `s` is
 * not one. A string value (ciphertext) is read without JSON.parse when it has no escape.
 */
function siteOf(s: string, holder: Site['holder'], key: string | number): Site | undefined {
  if (s.charCodeAt(0) !== 31 || !s.startsWith(TAG)) return undefined;
  const dot = s.indexOf('.', TAG.length);
  const colon = dot < 0 ? -1 : s.indexOf(':', dot);
  if (dot < TAG.length + 1 || colon < 0) return undefined;
  let value: unknown;
  const from = colon + 1;
  if (s.length - from >= 2 && s.charCodeAt(from) === 34 && s.charCodeAt(s.length - 1) === 34 && s.indexOf('\\', from) < 0) {
    value = s.slice(from + 1, -1);
  } else {
    try {
      value = JSON.parse(s.slice(from));
    } catch {
      return undefined;
    }
  }
  return { holder, key, prefix: s.slice(0, from), value };
}

/** Every tagged string of a JSON value (depth first). */
function collect(v: unknown, sites: Site[]): void {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const x: unknown = v[i];
      if (typeof x === 'string') {
        const site = siteOf(x, v, i);
        if (site) sites.push(site);
      } else if (x && typeof x === 'object') collect(x, sites);
    }
    return;
  }
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      const x = o[k];
      if (typeof x === 'string') {
        const site = siteOf(x, o, k);
        if (site) sites.push(site);
      } else if (x && typeof x === 'object') collect(x, sites);
    }
  }
}

/** holder[key] = value, as an own property even for `__proto__` (a JSON key like any other). */
function setOwn(holder: Record<string, unknown> | unknown[], key: string | number, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(holder, key, { value, enumerable: true, writable: true, configurable: true });
  else (holder as Record<string | number, unknown>)[key] = value;
}

/**
 * The masking of stored rows for paths that carry rows as stored (change events, webhook bodies,
 * row history): a policy cache of its own over strata.compliance_columns, usable where no schema
 * registry or request guard exists (the worker). Encrypted columns stay ciphertext; other declared
 * columns are masked by the receiving role's rule; blind indexes are dropped.
 */
export function createEventMasking(deps: { db: Database; ttlMs?: number }) {
  let snap: PolicySnapshot | undefined;
  let at = 0;
  let loading: Promise<PolicySnapshot> | undefined;
  let version = 0;
  const load = () =>
    (loading ??= deps.db
      .adminQuery<{ table_name: string; column_name: string; encrypted: boolean; searchable: boolean; pii: ColumnPolicy['pii']; masks: ColumnPolicy['masks']; plaintext_roles: Role[] }>(
        `SELECT table_name, column_name, encrypted, searchable, pii, masks, plaintext_roles FROM strata.compliance_columns`,
      )
      .then(({ rows }) => {
        const tables = new Map<string, Map<string, ColumnPolicy>>();
        for (const r of rows) {
          let t = tables.get(r.table_name);
          if (!t) tables.set(r.table_name, (t = new Map<string, ColumnPolicy>()));
          t.set(r.column_name, { table: r.table_name, column: r.column_name, encrypted: r.encrypted, searchable: r.searchable, pii: r.pii, masks: r.masks, plaintext_roles: r.plaintext_roles, declared_by: '', declared_at: '' });
        }
        snap = { version: ++version, tables, searchable: rows.some((r) => r.searchable) };
        at = Date.now();
        return snap;
      })
      .finally(() => {
        loading = undefined;
      }));
  async function policy(): Promise<PolicySnapshot> {
    if (!snap || Date.now() - at > (deps.ttlMs ?? POLICY_TTL_MS)) return load();
    return snap;
  }
  return {
    policy,
    /** An event (`{ table, before, after, ... }`) as `role` may receive it. */
    async maskEvent<E extends { table: string; before: Record<string, unknown> | null; after: Record<string, unknown> | null }>(e: E, role: Role): Promise<E> {
      const p = await policy();
      if (!p.tables.has(e.table)) return e;
      return { ...e, before: maskStoredRow(p, e.table, e.before, role), after: maskStoredRow(p, e.table, e.after, role) };
    },
  };
}

export type EventMasking = ReturnType<typeof createEventMasking>;
