import type { GatewayConfig } from '../config/types.js';
import { createAuthenticator, type Authenticator } from '../auth/index.js';
import type { Logger } from '../observability/logging.js';

/** No issuers configured: no authenticator; protected routes then answer 401 to everyone. */
export function createAuthenticatorFor(
  config: GatewayConfig,
  logger: Logger,
  onJwksRefresh?: (issuer: string, result: 'ok' | 'error') => void,
): Authenticator | null {
  if (config.auth.issuers.length === 0) return null;
  return createAuthenticator(config.auth, { logger: logger.child({ component: 'auth' }), onJwksRefresh });
}
