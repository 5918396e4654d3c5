/**
 * Migration checksums: sha256 of up + '\0' + down with CRLF normalised to LF, so a checkout on
 * Windows (autocrlf) does not look like an edited migration.
 */
import { createHash } from 'node:crypto';

const lf = (s: string): string => s.replace(/\r\n/g, '\n');

/** Checksum of a SQL migration: sha256(up + '\0' + down), hex. */
export function sqlChecksum(up: string, down: string): string {
  return createHash('sha256').update(lf(up)).update('\0').update(lf(down)).digest('hex');
}

/** Checksum of a module migration: sha256 of the module source, hex. */
export function moduleChecksum(source: string): string {
  return createHash('sha256').update(lf(source)).digest('hex');
}

/** Short form for messages. */
export const shortSum = (sum: string): string => sum.slice(0, 12);
