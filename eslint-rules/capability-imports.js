// @ts-check
/**
 * `strata/capability-imports`: a capability under src/services/<capability>/ is imported from outside
 * only through its index.ts (its public face); the files beside it are private to it.
 *
 * Written here rather than configured with core `no-restricted-imports`, which matches the import
 * text, not the file it resolves to: `../changes/x.js` means the change-capture capability from
 * src/services/data/ but a route folder from src/api/rest/tables/, and several route folders share
 * capability names. This rule resolves each relative specifier against the importing file first.
 */
import path from 'node:path';

const SERVICES = path.join('src', 'services');

/** The capability folder a file belongs to, or null outside src/services/<capability>/. */
function capabilityOf(root, file) {
  const rel = path.relative(path.join(root, SERVICES), file);
  if (rel.startsWith('..') || path.isAbsolute(rel)) return null;
  const parts = rel.split(path.sep);
  return parts.length > 1 ? parts[0] : null;
}

/** @type {import('eslint').Rule.RuleModule} */
const rule = {
  meta: {
    type: 'problem',
    docs: { description: 'Import another capability only through its index.ts' },
    schema: [],
    messages: {
      private:
        "'{{spec}}' is private to the {{cap}} capability: import from src/services/{{cap}}/index.ts (add it to that face if it is meant to be public)",
    },
  },
  create(context) {
    const root = context.cwd;
    const file = context.filename;
    const mine = capabilityOf(root, file);
    /** @param {any} node */
    const check = (node) => {
      const spec = node.source?.value;
      if (typeof spec !== 'string' || !spec.startsWith('.')) return;
      const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, '.ts');
      const cap = capabilityOf(root, target);
      if (cap === null || cap === mine) return;
      if (path.relative(path.join(root, SERVICES, cap), target) === 'index.ts') return;
      context.report({ node: node.source, messageId: 'private', data: { spec, cap } });
    };
    return {
      ImportDeclaration: check,
      ExportNamedDeclaration: check,
      ExportAllDeclaration: check,
      ImportExpression: check,
    };
  },
};

export default { rules: { 'capability-imports': rule } };
