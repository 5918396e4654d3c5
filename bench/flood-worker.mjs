// A load generator on its own thread (bench/scenarios/fairness.ts): tenant A's flood must not share
// the event loop of the client that measures tenant B, or B's figures would show the bench's own
// parsing of A's large answers, not the server's fairness.
import { parentPort, workerData } from 'node:worker_threads';
import autocannon from 'autocannon';

const { url, connections, duration, kinds } = workerData;
let i = 0;
const statuses = {};
const inst = autocannon(
  { url, connections, duration, timeout: 20, requests: [{ setupRequest: (req) => ({ ...req, ...kinds[i++ % kinds.length] }) }] },
  (err, res) => {
    if (err) parentPort.postMessage({ error: String(err) });
    else parentPort.postMessage({ total: res.requests.total, rps: Math.round(res.requests.total / res.duration), non2xx: res.non2xx, errors: res.errors, statuses });
  },
);
inst.on('response', (_client, status) => {
  statuses[status] = (statuses[status] ?? 0) + 1;
});
