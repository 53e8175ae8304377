import { join } from 'node:path';

/**
 * The gateway the log-rotation tests run: the development CA in `dir/certs`, `log` as the `log:`
 * block, a public route and an authenticated one (whose failures are security events) behind an
 * issuer that is never reachable.
 */
export function rotationConfig(dir: string, upstream: string, log: string, options: { workers?: number; grace?: string; extra?: string } = {}): string {
  return `listen: { https: 127.0.0.1:0, http: null, admin: null }
workers: ${options.workers ?? 1}
shutdown_grace: ${options.grace ?? '2s'}
tls: { storage: ${join(dir, 'certs')} }
log: ${log}
${options.extra ?? ''}sites:
  - hosts: [app.test]
    upstream: ${upstream}
    routes:
      - { path: /private, access: authenticated }
      - { path: /, access: public }
auth:
  issuers:
    - issuer: https://idp.invalid
      audiences: [app]
      algorithms: [ES256]
      jwks_uri: https://idp.invalid/jwks
`;
}
