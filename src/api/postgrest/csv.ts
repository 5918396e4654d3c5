/** Rows (JSON text each) as CSV with a header line, as PostgREST answers `Accept: text/csv`. */
const cell = (v: unknown): string => {
  if (v === null || v === undefined) return '';
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

/** `columns` names the header of an empty answer (PostgREST sends the header line alone). */
export function toCsv(rows: string[], columns: string[] = []): string {
  if (rows.length === 0) return columns.map(cell).join(',');
  const objects = rows.map((r) => JSON.parse(r) as Record<string, unknown>);
  const keys = Object.keys(objects[0]!);
  return [keys.map(cell).join(','), ...objects.map((o) => keys.map((k) => cell(o[k])).join(','))].join('\n');
}
