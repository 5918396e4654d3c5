/**
 * Opaque keyset cursors: the last row's order-key values, bound to the table and the ordering,
 * signed with HMAC so a tampered or foreign cursor is refused (400 INVALID_CURSOR), never trusted.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { badRequest } from '../../../errors.js';

export interface CursorCodec {
  encode(scope: string, values: Array<string | null>): string;
  /** Values for `scope`; 400 INVALID_CURSOR when malformed, tampered or for another query shape. */
  decode(scope: string, cursor: string, arity: number): Array<string | null>;
}

export function createCursorCodec(secret: string): CursorCodec {
  const key = createHmac('sha256', 'strata cursor key').update(secret).digest();
  const sign = (body: string) => createHmac('sha256', key).update(body).digest().subarray(0, 16);
  const invalid = () => badRequest('INVALID_CURSOR', 'the cursor is malformed, tampered with, or belongs to another query; start again without it');
  return {
    encode(scope, values) {
      const body = Buffer.from(JSON.stringify([scope, values])).toString('base64url');
      return `${body}.${sign(body).toString('base64url')}`;
    },
    decode(scope, cursor, arity) {
      if (cursor.length > 4096) throw invalid();
      const [body, mac, extra] = cursor.split('.');
      if (!body || !mac || extra !== undefined) throw invalid();
      const given = Buffer.from(mac, 'base64url');
      const expected = sign(body);
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid();
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
      } catch {
        throw invalid();
      }
      if (!Array.isArray(parsed) || parsed[0] !== scope || !Array.isArray(parsed[1])) throw invalid();
      const values = parsed[1] as unknown[];
      if (values.length !== arity || !values.every((v) => v === null || typeof v === 'string')) throw invalid();
      return values;
    },
  };
}
