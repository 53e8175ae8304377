import t from 'tap';
import { clientAddress, compileTrust, withoutPorts } from '../../src/proxy/forwarded.js';

t.test('withoutPorts: a hop written with a port counts as its address; anything else is kept as written', async (t) => {
  t.equal(withoutPorts('198.51.100.7'), '198.51.100.7', 'no port: the same string');
  t.equal(withoutPorts('198.51.100.7:40000'), '198.51.100.7');
  t.equal(withoutPorts('[2001:db8::1]:443'), '2001:db8::1');
  t.equal(withoutPorts('[2001:db8::1]'), '2001:db8::1');
  t.equal(withoutPorts('2001:db8::1'), '2001:db8::1', 'bare IPv6 is not a port form');
  t.equal(withoutPorts('::ffff:192.0.2.1'), '::ffff:192.0.2.1', 'IPv4-mapped IPv6 is not a port form');
  t.equal(withoutPorts('203.0.113.9:1, 10.0.0.2:2,[::1]:3'), '203.0.113.9, 10.0.0.2, ::1');
  t.equal(withoutPorts('999.1.1.1:80, 10.0.0.2:2'), '999.1.1.1:80, 10.0.0.2', 'not an address after the port: kept');
  t.equal(withoutPorts('[evil]:80, 1.2.3.4:5'), '[evil]:80, 1.2.3.4');
  t.equal(withoutPorts('1.2.3.4:99999999, 1.2.3.4:5'), '1.2.3.4:99999999, 1.2.3.4', 'a port of more than five digits is not a port');
  t.equal(withoutPorts('unknown, 1.2.3.4:5'), 'unknown, 1.2.3.4');
});

t.test('clientAddress: ports never change who the client is, nor where the trusted chain stops', async (t) => {
  const trust = compileTrust(['10.0.0.0/8', '127.0.0.1']);
  const peer = '127.0.0.1';
  t.equal(clientAddress({ peer, xForwardedFor: '198.51.100.7:40000' }, trust), '198.51.100.7');
  t.equal(clientAddress({ peer, xForwardedFor: '198.51.100.7:40001' }, trust), '198.51.100.7');
  t.equal(clientAddress({ peer, xForwardedFor: '[2001:db8::5]:50000' }, trust), '2001:db8::5');
  // A trusted internal hop written with a port is still recognised as trusted: the walk goes on.
  t.equal(clientAddress({ peer, xForwardedFor: '198.51.100.7, 10.1.2.3:8080' }, trust), '198.51.100.7');
  // Forged hops on the left stay ignored.
  t.equal(clientAddress({ peer, xForwardedFor: '6.6.6.6:1, 198.51.100.7:2, 10.1.2.3:3' }, trust), '198.51.100.7');
  // From an untrusted peer the header means nothing, with or without ports.
  t.equal(clientAddress({ peer: '192.0.2.50', xForwardedFor: '198.51.100.7:40000' }, trust), '192.0.2.50');
  t.equal(clientAddress({ peer: '::ffff:192.0.2.50', xForwardedFor: '1.1.1.1' }, compileTrust([])), '192.0.2.50');
});
