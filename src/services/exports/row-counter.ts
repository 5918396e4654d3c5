/** Row counting over COPY output, for job progress. */
import type { ExportFormat } from './plan.js';

const LF = 0x0a;
const QUOTE = 0x22;

/**
 * Counts rows in COPY output as it passes. NDJSON: one line per row. CSV: newlines outside quoted
 * fields (a quote inside a field is doubled, so quote parity tells inside from outside), less the
 * header. Uses Buffer.indexOf, so counting costs little next to the copy itself.
 */
export function rowCounter(format: ExportFormat): { push(chunk: Buffer): void; readonly rows: number } {
  let lines = 0;
  let inQuotes = false;
  return {
    push(chunk) {
      if (format === 'ndjson') {
        for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) lines++;
        return;
      }
      let i = 0;
      while (i < chunk.length) {
        if (inQuotes) {
          const qpos = chunk.indexOf(QUOTE, i);
          if (qpos === -1) return;
          inQuotes = false;
          i = qpos + 1;
          continue;
        }
        const lf = chunk.indexOf(LF, i);
        const qpos = chunk.indexOf(QUOTE, i);
        if (lf === -1 && qpos === -1) return;
        if (qpos !== -1 && (lf === -1 || qpos < lf)) {
          inQuotes = true;
          i = qpos + 1;
        } else {
          lines++;
          i = lf + 1;
        }
      }
    },
    get rows() {
      return format === 'csv' ? Math.max(0, lines - 1) : lines;
    },
  };
}
