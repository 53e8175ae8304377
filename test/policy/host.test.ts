import t from 'tap';
import { normalizeHost } from '../../src/policy/index.js';

t.test('accepted hosts', async (t) => {
  const cases: [string, string][] = [
    ['example.com', 'example.com'],
    ['Example.COM', 'example.com'],
    ['example.com:443', 'example.com'],
    ['example.com:', 'example.com'],
    ['example.com.', 'example.com'],
    ['EXAMPLE.com.:8443', 'example.com'],
    ['a-b.c0.example', 'a-b.c0.example'],
    ['localhost', 'localhost'],
    ['127.0.0.1:8080', '127.0.0.1'],
    ['[::1]', '[::1]'],
    ['[::1]:8443', '[::1]'],
    ['[::1]:', '[::1]'],
    ['[2001:DB8::A]:443', '[2001:db8::a]'],
    ['[::ffff:192.0.2.1]', '[::ffff:192.0.2.1]'],
    ['x'.repeat(63) + '.com', 'x'.repeat(63) + '.com'],
  ];
  for (const [raw, want] of cases) t.equal(normalizeHost(raw), want, JSON.stringify(raw));
});

t.test('refused hosts', async (t) => {
  const cases: (string | undefined)[] = [
    undefined,
    '',
    ':443',
    '.',
    'example.com..',
    'a..b',
    '.example.com',
    'user@example.com',
    'user:pw@example.com',
    'exa mple.com',
    ' example.com',
    'example.com ',
    'example.com\t',
    'ex_ample.com',
    '-example.com',
    'example-.com',
    'exa*mple.com',
    '*.example.com',
    'example.com:http',
    'example.com:123456',
    'example.com:65536',
    'example.com:1:2',
    '::1',
    '[::1',
    '[::1]x',
    '[fe80::1%eth0]',
    '[fe80::1%25eth0]',
    '[not-ipv6]',
    '[127.0.0.1]',
    'x'.repeat(64) + '.com',
    ('a'.repeat(60) + '.').repeat(5) + 'com',
    '\u212Aey.example.com', // KELVIN SIGN lower-cases to `k`
    'b\u00fccher.example', // raw non-ASCII (IDNs arrive as punycode)
    'example.com/evil',
    'example.com\\evil',
    'example.com?x',
    'example.com#x',
  ];
  for (const raw of cases) t.equal(normalizeHost(raw), null, JSON.stringify(raw));
});

