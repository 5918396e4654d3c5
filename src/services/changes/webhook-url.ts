/**
 * Webhook URLs against SSRF: http(s) only, no credentials, and every address the host resolves to
 * must be public (unless WEBHOOK_ALLOW_PRIVATE). Checked when a webhook is created or changed, and
 * again at every delivery by the socket's own DNS lookup (`guardedLookup`), so a host that resolves
 * differently later (DNS rebinding) is refused at connect time. Address ranges use node's BlockList.
 */
import dns from 'node:dns';
import net from 'node:net';
import { badRequest } from '../../errors.js';

const blocked = new net.BlockList();
for (const [addr, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24],
  ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) blocked.addSubnet(addr, prefix, 'ipv4');
for (const [addr, prefix] of [
  ['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['2001:db8::', 32], ['64:ff9b::', 96], ['100::', 64],
] as const) blocked.addSubnet(addr, prefix, 'ipv6');

/** True when an IP address is private, loopback, link-local, reserved or multicast. */
export function isPrivateAddress(address: string): boolean {
  const family = net.isIP(address);
  if (family === 4) return blocked.check(address, 'ipv4');
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped?.[1]) return blocked.check(mapped[1], 'ipv4');
    return blocked.check(address, 'ipv6');
  }
  return true; // not an address at all: refuse
}

const badUrl = (message: string) => badRequest('BAD_WEBHOOK_URL', message);
const privateUrl = (host: string, address: string) =>
  badRequest('PRIVATE_WEBHOOK_URL', `webhook host ${host} resolves to ${address}, a private or reserved address (set WEBHOOK_ALLOW_PRIVATE=true to allow)`);

/** Parse and check a webhook URL's form (no DNS). 400 BAD_WEBHOOK_URL naming the problem. */
export function parseWebhookUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw badUrl(`${JSON.stringify(raw)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw badUrl(`webhook URLs must be http or https, got ${url.protocol.replace(/:$/, '')}`);
  if (url.username || url.password) throw badUrl('webhook URLs must not carry credentials');
  if (!url.hostname) throw badUrl('webhook URL has no host');
  if (raw.length > 2048) throw badUrl('webhook URL is longer than 2048 characters');
  return url;
}

/** Form and resolution check, at creation. 400 BAD_WEBHOOK_URL / PRIVATE_WEBHOOK_URL. */
export async function checkWebhookUrl(raw: string, allowPrivate: boolean): Promise<URL> {
  const url = parseWebhookUrl(raw);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  let addresses: string[];
  if (net.isIP(host)) addresses = [host];
  else {
    try {
      addresses = (await dns.promises.lookup(host, { all: true, verbatim: true })).map((a) => a.address);
    } catch {
      throw badUrl(`webhook host ${host} does not resolve`);
    }
  }
  if (!allowPrivate) {
    const bad = addresses.find(isPrivateAddress);
    if (bad) throw privateUrl(host, bad);
  }
  return url;
}

/** A `lookup` for http.request that refuses private addresses at connect time (DNS rebinding). */
export function guardedLookup(allowPrivate: boolean): net.LookupFunction {
  return (hostname, options, callback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 4);
      const list = addresses;
      const bad = allowPrivate ? undefined : list.find((a) => isPrivateAddress(a.address));
      if (bad) {
        const e = Object.assign(new Error(`webhook host ${hostname} resolves to private address ${bad.address}`), { code: 'EPRIVATEADDR' });
        return callback(e, '', 4);
      }
      if ((options).all) return (callback as unknown as (e: null, a: dns.LookupAddress[]) => void)(null, list);
      const first = list[0];
      if (!first) return callback(Object.assign(new Error(`webhook host ${hostname} has no address`), { code: 'ENOTFOUND' }), '', 4);
      callback(null, first.address, first.family);
    });
  };
}
