/**
 * Regenerates `config/gateway.schema.json` from the TypeBox schema:
 *   node --import=tsx src/config/write-schema.ts
 * A test fails when the committed file drifts from `schema.ts`.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { jsonSchemaDocument } from './schema.js';

export const SCHEMA_FILE = fileURLToPath(new URL('../../config/gateway.schema.json', import.meta.url));

export function renderSchema(): string {
  return `${JSON.stringify(jsonSchemaDocument(), null, 2)}\n`;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(SCHEMA_FILE, renderSchema());
  console.log(`wrote ${SCHEMA_FILE}`);
}
