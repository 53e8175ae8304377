/**
 * `portcullis audit`: checks a live deployment (Portcullis or any HTTPS site) against the
 * practices this gateway exists for, from the outside. probe.ts looks, checks.ts judges.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { judge, type Finding } from './checks.js';
import { observe } from './probe.js';

export { formatFindings, type Finding } from './checks.js';

export interface AuditRequest {
  /** https://host[:port]/path: the page whose answer is judged; its host is the certificate's name. */
  readonly url: string;
  readonly connect?: string | undefined;
  /** A PEM file of roots to trust besides Node's bundled ones (a private CA, the local development CA). */
  readonly caFile?: string | undefined;
  /** The plain-HTTP URL to check for a redirect; default http://host/ (port 80); null: skipped. */
  readonly httpUrl?: string | null | undefined;
  readonly protectedPaths?: readonly string[] | undefined;
  readonly timeoutMs?: number | undefined;
}

/** A request the audit cannot run as given: the CLI's usage error, said in one line. */
export class AuditUsageError extends Error {
  override readonly name = 'AuditUsageError';
}

function parseUrl(text: string, protocol: 'https:' | 'http:', what: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new AuditUsageError(`${what} is not a URL: ${JSON.stringify(text)}`);
  }
  if (url.protocol !== protocol) throw new AuditUsageError(`${what} must be an ${protocol.slice(0, -1)}:// URL, got ${JSON.stringify(text)}`);
  if (url.username || url.password) throw new AuditUsageError(`${what} must not carry credentials`);
  return url;
}

export async function audit(req: AuditRequest): Promise<Finding[]> {
  const url = parseUrl(req.url, 'https:', '--url');
  const httpUrl = req.httpUrl === null ? null : parseUrl(req.httpUrl ?? `http://${url.hostname}${url.pathname}`, 'http:', '--http-url');
  if (req.connect !== undefined && isIP(req.connect) === 0) throw new AuditUsageError(`--connect takes an IP address, got ${JSON.stringify(req.connect)}`);
  for (const p of req.protectedPaths ?? []) if (!p.startsWith('/')) throw new AuditUsageError(`--protected takes a path starting with /, got ${JSON.stringify(p)}`);
  let ca: string | undefined;
  if (req.caFile !== undefined) {
    try {
      ca = readFileSync(req.caFile, 'utf8');
    } catch (err) {
      throw new AuditUsageError(`--ca ${req.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const blocks = ca.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
    if (blocks.length === 0) throw new AuditUsageError(`--ca ${req.caFile}: no PEM certificate in it`);
    // OpenSSL skips a block it cannot read: the audit would then say "not trusted" of a good site.
    blocks.forEach((block, i) => {
      try {
        new X509Certificate(block);
      } catch (err) {
        throw new AuditUsageError(`--ca ${req.caFile}: certificate ${i + 1} of ${blocks.length} cannot be read: ${(err as Error).message}`);
      }
    });
  }
  const observed = await observe({ url, connect: req.connect, ca, httpUrl, protectedPaths: req.protectedPaths ?? [], timeoutMs: req.timeoutMs ?? 10_000 });
  return judge(observed);
}
