/**
 * Schema validation with messages written for people.
 *
 * Ajv reports every failed keyword (`allErrors`); for a union (`anyOf`) that means one error per
 * branch, which reads as noise ("must be equal to constant" ×3). `explain` folds each union back
 * into one sentence ("must be one of: public, authenticated, deny"), or, when the value has the
 * right type for one branch, into that branch's own errors.
 */
import { Ajv, type ErrorObject, type AnySchemaObject } from 'ajv';
import { GatewayFileSchema, RATE_LIMIT_KEY_PATTERN } from './schema.js';
import type { PendingProblem } from './problems.js';
import { DURATION_PATTERN, SIZE_PATTERN } from './units.js';

const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, strictTypes: false });
const validateFile = ajv.compile(GatewayFileSchema);

/** Validates the raw (substituted) data; returns problems, empty when valid. */
export function validateSchema(data: unknown): PendingProblem[] {
  if (validateFile(data)) return [];
  return explain(validateFile.errors ?? [], data);
}

function pointerToPath(pointer: string, data: unknown): (string | number)[] {
  if (pointer === '') return [];
  const out: (string | number)[] = [];
  let cur: unknown = data;
  for (const raw of pointer.slice(1).split('/')) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      const i = Number(seg);
      out.push(i);
      cur = cur[i];
    } else {
      out.push(seg);
      cur = cur !== null && typeof cur === 'object' ? (cur as Record<string, unknown>)[seg] : undefined;
    }
  }
  return out;
}

function describe(schema: AnySchemaObject): string {
  if ('const' in schema) return String(schema.const);
  if (Array.isArray(schema.anyOf)) return (schema.anyOf as AnySchemaObject[]).map(describe).join(' or ');
  switch (schema.type) {
    case 'null':
      return 'null';
    case 'string':
      return 'a string';
    case 'integer':
      return 'an integer';
    case 'number':
      return 'a number';
    case 'boolean':
      return 'true or false';
    case 'array':
      return 'a list';
    case 'object':
      return 'a map';
    default:
      return 'a value';
  }
}

function flatten(schema: AnySchemaObject): AnySchemaObject[] {
  return Array.isArray(schema.anyOf) && !isLiteralUnion(schema) ? (schema.anyOf as AnySchemaObject[]).flatMap(flatten) : [schema];
}

function oneOf(items: string[]): string {
  return items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]!}`;
}

function isLiteralUnion(schema: AnySchemaObject): boolean {
  const branches = schema.anyOf as AnySchemaObject[] | undefined;
  return Array.isArray(branches) && branches.every((b) => 'const' in b || b.type === 'null' || isLiteralUnion(b));
}

function literals(schema: AnySchemaObject): string[] {
  if ('const' in schema) return [String(schema.const)];
  if (schema.type === 'null') return ['null'];
  return ((schema.anyOf as AnySchemaObject[] | undefined) ?? []).flatMap(literals);
}

function message(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'type':
      return `must be ${describe({ type: p.type as string })}`;
    case 'pattern':
      if (p.pattern === DURATION_PATTERN) return 'must be a duration: an integer and a unit (ms, s, m, h, d, y), e.g. 30s';
      if (p.pattern === SIZE_PATTERN) return 'must be a size: an integer and a unit (b, kb, mb, gb), e.g. 1mb';
      if (p.pattern === RATE_LIMIT_KEY_PATTERN) return 'must be ip, user or header:NAME';
      if (typeof e.parentSchema?.description === 'string') return `invalid value: ${e.parentSchema.description}`;
      return `must match ${String(p.pattern)}`;
    case 'minLength':
      return 'must not be empty';
    case 'minItems':
      return p.limit === 1 ? 'must not be an empty list' : `must have at least ${String(p.limit)} items`;
    case 'minimum':
      return `must be at least ${String(p.limit)}`;
    case 'maximum':
      return `must be at most ${String(p.limit)}`;
    case 'const':
    case 'enum':
      return `must be ${describe(e.parentSchema ?? {})}`;
    default:
      return e.message ?? 'is invalid';
  }
}

function levenshtein(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

function suggestion(key: string, schema: AnySchemaObject | undefined): string {
  const known = Object.keys((schema?.properties as Record<string, unknown> | undefined) ?? {});
  let best: string | undefined;
  let bestDistance = 3;
  for (const k of known) {
    const d = levenshtein(key.toLowerCase(), k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best === undefined ? '' : ` (did you mean "${best}"?)`;
}

function explain(errors: readonly ErrorObject[], data: unknown): PendingProblem[] {
  const out: PendingProblem[] = [];
  let rest = [...errors];
  // Outermost unions first: their branch errors are folded away before they are reported.
  const unions = rest.filter((e) => e.keyword === 'anyOf').sort((a, b) => a.schemaPath.length - b.schemaPath.length);
  const consumed = new Set<ErrorObject>();
  for (const u of unions) {
    if (consumed.has(u)) continue;
    consumed.add(u);
    const prefix = `${u.schemaPath}/`;
    const children = rest.filter((e) => e !== u && e.schemaPath.startsWith(prefix) && !consumed.has(e));
    for (const c of children) consumed.add(c);
    const union = u.parentSchema ?? {};
    const branches = (union.anyOf as AnySchemaObject[] | undefined) ?? [];
    const path = pointerToPath(u.instancePath, data);
    if (isLiteralUnion(union)) {
      out.push({ path, message: `must be one of: ${literals(union).join(', ')}` });
      continue;
    }
    // The branch whose type the value has is what the author meant; report its errors.
    const matching = branches.findIndex((_, i) => {
      const own = children.filter((c) => c.schemaPath.startsWith(`${prefix}${i}/`));
      return !own.some((c) => c.instancePath === u.instancePath && (c.keyword === 'type' || c.keyword === 'const' || (c.keyword === 'anyOf' && c.schemaPath === `${prefix}${i}/anyOf`)));
    });
    if (matching === -1) {
      out.push({ path, message: `must be ${oneOf(branches.flatMap(flatten).map(describe))}` });
    } else {
      const own = children.filter((c) => c.schemaPath.startsWith(`${prefix}${matching}/`));
      for (const c of own) consumed.delete(c);
      out.push(...explain(own, data));
      for (const c of own) consumed.add(c);
    }
  }
  rest = rest.filter((e) => !consumed.has(e));
  for (const e of rest) {
    const path = pointerToPath(e.instancePath, data);
    if (e.keyword === 'additionalProperties') {
      const key = String((e.params as { additionalProperty: string }).additionalProperty);
      out.push({ path: [...path, key], at: 'key', message: `unknown key "${key}"${suggestion(key, e.parentSchema)}` });
    } else if (e.keyword === 'required') {
      const key = String((e.params as { missingProperty: string }).missingProperty);
      out.push({ path: [...path, key], at: 'parent', message: `missing required key "${key}"` });
    } else {
      out.push({ path, message: message(e) });
    }
  }
  return out;
}
