/**
 * The compliance capability's public face (SPEC 12): column declarations, envelope encryption with
 * per-tenant data keys under a master key ring, blind indexes, masking rules and PII detection.
 */
export { parseMasterKeys, type MasterKeys, type WrappedKey } from './keyring.js';
export { blindIndex, decryptField, encryptField, isCiphertext, keyVersionOf, CIPHERTEXT_PREFIX, type FieldContext } from './envelope.js';
export { createTenantKeys, encryptionDisabled, type TenantKeys } from './keys.js';
export { applyMask, compileMask, parseMaskRule, PII_CATEGORIES, type MaskRule, type PiiCategory } from './masking.js';
export { categoryByName, categoryByValue, ibanValid, judgeColumn, luhnValid, type Finding } from './detection.js';
export { blindIndexColumn, createDeclarations, maskValue, ruleFor, type ColumnPolicy, type DeclareInput, type Declarations } from './declarations.js';
export { createComplianceOps, type ComplianceOps, type ComplianceOpsDeps } from './ops.js';
export { SUBJECT_ACTIONS, type SubjectAction, type SubjectDeclaration } from './subjects.js';
export { SUBJECT_CIPHERTEXT_PREFIX, type SubjectKeys } from './subject-keys.js';
export { subjectDigest, type ErasureReport, type BackupLister } from './erasure.js';
export { type Rotation, type RotationKind } from './rotation.js';
export { SCAN_DEFAULT_SAMPLE, SCAN_MAX_SAMPLE, type ScanFinding, type ScanInput } from './scan.js';
export { createFaker, type FakeColumn } from './fakes.js';
export { fakedColumns, type AnonymizeInput, type AnonymizeResult, type AnonymizeRunOptions } from './anonymize.js';
export { REPORT_COUNT_CAP } from './report.js';
export { createEnforcement, createEventMasking, maskStoredRow, Guard, type EventMasking, type Enforcement, type GuardedColumn, type PolicySnapshot } from './enforce.js';
export { createAuditLog, apiKeyIdOf, type AuditLog, type AuditEntry, type AuditRow, type AuditFilter, type CapturedAudit } from './audit.js';
export { checkViewLineage, checkNoViewUses } from './lineage.js';
export { createSubjectFields, isSubjectFieldCiphertext, type SubjectFields } from './subject-fields.js';
export { looksEncrypted, type Conversion } from './conversion.js';
