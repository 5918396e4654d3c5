/**
 * Per-request batching (DataLoader's idea, sized for this use): `load(key)` calls made while a
 * level of the result is being resolved are collected and fetched with ONE query when the event
 * loop turns (setImmediate: after every resolver continuation of the level has run). Results are
 * cached per request, so a key asked twice costs nothing.
 */
export type BatchFetch<V> = (keys: Array<{ key: string; values: unknown[] }>) => Promise<Map<string, V>>;

interface Pending<V> {
  values: unknown[];
  waiters: Array<{ resolve: (v: V) => void; reject: (e: unknown) => void }>;
}

export class BatchLoader<V> {
  private pending = new Map<string, Pending<V>>();
  private readonly done = new Map<string, Promise<V>>();
  private scheduled = false;

  constructor(
    private readonly fetch: BatchFetch<V>,
    private readonly missing: () => V,
  ) {}

  /** The value for a key (tuple `values`, identified by the string `key`). */
  load(key: string, values: unknown[]): Promise<V> {
    const hit = this.done.get(key);
    if (hit) return hit;
    const promise = new Promise<V>((resolve, reject) => {
      const p = this.pending.get(key);
      if (p) p.waiters.push({ resolve, reject });
      else this.pending.set(key, { values, waiters: [{ resolve, reject }] });
    });
    this.done.set(key, promise);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => void this.flush());
    }
    return promise;
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = new Map();
    try {
      const found = await this.fetch([...batch].map(([key, p]) => ({ key, values: p.values })));
      for (const [key, p] of batch) {
        const v = found.get(key) ?? this.missing();
        for (const w of p.waiters) w.resolve(v);
      }
    } catch (err) {
      for (const p of batch.values()) for (const w of p.waiters) w.reject(err);
    }
  }
}

/** A stable string for a key tuple (driver values: strings for int8/numeric, numbers for int4). */
export const keyOf = (values: readonly unknown[]) => JSON.stringify(values.map((v) => (v === null || v === undefined ? null : typeof v === 'object' ? JSON.stringify(v) : String(v as string | number | bigint | boolean))));
