import t from 'tap';
import {
  decide,
  isAtLeastAsStrict,
  type AccessRule,
  type PrincipalRoles,
  REASON_AUTHENTICATED,
  REASON_INSUFFICIENT_ROLE,
  REASON_PUBLIC,
  REASON_ROLE_GRANTED,
  REASON_ROUTE_DENIED,
  REASON_UNAUTHENTICATED,
} from '../../src/policy/index.js';

const anon = null;
const nobody: PrincipalRoles = { roles: [] };
const admin: PrincipalRoles = { roles: ['admin'] };
const both: PrincipalRoles = { roles: ['user', 'admin'] };

t.test('decision table', async (t) => {
  const cases: [AccessRule, PrincipalRoles | null, ReturnType<typeof decide>][] = [
    [{ access: 'public', roles: [] }, anon, { allow: true, reason: REASON_PUBLIC }],
    [{ access: 'public', roles: [] }, admin, { allow: true, reason: REASON_PUBLIC }],
    [{ access: 'authenticated', roles: [] }, anon, { allow: false, status: 401, reason: REASON_UNAUTHENTICATED }],
    [{ access: 'authenticated', roles: [] }, nobody, { allow: true, reason: REASON_AUTHENTICATED }],
    [{ access: 'authenticated', roles: ['admin'] }, anon, { allow: false, status: 401, reason: REASON_UNAUTHENTICATED }],
    [{ access: 'authenticated', roles: ['admin'] }, nobody, { allow: false, status: 403, reason: REASON_INSUFFICIENT_ROLE }],
    [{ access: 'authenticated', roles: ['admin'] }, admin, { allow: true, reason: REASON_ROLE_GRANTED }],
    [{ access: 'authenticated', roles: ['ops', 'admin'] }, both, { allow: true, reason: REASON_ROLE_GRANTED }],
    // exact, case-sensitive role names: no prefix or case tricks
    [{ access: 'authenticated', roles: ['admin'] }, { roles: ['Admin', 'admin ', 'adm', 'administrator'] }, { allow: false, status: 403, reason: REASON_INSUFFICIENT_ROLE }],
    // deny wins for everyone, with or without roles
    [{ access: 'deny', roles: [] }, anon, { allow: false, status: 403, reason: REASON_ROUTE_DENIED }],
    [{ access: 'deny', roles: [] }, admin, { allow: false, status: 403, reason: REASON_ROUTE_DENIED }],
    [{ access: 'deny', roles: ['admin'] }, admin, { allow: false, status: 403, reason: REASON_ROUTE_DENIED }],
    // a role list is never ignored, even on a route marked public
    [{ access: 'public', roles: ['admin'] }, anon, { allow: false, status: 401, reason: REASON_UNAUTHENTICATED }],
    [{ access: 'public', roles: ['admin'] }, nobody, { allow: false, status: 403, reason: REASON_INSUFFICIENT_ROLE }],
    [{ access: 'public', roles: ['admin'] }, admin, { allow: true, reason: REASON_ROLE_GRANTED }],
  ];
  for (const [route, principal, want] of cases) {
    t.same(decide(route, principal), want, `${JSON.stringify(route)} / ${JSON.stringify(principal)}`);
  }
});

t.test('isAtLeastAsStrict agrees with decide over every principal', async (t) => {
  const roleSets = [[], ['a'], ['b'], ['a', 'b']];
  const rules: (AccessRule | undefined)[] = [undefined];
  for (const access of ['public', 'authenticated', 'deny'] as const) {
    for (const roles of roleSets) rules.push({ access, roles });
  }
  const principals: (PrincipalRoles | null)[] = [null, ...roleSets.map((roles) => ({ roles })), { roles: ['c'] }];
  const allows = (r: AccessRule | undefined, p: PrincipalRoles | null) => r !== undefined && decide(r, p).allow;
  for (const a of rules) {
    for (const b of rules) {
      const expected = principals.every((p) => !allows(a, p) || allows(b, p));
      t.equal(isAtLeastAsStrict(a, b), expected, `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
    }
  }
});
