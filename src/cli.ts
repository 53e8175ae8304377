#!/usr/bin/env node
/**
 * portcullis start | validate | explain | audit — the command line.
 *
 * `start` owns the process lifecycle: SIGHUP (and --watch) reloads the configuration atomically
 * (an invalid file is refused and the old configuration keeps serving), SIGTERM/SIGINT drain
 * in-flight requests for `shutdown_grace` and exit 0; a second signal exits at once.
 */
import { parseArgs } from 'node:util';
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { loadConfigFile, ConfigError, formatProblems } from './config/index.js';
import { createLogger } from './observability/logging.js';
import { buildGateway, type Gateway } from './gateway.js';
import { keepLocalCertificateRenewed, prepareCertificates, stageCertificates } from './server/certificates.js';
import { explain, formatExplanation } from './pipeline/explain.js';
import { audit, AuditUsageError, formatFindings } from './audit/index.js';
import { parseDuration } from './config/units.js';
import { runPrimary, WORKER_ENV } from './cluster/primary.js';
import { runWorker } from './cluster/worker.js';
import { holdEarlySighup, onReloadTriggers } from './server/lifecycle.js';
import { createTaskQueue } from './server/queue.js';
import cluster from 'node:cluster';

const here = dirname(fileURLToPath(import.meta.url));

export function version(): string {
  const pkg = JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

const HELP = `portcullis — a TLS-terminating security gateway

Usage:
  portcullis start    --config FILE [--watch]   run the gateway
  portcullis validate --config FILE             check a configuration file (exit 0 = good, 1 = problems)
  portcullis explain  --config FILE --method M --url URL [--token JWT | --roles a,b]
                                                show which route a request matches and the decision
  portcullis audit    --url https://host[:port]/ [--connect IP] [--ca FILE]
                      [--http-url URL | --no-http] [--protected PATH]... [--timeout 10s] [--json]
                                                check a live deployment from outside (exit 0 = no failed check)
  portcullis --version | --help

Options:
  -c, --config FILE   the YAML configuration (default: ./gateway.yml)
  -w, --watch         reload when the configuration file changes (SIGHUP always reloads)

Environment: \${NAME} in the configuration is read from NAME, or from the file named by NAME_FILE.
`;

/** The options each command takes (besides --help and --version). */
const COMMAND_OPTIONS: Readonly<Record<string, readonly string[]>> = {
  start: ['config', 'watch'],
  validate: ['config'],
  explain: ['config', 'method', 'url', 'token', 'roles'],
  audit: ['url', 'connect', 'ca', 'http-url', 'no-http', 'protected', 'timeout', 'json'],
};

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const stdio: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

export async function main(argv: string[], io: Io = stdio): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        watch: { type: 'boolean', short: 'w' },
        version: { type: 'boolean', short: 'v' },
        help: { type: 'boolean', short: 'h' },
        method: { type: 'string' },
        url: { type: 'string' },
        token: { type: 'string' },
        roles: { type: 'string' },
        connect: { type: 'string' },
        ca: { type: 'string' },
        'http-url': { type: 'string' },
        'no-http': { type: 'boolean' },
        protected: { type: 'string', multiple: true },
        timeout: { type: 'string' },
        json: { type: 'boolean' },
      },
    });
  } catch (err) {
    io.err(`portcullis: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    io.out(`${version()}\n`);
    return 0;
  }
  const command = positionals[0];
  if (positionals.length > 1) {
    // `portcullis validate prod.yml` must not validate ./gateway.yml and call it valid.
    io.err(`portcullis: unexpected argument ${JSON.stringify(positionals[1])} (give the configuration file with --config FILE)\n\n${HELP}`);
    return 2;
  }
  if (values.help || command === undefined || command === 'help') {
    io.out(HELP);
    return command === undefined && !values.help ? 2 : 0;
  }
  // One option table for all commands, so each command says which of them it takes: `validate
  // --json` must not be accepted and silently mean nothing.
  const allowed = COMMAND_OPTIONS[command];
  if (allowed !== undefined) {
    const stray = Object.keys(values).find((k) => k !== 'help' && k !== 'version' && !allowed.includes(k));
    if (stray !== undefined) {
      io.err(`portcullis ${command}: --${stray} is not an option of this command\n\n${HELP}`);
      return 2;
    }
  }
  const configPath = values.config ?? 'gateway.yml';
  switch (command) {
    case 'validate':
      return validate(configPath, io);
    case 'start':
      return start(configPath, values.watch ?? false, io);
    case 'explain': {
      if (!values.url) {
        io.err('portcullis explain: --url is required\n');
        return 2;
      }
      try {
        const { config } = await loadConfigFile(configPath);
        const result = await explain(config, {
          method: (values.method ?? 'GET').toUpperCase(),
          url: values.url,
          token: values.token,
          roles: values.roles === undefined ? undefined : values.roles.split(',').map((r) => r.trim()).filter(Boolean),
        });
        io.out(formatExplanation(result));
        return result.decision.allow ? 0 : 1;
      } catch (err) {
        return reportConfigError(err, io);
      }
    }
    case 'audit':
      return runAudit(values, io);
    default:
      io.err(`portcullis: unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

async function runAudit(
  values: { url?: string; connect?: string; ca?: string; 'http-url'?: string; 'no-http'?: boolean; protected?: string[]; timeout?: string; json?: boolean },
  io: Io,
): Promise<number> {
  if (!values.url) {
    io.err('portcullis audit: --url is required\n');
    return 2;
  }
  if (values['no-http'] && values['http-url'] !== undefined) {
    io.err('portcullis audit: --http-url and --no-http exclude each other\n');
    return 2;
  }
  let timeoutMs: number;
  try {
    timeoutMs = parseDuration(values.timeout ?? '10s');
    if (timeoutMs <= 0) throw new RangeError('must be more than 0');
  } catch (err) {
    io.err(`portcullis audit: --timeout ${values.timeout ?? ''}: ${(err as Error).message}\n`);
    return 2;
  }
  try {
    const findings = await audit({
      url: values.url,
      connect: values.connect,
      caFile: values.ca,
      httpUrl: values['no-http'] ? null : values['http-url'],
      protectedPaths: values.protected ?? [],
      timeoutMs,
    });
    io.out(values.json ? `${JSON.stringify({ findings }, null, 2)}\n` : formatFindings(findings));
    return findings.some((f) => f.verdict === 'fail') ? 1 : 0;
  } catch (err) {
    if (err instanceof AuditUsageError) {
      io.err(`portcullis audit: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

function reportConfigError(err: unknown, io: Io): number {
  if (err instanceof ConfigError) {
    io.err(`${formatProblems(err.problems)}\n`);
    return 1;
  }
  io.err(`portcullis: ${(err as Error).message}\n`);
  return 1;
}

async function validate(configPath: string, io: Io): Promise<number> {
  try {
    const { warnings } = await loadConfigFile(configPath);
    for (const w of warnings) io.err(`${configPath}: warning: ${w}\n`);
    io.out(`${configPath}: configuration is valid\n`);
    return 0;
  } catch (err) {
    return reportConfigError(err, io);
  }
}

async function start(configPath: string, watchFile: boolean, io: Io): Promise<number> {
  if (process.env[WORKER_ENV] === '1' && cluster.isWorker) return runWorker(configPath, version());
  // Before anything that takes time: a SIGHUP while starting must not end the process.
  const early = holdEarlySighup();
  let loaded;
  try {
    loaded = await loadConfigFile(configPath);
  } catch (err) {
    early.release();
    return reportConfigError(err, io);
  }
  if (loaded.config.workers > 1) {
    try {
      return await runPrimary(configPath, watchFile, loaded, version(), early);
    } catch (err) {
      // As below: what fails while starting (a log file, a certificate) is one line, not a stack.
      io.err(`portcullis: cannot start: ${(err as Error).message}\n`);
      return 1;
    }
  }
  const { config, warnings } = loaded;
  let logger: ReturnType<typeof createLogger>;
  try {
    logger = createLogger(config.log);
  } catch (err) {
    // A log file that cannot be written: said here, the one place that still reaches someone.
    io.err(`portcullis: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  for (const w of warnings) logger.warn({ config: configPath }, w);
  // What fails here (a port in use, a log file that cannot be opened, a certificate that cannot
  // be made) is the operator's to fix: one line saying what, not a stack trace.
  let gateway: Gateway | undefined;
  let addrs: Awaited<ReturnType<Gateway['listen']>>;
  try {
    const certificates = await prepareCertificates(config, logger);
    gateway = await buildGateway({ config, logger, certificates, version: version() });
    addrs = await gateway.listen();
  } catch (err) {
    await gateway?.close().catch(() => undefined);
    logger.flush?.();
    io.err(`portcullis: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  logger.info(
    { version: version(), node: process.version, https: addrs.https, http: addrs.http, admin: addrs.admin },
    'portcullis started',
  );

  // Reloads and renewals one at a time: a renewal never interleaves with a reload.
  const changes = createTaskQueue(logger);
  const reload = (why: string): void => {
    changes.push('configuration reload', async () => {
      try {
        const next = await loadConfigFile(configPath);
        for (const w of next.warnings) logger.warn({ config: configPath }, w);
        // Installed only once the whole configuration is accepted (a log file that cannot be
        // written refuses it after the certificates were read).
        const installCertificates = await stageCertificates(next.config, logger, gateway.certificates);
        await gateway.reload(next.config, { beforeApply: installCertificates });
        gateway.metrics.configReload('success');
        gateway.events.emit('config_reloaded', { file: configPath, reason: why });
        logger.info({ trigger: why }, 'configuration reloaded');
      } catch (err) {
        const problems = err instanceof ConfigError ? formatProblems(err.problems).split('\n') : [(err as Error).message];
        gateway.metrics.configReload('failure');
        gateway.events.emit('config_rejected', { file: configPath, reason: why, problems });
        logger.error({ trigger: why, problems }, 'configuration rejected; the previous configuration keeps serving');
        // A SIGHUP is also how log rotation asks for new files (logrotate's `create`).
        try {
          gateway.reopenLogs();
        } catch (reopenErr) {
          logger.error({ problems: [(reopenErr as Error).message] }, 'log files cannot be reopened; the open ones stay in use');
        }
      }
    });
  };
  onReloadTriggers(configPath, watchFile, reload, early);
  const stopRenewal = keepLocalCertificateRenewed(gateway.certificates, logger, () =>
    changes.run(async () => (await stageCertificates(gateway.current().config, logger, gateway.certificates))()),
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        resolve(1);
        return;
      }
      stopping = true;
      stopRenewal();
      logger.info({ signal, grace_ms: gateway.current().config.shutdownGrace }, 'shutting down');
      gateway.close().then(
        () => {
          logger.info('shut down cleanly');
          logger.flush?.();
          resolve(0);
        },
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      // Let pino's async destination flush before leaving.
      setTimeout(() => process.exit(code), 50).unref();
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`portcullis: ${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
