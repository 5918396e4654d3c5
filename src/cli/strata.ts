#!/usr/bin/env node
/**
 * The `strata` command (package.json `bin`): `strata backup <create|list|verify|restore> ...`.
 * Later capabilities add their subcommands here.
 */
const [sub, ...rest] = process.argv.slice(2);

async function run(): Promise<number> {
  if (sub === 'backup') {
    const { main } = await import('./backup.js');
    return main(rest);
  }
  process.stderr.write('usage: strata backup <create|list|verify|restore> [options]   (strata backup --help)\n');
  return 2;
}

run().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`strata: ${(err as Error).message}\n`);
    process.exit(1);
  },
);
