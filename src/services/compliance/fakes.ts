/**
 * Deterministic fake values for anonymized copies (@faker-js/faker, seeded per value). Within one
 * copy the same (category, original) always gives the same fake, so a value repeated across tables
 * (a foreign key, a join on an email) stays equal; distinct originals give distinct fakes (a used
 * set per category), so unique constraints hold; a fake never equals its original. Formats are kept:
 * an email stays an email (at example.com), a card number keeps its length and separators and passes
 * Luhn, an IBAN keeps its country and length and passes mod 97, phones and national ids keep every
 * separator and the count of digits and letters, dates stay ISO dates.
 */
import { createHmac } from 'node:crypto';
import { Faker, en } from '@faker-js/faker';
import { luhnValid } from './detection.js';
import type { PiiCategory } from './masking.js';

export interface FakeColumn {
  category: PiiCategory | null;
  /** varchar(n): fakes are cut to n characters (and still kept unique). */
  maxLength: number | null;
}

const DIGITS = '0123456789';
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const UPPER = LOWER.toUpperCase();

/** Same shape: each digit, lower- and upper-case letter replaced by one of its class; the rest kept. */
function reshape(value: string, f: Faker): string {
  let out = '';
  for (const ch of value) {
    if (ch >= '0' && ch <= '9') out += f.helpers.arrayElement([...DIGITS]);
    else if (ch >= 'a' && ch <= 'z') out += f.helpers.arrayElement([...LOWER]);
    else if (ch >= 'A' && ch <= 'Z') out += f.helpers.arrayElement([...UPPER]);
    else out += ch;
  }
  return out;
}

/** A card number of the same shape whose last digit makes the Luhn check pass. */
function fakeCard(value: string, f: Faker): string {
  const shaped = reshape(value, f);
  const digits = shaped.replace(/\D/g, '');
  if (digits.length < 2) return shaped;
  for (let check = 0; check <= 9; check++) {
    const candidate = digits.slice(0, -1) + String(check);
    if (luhnValid(candidate) || candidate.length < 13 || candidate.length > 19) {
      const lastDigit = shaped.search(/\d(?!.*\d)/);
      return shaped.slice(0, lastDigit) + String(check) + shaped.slice(lastDigit + 1);
    }
  }
  return shaped;
}

function mod97(s: string): number {
  let rem = 0;
  for (const ch of s) {
    const code = ch >= 'A' && ch <= 'Z' ? String(ch.charCodeAt(0) - 55) : ch;
    for (const d of code) rem = (rem * 10 + (d.charCodeAt(0) - 48)) % 97;
  }
  return rem;
}

/** An IBAN of the same country and length with valid check digits (spaces kept where they were). */
function fakeIban(value: string, f: Faker): string {
  const compact = value.replace(/\s+/g, '').toUpperCase();
  if (!/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(compact)) return reshape(value, f);
  const country = compact.slice(0, 2);
  const bban = reshape(compact.slice(4), f);
  const check = String(98 - mod97(bban + country + '00')).padStart(2, '0');
  const iban = country + check + bban;
  // put back the original grouping
  let out = '';
  let i = 0;
  for (const ch of value) {
    if (/\s/.test(ch)) out += ch;
    else out += iban[i++] ?? '';
  }
  return out + iban.slice(i);
}

function fakeDate(value: string, f: Faker): string {
  const d = f.date.birthdate({ mode: 'age', min: 18, max: 90 });
  const iso = d.toISOString();
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) return iso.slice(0, 10);
  if (/^\d{4}-\d{2}-\d{2}T/.test(value)) return iso;
  return reshape(value, f);
}

function fakeText(value: string, category: PiiCategory | null, f: Faker, attempt: number): string {
  switch (category) {
    case 'email': {
      const local = `${f.person.firstName()}.${f.person.lastName()}`.toLowerCase().replace(/[^a-z0-9.]/g, '');
      return `${local}${attempt ? `+${attempt}` : ''}@example.com`;
    }
    case 'phone':
    case 'national_id':
    case 'other':
      return reshape(value, f);
    case 'card':
      return fakeCard(value, f);
    case 'iban':
      return fakeIban(value, f);
    case 'name':
      return value.trim().includes(' ') ? f.person.fullName() : f.person.firstName();
    case 'address':
      return f.location.streetAddress();
    case 'date_of_birth':
      return fakeDate(value, f);
    case 'ip_address':
      return value.includes(':') ? f.internet.ipv6() : f.internet.ipv4();
    case 'free_text':
      return f.lorem.sentence({ min: 3, max: Math.max(3, Math.min(24, value.split(/\s+/).length)) });
    default:
      return reshape(value, f);
  }
}

/** The fakes of one copy: `fake(column, value)` is deterministic for a given seed and call order. */
export function createFaker(seed: string) {
  const faker = new Faker({ locale: [en] });
  const memo = new Map<string, unknown>();
  const used = new Map<string, Set<string>>();

  const seedOf = (parts: string): number[] => {
    const h = createHmac('sha256', seed).update(parts).digest();
    return [h.readUInt32BE(0), h.readUInt32BE(4), h.readUInt32BE(8), h.readUInt32BE(12)];
  };

  function generate(col: FakeColumn, text: string, attempt: number): string {
    faker.seed(seedOf(`${col.category ?? 'other'}\0${text}\0${attempt}`));
    let out = fakeText(text, col.category, faker, attempt);
    if (col.maxLength !== null && out.length > col.maxLength) out = out.slice(0, col.maxLength);
    // past many collisions (short values), widen with a counter rather than loop forever
    if (attempt > 20) out = `${out}${attempt}`.slice(-Math.max(col.maxLength ?? Infinity, String(attempt).length));
    return out;
  }

  return {
    /** The fake of `value` (a JSON scalar: string, number or boolean; null stays null). */
    fake(col: FakeColumn, value: unknown): unknown {
      if (value === null || value === undefined) return null;
      if (typeof value === 'boolean') return value;
      const text = typeof value === 'string' ? value : JSON.stringify(value);
      const key = `${col.category ?? 'other'}\0${text}`;
      const hit = memo.get(key);
      if (hit !== undefined) return hit;
      const bucket = used.get(col.category ?? 'other') ?? new Set<string>();
      used.set(col.category ?? 'other', bucket);
      for (let attempt = 0; attempt < 1000; attempt++) {
        const candidate = generate(col, text, attempt);
        if (candidate === text || bucket.has(candidate) || memo.has(`${col.category ?? 'other'}\0${candidate}`)) continue;
        if (typeof value === 'number') {
          const n = Number(candidate);
          if (!Number.isFinite(n) || n === value) continue;
          bucket.add(candidate);
          memo.set(key, n);
          return n;
        }
        bucket.add(candidate);
        memo.set(key, candidate);
        return candidate;
      }
      throw new Error(`no unique fake found for a ${col.category ?? 'other'} value after 1000 attempts`);
    },
    /** Distinct originals faked so far (the memory an anonymized copy holds). */
    get size() {
      return memo.size;
    },
  };
}

export type FakeMaker = ReturnType<typeof createFaker>;
