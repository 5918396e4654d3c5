/**
 * Generate openapi/openapi.json from the route schemas (the app is built, never started: no
 * database or Redis is contacted). `--check` fails when the committed file is out of date.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildForSpec } from './spec-app.js';

const file = path.resolve('openapi/openapi.json');

async function main(): Promise<void> {
  const app = await buildForSpec();
  await app.ready();
  const spec = JSON.stringify(app.swagger(), null, 2) + '\n';
  await app.close();
  if (process.argv.includes('--check')) {
    const current = await readFile(file, 'utf8').catch(() => '');
    if (current !== spec) {
      process.stderr.write('openapi/openapi.json is out of date with the route schemas: run `npm run openapi` and commit it\n');
      process.exit(1);
    }
    process.stdout.write('openapi/openapi.json is current\n');
    return;
  }
  await writeFile(file, spec);
  process.stdout.write(`wrote ${path.relative(process.cwd(), file)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
