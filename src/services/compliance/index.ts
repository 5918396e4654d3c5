/**
 * The compliance capability's public face (SPEC 12): column declarations, envelope encryption with
 * per-tenant data keys under a master key ring, blind indexes, masking rules and PII detection.
 */
export { parseMasterKeys, type MasterKeys, type WrappedKey } from './keyring.js';
export { blindIndex, decryptField, encryptField, isCiphertext, keyVersionOf, CIPHERTEXT_PREFIX, type FieldContext } from './envelope.js';
export { createTenantKeys, encryptionDisabled, type TenantKeys } from './keys.js';
export { applyMask, parseMaskRule, PII_CATEGORIES, type MaskRule, type PiiCategory } from './masking.js';
export { categoryByName, categoryByValue, ibanValid, judgeColumn, luhnValid, type Finding } from './detection.js';
export { blindIndexColumn, createDeclarations, maskValue, ruleFor, type ColumnPolicy, type DeclareInput, type Declarations } from './declarations.js';
export { createEnforcement, createEventMasking, maskStoredRow, Guard, type EventMasking, type Enforcement, type GuardedColumn, type PolicySnapshot } from './enforce.js';
export { createAuditLog, apiKeyIdOf, type AuditLog, type AuditEntry, type AuditRow, type AuditFilter } from './audit.js';
