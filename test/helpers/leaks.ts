import { expect, vi } from 'vitest';
import type { Database } from '../../src/db/database.js';

/** Fails the test when any pool still has a client checked out (at our layer or in pg.Pool itself). */
export async function expectNoCheckedOutClients(db: Database): Promise<void> {
  await vi.waitFor(
    () => {
      db.pools().forEach((p, i) => {
        expect(p.borrowedCount, `pool #${i} borrowed`).toBe(0);
        expect(p.totalCount - p.idleCount, `pool #${i} clients checked out of pg.Pool`).toBe(0);
      });
    },
    { timeout: 2000, interval: 25 },
  );
}
