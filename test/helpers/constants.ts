export const TEST_APP_ROLE = 'strata_app_test';
export const TEST_APP_PASSWORD = 'strata-app-test-password';
export const TEST_JWT_SECRET = 'test-secret-test-secret-test-secret-0123456789';
