// canonicalizePath: runs on every request before route matching.
import { dist, newBench, runSuite } from './common.mjs';

const { canonicalizePath } = await dist('policy/index.js');

export const bench = newBench('canonicalizePath');
bench
  .add('plain /api/v1/orders/42', () => canonicalizePath('/api/v1/orders/42'))
  // The gateway cuts the query off first (pipeline/resolve.ts); a `?` never reaches the function.
  .add('with query, cut off first', () => {
    const url = '/api/v1/orders?limit=10&offset=20';
    return canonicalizePath(url.slice(0, url.indexOf('?')));
  })
  .add('dot segments + escapes', () => canonicalizePath('/static/./css/../img/%7Euser/a%20b.png'))
  .add('rejected: encoded slash', () => canonicalizePath('/files/..%2Fetc%2Fpasswd'));

// Sanity: the benchmark must measure the real function, not a failure path by accident.
if (!canonicalizePath('/api/v1/orders/42').ok) throw new Error('canonicalizePath refused a plain path');

if (import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) await runSuite(bench, import.meta.url);
