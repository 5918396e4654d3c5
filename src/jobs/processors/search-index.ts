/** Build or drop a search index (SPEC 10): the DDL lives in src/services/search/ddl.ts. */
import { buildSearchIndex, dropSearchIndex } from '../../services/search/index.js';
import type { ProcessorContext } from '../processor.js';

export function searchIndexCreate(ctx: ProcessorContext<'search-index-create'>) {
  return buildSearchIndex(ctx.db, ctx.job.data.table, ctx);
}

export function searchIndexDrop(ctx: ProcessorContext<'search-index-drop'>) {
  return dropSearchIndex(ctx.db, ctx.job.data.table, ctx);
}
