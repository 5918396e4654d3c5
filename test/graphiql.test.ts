import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestApp, type TestApp } from './helpers/app.js';

/** Debian's chromium (CI installs it in .ci/run); the browser test is skipped, with the reason printed, where it is absent. */
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));

if (!CHROMIUM) console.warn('graphiql.test.ts: the headless Chromium check is SKIPPED: no chromium binary (apt-get install chromium)');

describe('GraphiQL served from bundled packages (offline, strict CSP)', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await createTestApp({ seed: true });
  });
  afterAll(() => t.close());

  it('serves a page that names no other origin, under a CSP allowing only its own scripts, and every asset it loads', async () => {
    const page = await t.app.inject({ url: '/graphiql' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    const csp = String(page.headers['content-security-policy']);
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toContain("default-src 'none'");
    expect(page.body).not.toMatch(/https?:\/\//);
    expect(page.body).not.toMatch(/<script>(?!<\/script>)|<script(?![^>]*\ssrc=)[^>]*>/); // no inline script
    const assets = [...page.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] as string);
    expect(assets.length).toBeGreaterThanOrEqual(5);
    for (const url of assets) {
      expect(url.startsWith('/graphiql/assets/')).toBe(true);
      const res = await t.app.inject({ url });
      expect(res.statusCode, url).toBe(200);
      expect(res.headers['content-type']).toMatch(url.endsWith('.css') ? /text\/css/ : /javascript/);
      expect(res.body.length).toBeGreaterThan(100);
    }
    // the bundles themselves load nothing from a CDN
    const js = await t.app.inject({ url: '/graphiql/assets/strata-graphiql.js' });
    expect(js.body).not.toMatch(/https?:\/\//);
  });

  it('answers 404 with a code for an asset it does not have (no path reaches the file system)', async () => {
    for (const name of ['nope.js', '..%2F..%2Fpackage.json', '%2Fetc%2Fpasswd', 'constructor', '__proto__']) {
      const res = await t.app.inject({ url: `/graphiql/assets/${name}` });
      expect(res.statusCode, name).toBe(404);
      expect(res.json().error.code).toBe('NOT_FOUND');
    }
  });

  it.skipIf(!CHROMIUM)('renders in headless Chromium with no network: the explorer lists the tables and a query returns rows', async () => {
    const { default: puppeteer } = await import('puppeteer-core');
    const address = await t.app.listen({ port: 0, host: '127.0.0.1' });
    const token = (await t.auth('reader', 'acme'))['authorization']!.replace(/^Bearer /, '');
    const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    const outside: string[] = [];
    const violations: string[] = [];
    try {
      const page = await browser.newPage();
      await page.setRequestInterception(true);
      page.on('request', (req) => {
        // air-gapped: anything but this server fails
        const url = req.url();
        if (!url.startsWith('data:') && new URL(url).origin !== address) {
          outside.push(url);
          void req.abort();
        } else void req.continue();
      });
      page.on('console', (msg) => {
        if (/Content Security Policy/i.test(msg.text())) violations.push(msg.text());
      });
      await page.goto(`${address}/graphiql#token=${token}`, { waitUntil: 'networkidle0' });
      await page.waitForSelector('.graphiql-container', { timeout: 20_000 });
      // the schema explorer: open the docs, then the Query type, which lists the tables' fields
      await page.click('[aria-label="Show Documentation Explorer"]');
      // (browser-side code as strings: the test compiles without the DOM library)
      const text = (selector: string) => `(document.querySelector(${JSON.stringify(selector)})?.textContent ?? '')`;
      await page.waitForFunction(`${text('.graphiql-doc-explorer')}.includes('Query')`, { timeout: 20_000 });
      await page.evaluate(`[...document.querySelectorAll('.graphiql-doc-explorer a')].find((a) => a.textContent === 'Query')?.click()`);
      await page.waitForFunction(`/pipelines_by_pk/.test(${text('.graphiql-doc-explorer')})`, { timeout: 20_000 });
      const explorer = String(await page.evaluate(text('.graphiql-doc-explorer')));
      expect(explorer).toContain('pipeline_runs');
      expect(explorer).toContain('run_steps');
      // a query typed into the editor (CodeMirror), run with the execute button
      await page.evaluate(`document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue('{ pipelines(first: 3, order_by: [{ id: asc }]) { nodes { id name } } }')`);
      await page.click('.graphiql-execute-button');
      await page.waitForFunction(`/pipeline-/.test(${text('.graphiql-response')})`, { timeout: 20_000 });
      const response = String(await page.evaluate(text('.graphiql-response')));
      expect(response).toMatch(/"name": "pipeline-\d+"/);
      expect(outside).toEqual([]);
      expect(violations).toEqual([]);
    } finally {
      await browser.close();
    }
  }, 90_000);

});
