/**
 * The demo's upstream app: answers every request with what it received (method, path, query,
 * headers, body size), so a newcomer sees exactly what the app behind the gateway gets.
 */
import http from 'node:http';

export function createEchoServer(): http.Server {
  return http.createServer((req, res) => {
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
    });
    req.on('end', () => {
      const body = JSON.stringify(
        {
          app: 'portcullis demo upstream',
          method: req.method,
          url: req.url,
          http_version: req.httpVersion,
          remote_address: req.socket.remoteAddress,
          headers: req.headers,
          body_bytes: size,
        },
        null,
        2,
      );
      res.writeHead(200, {
        'content-type': 'application/json',
        // The gateway strips these: the demo shows it.
        server: 'demo-upstream/1.0',
        'x-powered-by': 'node',
        'set-cookie': ['demo_session=abc123; Path=/', 'csrftoken=xyz; Path=/'],
      });
      res.end(body + '\n');
    });
  });
}

export function listen(server: http.Server, port: number, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve((server.address() as { port: number }).port));
  });
}
