/**
 * The compliance operations (issue 15's second half): subject declarations and erasure, per-subject
 * keys, key rotation, the PII scan, anonymized copies and the report. One factory, so the API process
 * and the workers build the same thing from the same dependencies.
 */
import type { Database } from '../../db/database.js';
import type { SchemaRegistry } from '../data/index.js';
import { createAnonymizer } from './anonymize.js';
import { createConversion } from './conversion.js';
import { createErasure, type BackupLister } from './erasure.js';
import type { MasterKeys } from './keyring.js';
import type { TenantKeys } from './keys.js';
import { createReport } from './report.js';
import { createRotation } from './rotation.js';
import { createScan } from './scan.js';
import { createSubjectFields } from './subject-fields.js';
import { createSubjectKeys } from './subject-keys.js';
import { createSubjects } from './subjects.js';

export interface ComplianceOpsDeps {
  db: Database;
  schema: SchemaRegistry;
  keys: TenantKeys;
  masterKeys: MasterKeys | null;
  /** Completed backups, for the erasure report (absent in the workers: they do not erase). */
  backups?: BackupLister;
  /** Rotation batch size (rows per transaction). */
  rotationBatch?: number;
}

export function createComplianceOps(deps: ComplianceOpsDeps) {
  const { db, schema } = deps;
  const subjectFields = createSubjectFields({ db, keys: deps.masterKeys });
  return {
    subjectFields,
    conversion: createConversion({ db, schema, keys: deps.keys, subjects: subjectFields, batchSize: deps.rotationBatch }),
    subjects: createSubjects({ db, schema }),
    subjectKeys: createSubjectKeys({ db, keys: deps.masterKeys }),
    erasure: createErasure({ db, schema, backups: deps.backups, backupKeepDays: db.config.BACKUP_KEEP_DAYS }),
    rotation: createRotation({ db, schema, keys: deps.keys, masterKeys: deps.masterKeys, batchSize: deps.rotationBatch }),
    scan: createScan({ db, schema }),
    anonymizer: createAnonymizer({ db, schema, keys: deps.masterKeys ? deps.keys : null }),
    report: createReport({ db, schema, masterKeys: deps.masterKeys }),
  };
}

export type ComplianceOps = ReturnType<typeof createComplianceOps>;
