import t from 'tap';
import { canonicalizePath, PathRejections, type PathRejection } from '../../src/policy/index.js';

const accepted: [raw: string, canonical: string][] = [
  ['/', '/'],
  ['/a/b', '/a/b'],
  ['/a/b/', '/a/b/'],
  // dot-segments, RFC 3986 §5.2.4
  ['/a/./b/../c', '/a/c'],
  ['/a/b/..', '/a/'],
  ['/a/.', '/a/'],
  ['/..', '/'],
  ['/.', '/'],
  ['/../../etc/passwd', '/etc/passwd'],
  ['/a/..', '/'],
  ['/a/%2E%2E/', '/'],
  ['/%2e%2e', '/'],
  ['/a/%2e%2E/b', '/b'],
  ['/a/.%2e/b', '/b'],
  ['/a/%2e/b', '/a/b'],
  ['/admin./x', '/admin./x'], // a trailing dot is kept (the route table reads it as `admin`, as IIS does)
  ['/.well-known/security.txt', '/.well-known/security.txt'],
  ['/a/b;v=1', '/a/b;v=1'],
  ['/a/.b/..c', '/a/.b/..c'],
  // repeated slashes collapse, trailing slash kept
  ['//x//y/', '/x/y/'],
  ['//', '/'],
  ['///a', '/a'],
  ['/a//..//b', '/b'],
  // unreserved escapes are decoded, others upper-cased
  ['/%61dmin', '/admin'],
  ['/%41%7e%2D%5f%2e%30', '/A~-_.0'],
  ['/a%3bb', '/a%3Bb'],
  ['/a%3Fb', '/a%3Fb'],
  ['/%e9', '/%E9'],
  ['/%25', '/%25'],
  ['/100%25', '/100%25'],
  ['/%25zz', '/%25zz'],
  // raw characters outside pchar are encoded byte-wise
  ['/a b', '/a%20b'],
  ['/"<>`{}|^', '/%22%3C%3E%60%7B%7D%7C%5E'],
  ['/a#b', '/a%23b'],
  ['/[x]', '/%5Bx%5D'],
  ['/\u00e9', '/%E9'], // latin1 byte as Node gives it
  ['/\u00ff\u0080', '/%FF%80'],
  ['/日本', '/%E6%97%A5%E6%9C%AC'], // a decoded JS string: UTF-8
  ['/😀', '/%F0%9F%98%80'],
  // kept as is
  ["/a;b=c/d!$&'()*+,=:@~", "/a;b=c/d!$&'()*+,=:@~"],
  ['/admin;jsessionid=1/x', '/admin;jsessionid=1/x'],
];

t.test('accepted paths', async (t) => {
  for (const [raw, canonical] of accepted) {
    const r = canonicalizePath(raw);
    t.same(r, { ok: true, path: canonical }, JSON.stringify(raw));
    // idempotent and stable under WHATWG URL parsing
    t.same(canonicalizePath(canonical), { ok: true, path: canonical }, `idempotent ${JSON.stringify(raw)}`);
    t.equal(new URL(canonical, 'http://x').pathname, canonical, `WHATWG ${JSON.stringify(raw)}`);
  }
});

const rejected: [raw: string, reason: PathRejection][] = [
  ['', 'not_origin_form'],
  ['a/b', 'not_origin_form'],
  ['*', 'not_origin_form'],
  ['http://evil/x', 'not_origin_form'],
  ['%2F', 'not_origin_form'],
  ['/a%2fb', 'encoded_slash'],
  ['/a%2Fb', 'encoded_slash'],
  ['/admin%2f..%2fx', 'encoded_slash'],
  ['/a%5cb', 'backslash'],
  ['/a%5Cb', 'backslash'],
  ['/a\\b', 'backslash'],
  ['/\\\\evil', 'backslash'],
  ['/%00', 'control_char'],
  ['/a\u0000b', 'control_char'],
  ['/a%01', 'control_char'],
  ['/a%1F', 'control_char'],
  ['/a%7f', 'control_char'],
  ['/a\u007f', 'control_char'],
  ['/a\tb', 'control_char'],
  ['/a\r\nb', 'control_char'],
  ['/a%0d%0aSet-Cookie:x', 'control_char'],
  ['/%zz', 'bad_encoding'],
  ['/%', 'bad_encoding'],
  ['/a%', 'bad_encoding'],
  ['/%4', 'bad_encoding'],
  ['/%G1', 'bad_encoding'],
  ['/%1G', 'bad_encoding'],
  ['/%%41', 'bad_encoding'],
  ['/\ud800x', 'bad_encoding'],
  ['/%2561', 'double_encoding'],
  ['/%2561dmin', 'double_encoding'],
  ['/%25%36%31dmin', 'double_encoding'],
  ['/a/%25%64F', 'double_encoding'],
  // read as a dot-segment, or as two segments, by some upstream
  ['/public/..;/admin', 'ambiguous_segment'], // Tomcat, Jetty: `;` parameters dropped, then `..`
  ['/public/..;x=1/admin', 'ambiguous_segment'],
  ['/public/.;/admin', 'ambiguous_segment'],
  ['/public/..%3B/admin', 'ambiguous_segment'],
  ['/public/%2e%2e;/admin', 'ambiguous_segment'],
  ['/public/%EF%BC%8E%EF%BC%8E/admin', 'ambiguous_segment'], // FULLWIDTH FULL STOPs: `..` after NFKC
  ['/public/\uff0e\uff0e/admin', 'ambiguous_segment'],
  ['/public/%E2%80%A5/admin', 'ambiguous_segment'], // TWO DOT LEADER
  ['/public/x%EF%BC%8Fy', 'ambiguous_segment'], // FULLWIDTH SOLIDUS
  ['/admin/..%2E/x', 'ambiguous_segment'], // `...`: nothing, to Windows and IIS
  ['/.../x', 'ambiguous_segment'],
  ['/a/.%20/b', 'ambiguous_segment'],
];

t.test('rejected paths', async (t) => {
  for (const [raw, reason] of rejected) {
    t.same(canonicalizePath(raw), { ok: false, reason }, JSON.stringify(raw));
  }
  t.same(new Set(Object.values(PathRejections)), new Set(rejected.map(([, r]) => r)), 'every reason is exercised');
});

t.test('an already canonical path comes back as the same string', async (t) => {
  const p = '/api/v1/users/42;x=1/~me';
  const r = canonicalizePath(p);
  t.ok(r.ok);
  if (r.ok) t.equal(r.path, p);
});
