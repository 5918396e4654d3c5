/**
 * PostgREST's request headers: `Prefer`, `Accept` (media types), `Range`/`Range-Unit`, and
 * `Accept-Profile`/`Content-Profile`; and the `Content-Range` answer with its status.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { PgrstError } from './errors.js';

export interface Preferences {
  return?: 'minimal' | 'representation' | 'headers-only';
  count?: 'exact' | 'planned' | 'estimated';
  resolution?: 'merge-duplicates' | 'ignore-duplicates';
  missing?: 'default' | 'null';
  handling?: 'strict' | 'lenient';
  tx?: 'commit' | 'rollback';
  maxAffected?: number;
  /** `timezone=<name>`, checked against PostgreSQL's time zone names by the caller (see timezoneOf). */
  timezone?: string;
  /** `params=single-object`: an RPC's JSON body is the one argument of a function taking one json/jsonb argument. */
  params?: 'single-object';
  /** Tokens that were not understood (refused with handling=strict). */
  invalid: string[];
  /** The preferences honoured, for Preference-Applied. */
  applied: string[];
}

const ALLOWED: Record<string, readonly string[]> = {
  return: ['minimal', 'representation', 'headers-only'],
  count: ['exact', 'planned', 'estimated'],
  resolution: ['merge-duplicates', 'ignore-duplicates'],
  missing: ['default', 'null'],
  handling: ['strict', 'lenient'],
  tx: ['commit', 'rollback'],
  params: ['single-object'],
};

const headerText = (h: string | string[] | undefined) => (Array.isArray(h) ? h.join(',') : (h ?? ''));

/** Parse `Prefer`; with handling=strict an unknown or invalid preference is a 400 (PGRST122). */
export function parsePrefer(header: string | string[] | undefined): Preferences {
  const out: Preferences = { applied: [], invalid: [] };
  const invalid = out.invalid;
  for (const raw of headerText(header).split(',')) {
    const token = raw.trim();
    if (!token) continue;
    const eq = token.indexOf('=');
    const key = (eq < 0 ? token : token.slice(0, eq)).trim().toLowerCase();
    const value = eq < 0 ? '' : token.slice(eq + 1).trim();
    if (key === 'max-affected') {
      if (/^\d{1,9}$/.test(value)) out.maxAffected = Number(value);
      else invalid.push(token);
      continue;
    }
    if (key === 'timezone') {
      if (/^[A-Za-z0-9_+\-/:.]{1,64}$/.test(value)) out.timezone = value;
      else invalid.push(token);
      continue;
    }
    const allowed = ALLOWED[key];
    if (!allowed?.includes(value)) {
      invalid.push(token);
      continue;
    }
    (out as unknown as Record<string, string>)[key] = value;
  }
  if (out.handling === 'strict' && invalid.length) {
    throw new PgrstError(400, 'PGRST122', 'Invalid preferences given with handling=strict', `Invalid preferences: ${invalid.join(', ')}`);
  }
  // max-affected is enforced only with handling=strict, as PostgREST does
  if (out.handling !== 'strict') delete out.maxAffected;
  return out;
}

export type Media = Readonly<{ kind: 'json' | 'object' | 'csv'; stripNulls: boolean }>;

const JSON_MEDIA: Media = { kind: 'json', stripNulls: false };
/** Accept values negotiated before (clients send a handful): the answer, shared and never changed. */
const negotiated = new Map<string, Media>();
const NEGOTIATED_MAX = 256;

/** Negotiate the response media type from Accept; 406 PGRST107 when none is offered. */
export function negotiate(accept: string | undefined): Media {
  if (!accept) return JSON_MEDIA;
  const hit = negotiated.get(accept);
  if (hit !== undefined) return hit;
  const media = negotiateText(accept);
  if (negotiated.size < NEGOTIATED_MAX && accept.length <= 200) negotiated.set(accept, media);
  return media;
}

function negotiateText(accept: string): Media {
  if (!accept.trim()) return JSON_MEDIA;
  const offered = accept.split(',').map((s) => {
    const [type, ...params] = s.split(';').map((p) => p.trim());
    const q = params.find((p) => p.startsWith('q='));
    return { type: (type ?? '').toLowerCase(), params: params.map((p) => p.toLowerCase()), q: q ? Number(q.slice(2)) : 1 };
  });
  offered.sort((a, b) => b.q - a.q);
  for (const o of offered) {
    const stripNulls = o.params.includes('nulls=stripped');
    switch (o.type) {
      case 'application/json':
      case 'application/*':
      case '*/*':
        return JSON_MEDIA;
      case 'application/vnd.pgrst.array+json':
        return { kind: 'json', stripNulls };
      case 'application/vnd.pgrst.object+json':
      case 'application/vnd.pgrst.object':
        return { kind: 'object', stripNulls };
      case 'text/csv':
        return { kind: 'csv', stripNulls: false };
    }
  }
  throw new PgrstError(406, 'PGRST107', `None of these media types are available: ${offered.map((o) => o.type).join(', ')}`);
}

/** Accept-Profile / Content-Profile: only the exposed schema (406 PGRST106 otherwise). */
export function checkProfile(headers: IncomingHttpHeaders, schemas: readonly string[]): void {
  for (const h of ['accept-profile', 'content-profile']) {
    const v = headers[h];
    if (v === undefined) continue;
    if (typeof v !== 'string' || !schemas.includes(v.trim())) {
      throw new PgrstError(406, 'PGRST106', `The schema must be one of the following: ${schemas.join(', ')}`);
    }
  }
}

/** `Range: 0-24` (Range-Unit: items) as offset and limit; undefined when absent. */
export function parseRange(headers: IncomingHttpHeaders): { offset: number; limit?: number } | undefined {
  const v = headers['range'];
  if (typeof v !== 'string' || !v.trim()) return undefined;
  const unit = headers['range-unit'];
  if (unit !== undefined && unit !== 'items') return undefined;
  const m = /^(?:items=)?\s*(\d{1,15})-(\d{0,15})\s*$/.exec(v);
  if (!m) return undefined;
  const from = Number(m[1]);
  if (m[2] === '') return { offset: from };
  const to = Number(m[2]);
  if (to < from) throw new PgrstError(416, 'PGRST103', 'Requested range not satisfiable', `The lower boundary must be lower than or equal to the upper boundary in the Range header.`);
  return { offset: from, limit: to - from + 1 };
}

/** PostgREST's Content-Range and status for a read of `count` rows at `offset` of `total`. */
export function rangeAnswer(offset: number, count: number, total: number | undefined): { status: number; contentRange: string } {
  const upper = offset + count - 1;
  const range = total !== 0 && offset <= upper ? `${offset}-${upper}` : '*';
  const contentRange = `${range}/${total === undefined ? '*' : total}`;
  if (total === undefined) return { status: 200, contentRange };
  if (offset > total) return { status: 416, contentRange };
  if (1 + upper - offset < total) return { status: 206, contentRange };
  return { status: 200, contentRange };
}

/**
 * The time zone of `Prefer: timezone=...` as PostgreSQL spells it, or undefined when none was
 * asked for or the name is unknown (PostgREST ignores it then; with handling=strict it is PGRST122).
 */
export function timezoneOf(p: Preferences, known: ReadonlyMap<string, string>): string | undefined {
  if (p.timezone === undefined) return undefined;
  const name = known.get(p.timezone.toLowerCase());
  if (name === undefined && p.handling === 'strict') {
    throw new PgrstError(400, 'PGRST122', 'Invalid preferences given with handling=strict', `Invalid preferences: timezone=${p.timezone}`);
  }
  return name;
}
