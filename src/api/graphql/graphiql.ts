/**
 * GraphiQL at /graphiql, served entirely by Strata from npm packages it ships with (graphiql,
 * react, react-dom: their UMD builds), so it works air-gapped and under a strict
 * Content-Security-Policy: no inline script, no other origin. The page is public; its data needs a
 * token, typed into the page's token field (kept in the browser's localStorage) or handed over in the
 * URL fragment (`/graphiql#token=...`, never sent to the server): in development the boot log
 * prints such a link with a demo token.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';

const require = createRequire(import.meta.url);
const packageDir = (name: string) => path.dirname(require.resolve(`${name}/package.json`));

/** Every asset the page loads: a fixed list (no path from the request reaches the file system). */
const ASSETS: Record<string, { file: () => string; type: string }> = {
  'react.production.min.js': { file: () => path.join(packageDir('react'), 'umd', 'react.production.min.js'), type: 'text/javascript; charset=utf-8' },
  'react-dom.production.min.js': { file: () => path.join(packageDir('react-dom'), 'umd', 'react-dom.production.min.js'), type: 'text/javascript; charset=utf-8' },
  'graphiql.min.js': { file: () => path.join(packageDir('graphiql'), 'graphiql.min.js'), type: 'text/javascript; charset=utf-8' },
  'graphiql.min.css': { file: () => path.join(packageDir('graphiql'), 'graphiql.min.css'), type: 'text/css; charset=utf-8' },
};

export const GRAPHIQL_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Strata GraphiQL</title>
<link rel="stylesheet" href="/graphiql/assets/graphiql.min.css">
<link rel="stylesheet" href="/graphiql/assets/strata.css">
</head>
<body>
<form id="strata-token" autocomplete="off">
<label for="strata-token-input">Bearer token</label>
<input id="strata-token-input" type="password" placeholder="paste a token (the development boot log prints demo tokens)">
<button type="submit">Use</button>
<span id="strata-token-state"></span>
</form>
<div id="graphiql">Loading GraphiQL...</div>
<script src="/graphiql/assets/react.production.min.js"></script>
<script src="/graphiql/assets/react-dom.production.min.js"></script>
<script src="/graphiql/assets/graphiql.min.js"></script>
<script src="/graphiql/assets/strata-graphiql.js"></script>
</body>
</html>
`;

const STYLE = `html, body { height: 100%; margin: 0; }
body { display: flex; flex-direction: column; font-family: system-ui, sans-serif; }
#strata-token { display: flex; gap: 8px; align-items: center; padding: 6px 10px; border-bottom: 1px solid #ddd; font-size: 13px; }
#strata-token input { flex: 1; max-width: 640px; font-family: monospace; }
#graphiql { flex: 1; min-height: 0; }
`;

/** The page's script (an asset, not inline: the CSP allows no inline script). */
const SCRIPT = `(function () {
  'use strict';
  var KEY = 'strata.graphiql.token';
  var match = /(?:^|&)token=([^&]+)/.exec(window.location.hash.slice(1));
  if (match) {
    window.localStorage.setItem(KEY, decodeURIComponent(match[1]));
    window.history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  var token = window.localStorage.getItem(KEY) || '';
  var input = document.getElementById('strata-token-input');
  var state = document.getElementById('strata-token-state');
  input.value = token;
  state.textContent = token ? 'token set' : 'no token: queries answer 401';
  document.getElementById('strata-token').addEventListener('submit', function (event) {
    event.preventDefault();
    window.localStorage.setItem(KEY, input.value.trim().replace(/^Bearer\\s+/i, ''));
    window.location.reload();
  });
  function fetcher(params) {
    var headers = { 'content-type': 'application/json', accept: 'application/json' };
    if (token) headers.authorization = 'Bearer ' + token;
    return window.fetch('/graphql', { method: 'POST', headers: headers, body: JSON.stringify(params), credentials: 'omit' }).then(function (res) {
      return res.json();
    });
  }
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, { fetcher: fetcher, defaultEditorToolsVisibility: true, isHeadersEditorEnabled: false }));
})();
`;

const INLINE: Record<string, { body: string; type: string }> = {
  'strata-graphiql.js': { body: SCRIPT, type: 'text/javascript; charset=utf-8' },
  'strata.css': { body: STYLE, type: 'text/css; charset=utf-8' },
};

export async function graphiqlRoutes(app: FastifyInstance): Promise<void> {
  const cache = new Map<string, Buffer>();
  const security = { 'content-security-policy': GRAPHIQL_CSP, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' };

  app.get('/graphiql', async (_request, reply) => reply.headers(security).type('text/html; charset=utf-8').header('cache-control', 'no-cache').send(PAGE));

  app.get<{ Params: { file: string } }>('/graphiql/assets/:file', async (request, reply) => {
    const name = request.params.file;
    const inline = Object.prototype.hasOwnProperty.call(INLINE, name) ? INLINE[name] : undefined;
    if (inline) return reply.headers(security).type(inline.type).header('cache-control', 'no-cache').send(inline.body);
    const asset = Object.prototype.hasOwnProperty.call(ASSETS, name) ? ASSETS[name] : undefined;
    if (!asset) return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no GraphiQL asset ${JSON.stringify(name)}` } });
    let body = cache.get(name);
    if (!body) {
      body = await readFile(asset.file());
      cache.set(name, body);
    }
    return reply.headers(security).type(asset.type).header('cache-control', 'public, max-age=86400').send(body);
  });
}
