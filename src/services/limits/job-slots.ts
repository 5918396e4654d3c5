/**
 * Running-job slots per tenant, shared by every worker process: a Redis sorted set per tenant of
 * job id -> lease expiry. Taking a slot drops lapsed leases first (a worker that died gives its
 * slots back within one lease), then adds the job if fewer than the limit are running. A running
 * job renews its lease; a finished one removes it.
 */
import type { Redis } from 'ioredis';

const TAKE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
`;

export interface JobSlotsOptions {
  redis: Redis;
  prefix: string;
  /** How long a slot is held without renewal. */
  leaseMs?: number;
}

export interface JobSlot {
  /** Give the slot back (idempotent). */
  release(): Promise<void>;
}

export class JobSlots {
  private readonly leaseMs: number;

  constructor(private readonly o: JobSlotsOptions) {
    this.leaseMs = o.leaseMs ?? 60_000;
  }

  private key(tenantId: string): string {
    return `${this.o.prefix}:jobs:${tenantId}`;
  }

  /** Take a slot for `jobId` when the tenant runs fewer than `limit` jobs; undefined when it is at its limit. */
  async take(tenantId: string, jobId: string, limit: number): Promise<JobSlot | undefined> {
    const key = this.key(tenantId);
    const now = Date.now();
    const ok = (await this.o.redis.eval(TAKE, 1, key, now, limit, jobId, now + this.leaseMs, this.leaseMs * 2)) as number;
    if (ok !== 1) return undefined;
    const renew = setInterval(() => {
      const t = Date.now();
      this.o.redis
        .multi()
        .zadd(key, t + this.leaseMs, jobId)
        .pexpire(key, this.leaseMs * 2)
        .exec()
        .catch(() => undefined);
    }, Math.max(1000, this.leaseMs / 3));
    renew.unref();
    let released = false;
    return {
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(renew);
        await this.o.redis.zrem(key, jobId).catch(() => undefined);
      },
    };
  }

  /** Jobs of a tenant holding a slot now (tests). */
  async running(tenantId: string): Promise<number> {
    return this.o.redis.zcount(this.key(tenantId), Date.now(), '+inf');
  }
}
