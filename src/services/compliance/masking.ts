/**
 * Masking rules, applied to a plaintext value for a role that may not see it in full:
 * - `full`: the value as is (the role sees plaintext);
 * - `partial`: the shape kept, the identifying part hidden: `j***@example.com`, `***-***-1234`
 *   (last four digits of phones, cards, IBANs, national ids), `J***` for names and free text;
 * - `hash`: a stable SHA-256 token (`hash:` + 16 hex), equal inputs give equal tokens (joins and
 *   counts still work, the value does not show);
 * - `null`: no value;
 * - `month` / `year`: a date or timestamp generalised to the first day of its month or year;
 * - `range:<width>`: a number generalised to the range holding it, e.g. `range:10` maps 37 to "30-39".
 */
import { createHash } from 'node:crypto';
import { badRequest } from '../../errors.js';

export const PII_CATEGORIES = ['email', 'phone', 'name', 'address', 'card', 'iban', 'national_id', 'date_of_birth', 'ip_address', 'free_text', 'other'] as const;
export type PiiCategory = (typeof PII_CATEGORIES)[number];

export type MaskRule = 'full' | 'partial' | 'hash' | 'null' | 'month' | 'year' | `range:${number}`;
const RULE = /^(full|partial|hash|null|month|year|range:[1-9][0-9]{0,11})$/;

export function parseMaskRule(rule: unknown, where: string): MaskRule {
  if (typeof rule !== 'string' || !RULE.test(rule)) {
    throw badRequest('INVALID_MASK_RULE', `${where}: "${String(rule)}" is not a masking rule (full, partial, hash, null, month, year, range:<width>)`);
  }
  return rule as MaskRule;
}

const STARS = '************';
const lastFour = (s: string) => {
  // the digits of s (what s.replace(/\D/g, '') keeps), without a regular expression per value
  let digits = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) digits += s[i];
  }
  return digits.length <= 4 ? '****' : `${STARS.slice(0, Math.min(digits.length - 4, 12))}${digits.slice(-4)}`;
};

function partial(value: string, category: PiiCategory | null): string {
  if (category === 'email' || (category === null && /^[^@\s]+@[^@\s]+$/.test(value))) {
    const at = value.lastIndexOf('@');
    return at > 0 ? `${value[0]}***${value.slice(at)}` : '***';
  }
  if (category === 'phone' || category === 'card' || category === 'iban' || category === 'national_id') return lastFour(value);
  if (category === 'ip_address') return value.includes(':') ? `${value.split(':').slice(0, 2).join(':')}:*` : value.replace(/\.\d+$/, '.*');
  return value.length ? `${value[0]}***` : '';
}

/** Applies `rule` to a value (a JSON scalar as it appears in a row); null stays null. */
export function applyMask(value: unknown, rule: MaskRule, category: PiiCategory | null = null): unknown {
  if (value === null || value === undefined || rule === 'full') return value ?? null;
  if (rule === 'null') return null;
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  if (rule === 'hash') return `hash:${createHash('sha256').update(text).digest('hex').slice(0, 16)}`;
  if (rule === 'partial') return partial(text, category);
  if (rule === 'month' || rule === 'year') {
    const m = /^(\d{4})-(\d{2})/.exec(text);
    if (!m) return null;
    return rule === 'month' ? `${m[1]}-${m[2]}-01` : `${m[1]}-01-01`;
  }
  const width = Number(rule.slice('range:'.length));
  const n = typeof value === 'number' ? value : Number(text);
  if (!Number.isFinite(n)) return null;
  const lo = Math.floor(n / width) * width;
  return `${lo}-${lo + width - 1}`;
}

/**
 * applyMask(value, rule, category) as a function made once per rule and category (a column's plan),
 * so the per-value work skips the choice of rule: same answers as applyMask for every value.
 */
export function compileMask(rule: MaskRule, category: PiiCategory | null = null): (value: unknown) => unknown {
  if (rule === 'full') return (v) => v ?? null;
  if (rule === 'null') return () => null;
  if (rule === 'partial' && (category === 'phone' || category === 'card' || category === 'iban' || category === 'national_id')) {
    return (v) => (v === null || v === undefined ? null : lastFour(typeof v === 'string' ? v : JSON.stringify(v)));
  }
  if (rule === 'partial' && category === 'email') {
    return (v) => {
      if (v === null || v === undefined) return null;
      const text = typeof v === 'string' ? v : JSON.stringify(v);
      const at = text.lastIndexOf('@');
      return at > 0 ? `${text[0]}***${text.slice(at)}` : '***';
    };
  }
  return (v) => applyMask(v, rule, category);
}
