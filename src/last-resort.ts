/**
 * The last-resort handlers of a process (API and worker): what happens to an error nothing caught.
 *
 * - `unhandledRejection`: logged, counted, and the process keeps serving. A rejected promise nobody
 *   awaited has already unwound its own stack; no stream, socket or pool is left half-way by it, so
 *   serving on is safe (Node's default since v15 is to crash, which would let one request's forgotten
 *   `await` end every tenant's requests).
 * - `uncaughtException`: logged, counted, then the process drains (stops accepting, finishes the
 *   requests and jobs in flight, closes the pools) and exits with status 1, so its supervisor
 *   (Docker, Kubernetes, systemd) starts a fresh one. An exception thrown out of an event handler may
 *   have left an object mid-update (a database connection's protocol parser, a stream), and Node
 *   documents that resuming after it is unsafe. The known causes are fixed where they arise (every
 *   stream has its error listener before it can fail; a database socket whose data handler throws is
 *   destroyed, failing only its own query: see src/db/guarded-socket.ts), so this is for the unknown.
 *   A second uncaught exception while draining exits at once.
 */
import { Counter, type Registry } from 'prom-client';
import type { Logger } from 'pino';

export interface LastResortOptions {
  log: Pick<Logger, 'error' | 'fatal'>;
  registry: Registry;
  /** Graceful drain and exit (the SIGTERM path); called once, with the exit status to use. */
  drainAndExit: (reason: string, exitCode: number) => void;
  /** Tests: the process to listen on (default `process`). */
  target?: Pick<NodeJS.Process, 'on' | 'exit'>;
}

export const UNCAUGHT_METRIC = 'strata_uncaught_errors_total';

/** Installs both handlers; returns the counter (labels: `kind` = exception | rejection). */
export function installLastResort(o: LastResortOptions): Counter<'kind'> {
  const target = o.target ?? process;
  const existing = o.registry.getSingleMetric(UNCAUGHT_METRIC) as Counter<'kind'> | undefined;
  const counter =
    existing ??
    new Counter({
      name: UNCAUGHT_METRIC,
      help: 'Errors that reached the process-wide last-resort handlers (kind: exception drains and exits, rejection is logged and served on)',
      labelNames: ['kind'],
      registers: [o.registry],
    });
  let draining = false;
  target.on('unhandledRejection', (reason: unknown) => {
    counter.inc({ kind: 'rejection' });
    o.log.error({ err: reason }, 'unhandled promise rejection (logged and counted; the process keeps serving)');
  });
  target.on('uncaughtException', (err: Error) => {
    counter.inc({ kind: 'exception' });
    if (draining) {
      o.log.fatal({ err }, 'uncaught exception while draining: exiting now');
      target.exit(1);
      return;
    }
    draining = true;
    o.log.fatal({ err }, 'uncaught exception: draining requests and jobs, then exiting for the supervisor to restart the process');
    o.drainAndExit('uncaughtException', 1);
  });
  return counter;
}
