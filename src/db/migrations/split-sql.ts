/**
 * Splits a SQL script into statements at top-level semicolons. Needed only for non-transactional
 * migrations: a multi-statement query string runs as one implicit transaction in PostgreSQL, so
 * CREATE INDEX CONCURRENTLY must be sent alone.
 *
 * Understands quotes ('..', E'..', ".."), dollar quotes ($$..$$, $tag$..$tag$) and comments
 * (-- and nested /* *\/). Not understood: SQL-standard `BEGIN ATOMIC ... END` function bodies.
 */

export interface SqlStatement {
  sql: string;
  /** 1-based line of the statement's first character in the script. */
  line: number;
}

const DOLLAR_TAG = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/;

/** Returns the statements of `script`, without empty or comment-only ones. */
export function splitSql(script: string): SqlStatement[] {
  const out: SqlStatement[] = [];
  let start = 0;
  let i = 0;
  const n = script.length;

  const push = (end: number) => {
    const text = script.slice(start, end);
    if (stripComments(text).trim() !== '') {
      const lead = text.length - text.trimStart().length;
      const line = script.slice(0, start + lead).split('\n').length;
      out.push({ sql: text.trim(), line });
    }
  };

  while (i < n) {
    const c = script[i];
    const next = script[i + 1];
    if (c === '-' && next === '-') {
      const eol = script.indexOf('\n', i);
      i = eol === -1 ? n : eol + 1;
    } else if (c === '/' && next === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (script[i] === '/' && script[i + 1] === '*') {
          depth++;
          i += 2;
        } else if (script[i] === '*' && script[i + 1] === '/') {
          depth--;
          i += 2;
        } else i++;
      }
    } else if (c === "'" || c === '"') {
      // E'...' strings allow backslash escapes; doubled quotes escape in all forms.
      const backslash =
        c === "'" && i > 0 && /[eE]/.test(script[i - 1] ?? '') && !/\w/.test(script[i - 2] ?? '');
      i++;
      while (i < n) {
        if (backslash && script[i] === '\\') i += 2;
        else if (script[i] === c && script[i + 1] === c) i += 2;
        else if (script[i] === c) break;
        else i++;
      }
      i++;
    } else if (c === '$' && !/\w/.test(script[i - 1] ?? '')) {
      const m = DOLLAR_TAG.exec(script.slice(i, i + 64));
      if (m) {
        const tag = m[0];
        const close = script.indexOf(tag, i + tag.length);
        i = close === -1 ? n : close + tag.length;
      } else i++;
    } else if (c === ';') {
      push(i);
      start = i + 1;
      i++;
    } else i++;
  }
  push(n);
  return out;
}

function stripComments(text: string): string {
  return text.replace(/--[^\n]*/g, '').replace(/\/\*[\s\S]*?\*\//g, '');
}
