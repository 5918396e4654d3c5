// Tenant A's load generator (bench/scenarios/fairness.ts), in a process of its own: it must not share
// the event loop of the client that measures tenant B (B's figures would show the bench parsing A's
// large answers), and its own CPU is measured (process.cpuUsage) and reported, since on a 2-core
// machine the generator competes with the server for the same cores. B's client never sees A's answers.
import process from 'node:process';
import autocannon from 'autocannon';

const { url, connections, duration, kinds } = JSON.parse(process.env.FLOOD_SPEC);
let i = 0;
const statuses = {};
const cpu0 = process.cpuUsage();
const inst = autocannon(
  { url, connections, duration, timeout: 20, requests: [{ setupRequest: (req) => ({ ...req, ...kinds[i++ % kinds.length] }) }] },
  (err, res) => {
    const cpu = process.cpuUsage(cpu0);
    const cpuMs = Math.round((cpu.user + cpu.system) / 1000);
    if (err) process.send({ error: String(err) });
    else process.send({ total: res.requests.total, rps: Math.round(res.requests.total / res.duration), non2xx: res.non2xx, errors: res.errors, statuses, cpuMs, seconds: res.duration });
    process.disconnect();
  },
);
inst.on('response', (_client, status) => {
  statuses[status] = (statuses[status] ?? 0) + 1;
});
