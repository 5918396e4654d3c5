/**
 * PII detection helpers: by column name and by sampled values. Findings are proposals with a
 * confidence; nothing is declared automatically. Value checks use the formats' own checksums where
 * they have one (Luhn for card numbers, ISO 7064 mod 97 for IBANs), so a column of random digits is
 * not taken for cards.
 */
import type { PiiCategory } from './masking.js';

const NAME_HINTS: Array<[RegExp, PiiCategory]> = [
  [/e-?mail/i, 'email'],
  [/phone|mobile|msisdn|tel(ephone)?$/i, 'phone'],
  [/(^|_)(first|last|full|given|family|sur)_?name$|^name_(first|last)$/i, 'name'],
  [/address|street|city|zip|postal|postcode/i, 'address'],
  [/card(_?number)?$|^pan$|cc_?num/i, 'card'],
  [/iban/i, 'iban'],
  [/ssn|national_?id|passport|tax_?id|nino/i, 'national_id'],
  [/birth|dob/i, 'date_of_birth'],
  [/(^|_)ip(_?addr(ess)?)?$/i, 'ip_address'],
];

export function categoryByName(column: string): PiiCategory | null {
  for (const [re, cat] of NAME_HINTS) if (re.test(column)) return cat;
  return null;
}

/** The Luhn checksum of a digit string (13-19 digits for card numbers). */
export function luhnValid(digits: string): boolean {
  if (!/^\d{13,19}$/.test(digits)) return false;
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

/** ISO 13616 IBAN: country, check digits, BBAN; mod 97 of the rearranged number is 1. */
export function ibanValid(value: string): boolean {
  const s = value.replace(/\s+/g, '').toUpperCase();
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$/.test(s)) return false;
  const rearranged = s.slice(4) + s.slice(0, 4);
  let rem = 0;
  for (const ch of rearranged) {
    const code = ch >= 'A' && ch <= 'Z' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const digit of code) rem = (rem * 10 + (digit.charCodeAt(0) - 48)) % 97;
  }
  return rem === 1;
}

const EMAIL = /^[^\s@]{1,64}@[^\s@]{1,255}\.[A-Za-z]{2,}$/;
const PHONE = /^\+?[\d\s().-]{7,20}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

/** The category a single value looks like, or null. */
export function categoryByValue(value: unknown): PiiCategory | null {
  if (typeof value !== 'string') return null;
  const v = value.trim();
  if (EMAIL.test(v)) return 'email';
  const digits = v.replace(/[\s-]/g, '');
  if (luhnValid(digits)) return 'card';
  if (ibanValid(v)) return 'iban';
  if (IPV4.test(v)) return 'ip_address';
  if (PHONE.test(v)) {
    const n = v.replace(/\D/g, '').length;
    if (n >= 7 && n <= 15) return 'phone'; // E.164: at most 15 digits
  }
  return null;
}

export interface Finding {
  column: string;
  category: PiiCategory;
  /** 0..1: the share of sampled values of that category, raised when the column's name agrees. */
  confidence: number;
  by: Array<'name' | 'value'>;
  sampled: number;
}

/** Judges one column from its name and a sample of its values. */
export function judgeColumn(column: string, sample: readonly unknown[]): Finding | null {
  const byName = categoryByName(column);
  const counts = new Map<PiiCategory, number>();
  let nonNull = 0;
  for (const v of sample) {
    if (v === null || v === undefined || v === '') continue;
    nonNull++;
    const c = categoryByValue(v);
    if (c) counts.set(c, (counts.get(c) ?? 0) + 1);
  }
  const [topCat, topCount] = [...counts.entries()].sort((a, b) => b[1] - a[1])[0] ?? [null, 0];
  const share = nonNull ? topCount / nonNull : 0;
  if (topCat && share >= 0.5) {
    const agrees = byName === topCat;
    return { column, category: topCat, confidence: Math.min(1, share * (agrees ? 1 : 0.9) + (agrees ? 0.1 : 0)), by: agrees ? ['name', 'value'] : ['value'], sampled: nonNull };
  }
  if (byName) return { column, category: byName, confidence: 0.5, by: ['name'], sampled: nonNull };
  return null;
}
