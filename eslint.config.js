// @ts-check
// Flat config: typescript-eslint's type-aware recommended set, type-only imports, no floating promises.
// Type information comes from the projectService (tsconfig.json); plain JS config files are linted
// without it.
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';
import strata from './eslint-rules/capability-imports.js';

export default defineConfig(
  {
    ignores: ['bench/anchors/**', 'dist/', 'node_modules/', 'coverage/', '.data/', 'bench/results/', 'openapi/', '**/*.d.ts'],
  },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'module',
      parserOptions: {
        projectService: {
          // Config files outside tsconfig's include still get a (default) program.
          allowDefaultProject: ['*.js', '*.mjs', '*.cjs'],
        },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    plugins: { strata },
    linterOptions: {
      reportUnusedDisableDirectives: 'warn',
    },
    rules: {
      '@typescript-eslint/consistent-type-imports': [
        'error',
        { prefer: 'type-imports', fixStyle: 'inline-type-imports' },
      ],
      '@typescript-eslint/no-floating-promises': 'error',
      // Capabilities (src/services/<capability>/) are imported only through their index.ts.
      'strata/capability-imports': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-explicit-any': 'warn',
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrorsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
          ignoreRestSiblings: true,
        },
      ],
      // Fastify plugins and route handlers are commonly `async` without an await.
      '@typescript-eslint/require-await': 'off',
      // Template literals with numbers (ports, counts) are fine.
      '@typescript-eslint/restrict-template-expressions': [
        'error',
        { allowNumber: true, allowBoolean: true, allowNullish: true },
      ],
    },
  },
  {
    // Tests and benchmarks poke at loosely typed payloads (JSON bodies, driver rows): keep the
    // unsafe-any family quiet there rather than forcing casts everywhere.
    files: ['test/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.ts', '**/*.test.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    // Plain JS (this file, other tool configs): no type-aware rules.
    files: ['**/*.js', '**/*.mjs', '**/*.cjs'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
