import t from 'tap';
import { parseDuration, parseSize } from '../../src/config/index.js';

t.test('durations', async (t) => {
  t.equal(parseDuration('250ms'), 250);
  t.equal(parseDuration('30s'), 30_000);
  t.equal(parseDuration('5m'), 300_000);
  t.equal(parseDuration('2h'), 7_200_000);
  t.equal(parseDuration('1d'), 86_400_000);
  t.equal(parseDuration('1y'), 365 * 86_400_000);
  t.equal(parseDuration('0s'), 0);
  for (const bad of ['', '1', '1.5s', '-1s', '1 s', '1S', '1h30m', 's', '1w']) t.throws(() => parseDuration(bad), TypeError, bad);
  t.throws(() => parseDuration('99999999999999999y'), RangeError);
});

t.test('sizes are 1024-based', async (t) => {
  t.equal(parseSize('0b'), 0);
  t.equal(parseSize('512b'), 512);
  t.equal(parseSize('16kb'), 16_384);
  t.equal(parseSize('1mb'), 1_048_576);
  t.equal(parseSize('2gb'), 2 * 1024 ** 3);
  for (const bad of ['1', '1k', '1KB', '1.5mb', '1tb', 'mb']) t.throws(() => parseSize(bad), TypeError, bad);
  t.throws(() => parseSize('99999999999999999gb'), RangeError);
});
