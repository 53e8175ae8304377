"""Example upstream for Portcullis: what a Flask app sees behind the gateway.

Run locally:   PORT=5000 python3 app.py          (binds 127.0.0.1 unless HOST is set)
In Docker:     HOST=0.0.0.0 PORT=5000 python app.py

The gateway authenticates the user and passes the identity in X-Auth-User, X-Auth-Email and
X-Auth-Roles. It removes those headers from client requests first, so the app can trust them
ONLY because nothing but the gateway can reach it: never publish this app's port.
"""

import html
import os
import secrets

from flask import Flask, abort, jsonify, redirect, request, session
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)

# One trusted hop (the gateway): ProxyFix takes the LAST value of each X-Forwarded-* header, the
# one the gateway appended, so request.scheme / host / remote_addr describe the real client
# request instead of the gateway's plain-HTTP connection. Raise the counts only if more proxies
# sit in front of the gateway AND the gateway forwards their headers.
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)



def secret_key():
    """FLASK_SECRET_KEY, or the content of FLASK_SECRET_KEY_FILE (a Docker secret)."""
    key = os.environ.get("FLASK_SECRET_KEY")
    path = os.environ.get("FLASK_SECRET_KEY_FILE")
    if not key and path:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    # Random per process: sessions simply end on restart.
    return key or secrets.token_hex(32)


# Sessions are signed with this key; set it so sessions survive a restart.
app.secret_key = secret_key()
app.config.update(
    SESSION_COOKIE_HTTPONLY=True,
    SESSION_COOKIE_SAMESITE="Lax",
    # Behind the gateway the client always uses HTTPS (request.scheme is https via ProxyFix).
    SESSION_COOKIE_SECURE=os.environ.get("SESSION_COOKIE_SECURE", "1") == "1",
)

# Credentials are shown as present, never echoed back.
MASKED_HEADERS = {"authorization", "cookie", "proxy-authorization"}


def identity():
    """The identity the gateway asserted, or None fields for public routes."""
    roles = request.headers.get("X-Auth-Roles", "")
    return {
        "user": request.headers.get("X-Auth-User"),
        "email": request.headers.get("X-Auth-Email"),
        "roles": [r.strip() for r in roles.split(",") if r.strip()],
    }


def page(title, body):
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.get("/")
def index():
    who = identity()
    colour = session.get("colour", "not set")
    return page(
        "Portcullis example app",
        f"<p>Signed in as <b>{html.escape(who['user'] or 'anonymous')}</b>"
        f" ({html.escape(who['email'] or 'no email')}),"
        f" roles: {html.escape(', '.join(who['roles']) or 'none')}.</p>"
        f"<p>Reached as {html.escape(request.scheme)}://{html.escape(request.host)}"
        f" from {html.escape(request.remote_addr or '?')}.</p>"
        f"<p>Favourite colour (session cookie): {html.escape(colour)}</p>"
        '<form method="post" action="/preferences">'
        '<input name="colour" placeholder="colour"> <button>Save</button></form>'
        '<p><a href="/api/whoami">/api/whoami</a> · <a href="/admin">/admin</a></p>',
    )


@app.post("/preferences")
def preferences():
    # A state-changing form POST: the gateway's CSRF check (Origin / Sec-Fetch-Site) guards it.
    session["colour"] = request.form.get("colour", "")[:40]
    return redirect("/", code=303)


@app.get("/api/whoami")
def whoami():
    headers = {
        k: ("[present]" if k.lower() in MASKED_HEADERS else v) for k, v in request.headers.items()
    }
    return jsonify(
        scheme=request.scheme,
        host=request.host,
        remote_addr=request.remote_addr,
        **identity(),
        headers=headers,
    )


@app.get("/admin")
def admin():
    # Defence in depth: the gateway already requires the admin role for /admin.
    if "admin" not in identity()["roles"]:
        abort(403)
    return page("Admin", "<p>Only users with the <code>admin</code> role get here.</p>")


if __name__ == "__main__":
    # Werkzeug's server is fine for this demo; use gunicorn/uwsgi for real traffic.
    app.run(
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        debug=False,
        threaded=True,
    )
