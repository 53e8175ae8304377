// The committed JSON Schema matches schema.ts, describes every key, and the examples validate against it.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { renderSchema, SCHEMA_FILE } from '../../src/config/write-schema.js';

const committed = readFileSync(SCHEMA_FILE, 'utf8');
const schema = JSON.parse(committed) as Record<string, unknown>;
const examples = ['minimal.yml', 'full.yml'].map((f) => fileURLToPath(new URL(`../../config/examples/${f}`, import.meta.url)));

t.test('config/gateway.schema.json is up to date (run: node --import=tsx src/config/write-schema.ts)', async (t) => {
  t.equal(committed, renderSchema());
  t.equal(schema.$id, 'https://portcullis.dev/schemas/gateway.schema.json');
  t.equal(schema.title, 'Portcullis gateway configuration');
  t.equal(schema.$schema, 'http://json-schema.org/draft-07/schema#');
});

t.test('every object is closed and every key has a description', async (t) => {
  const missing: string[] = [];
  const open: string[] = [];
  const walk = (node: unknown, where: string): void => {
    if (Array.isArray(node)) return node.forEach((n, i) => walk(n, `${where}[${i}]`));
    if (node === null || typeof node !== 'object') return;
    const n = node as Record<string, unknown>;
    if (n.type === 'object' && n.additionalProperties !== false) open.push(where);
    if (n.properties !== undefined) {
      for (const [k, v] of Object.entries(n.properties as Record<string, Record<string, unknown>>)) {
        if (typeof v.description !== 'string' || v.description === '') missing.push(`${where}.${k}`);
      }
    }
    for (const [k, v] of Object.entries(n)) walk(v, `${where}/${k}`);
  };
  walk(schema, '#');
  t.same(missing, [], 'keys without description');
  // The CSP directive map is the one intentionally open map (directive names are checked by the loader).
  t.same(open.filter((w) => !w.includes('content_security_policy')), [], 'objects accepting unknown keys');
});

t.test('the example files validate against the committed JSON file (Ajv directly)', async (t) => {
  const validate = new Ajv({ allErrors: true, strict: false }).compile(schema);
  for (const file of examples) {
    const data = parse(readFileSync(file, 'utf8')) as unknown;
    t.ok(validate(data), `${file}: ${JSON.stringify(validate.errors)}`);
  }
  // And the JSON file really refuses a typo.
  t.notOk(validate({ sites: [{ hosts: ['a.example.com'], upstream: 'http://127.0.0.1:1', upsteam: 'x' }] }));
  t.notOk(validate({ sites: [{ hosts: ['a.example.com'], upstream: 'http://127.0.0.1:1', routes: [{ path: '/', access: 'open' }] }] }));
});
