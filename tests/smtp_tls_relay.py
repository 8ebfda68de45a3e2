#!/usr/bin/env python3
"""A real SMTP relay for tests/it/smtp_tls.rs, built on aiosmtpd.

--mode starttls   STARTTLS required before anything else, AUTH required (PLAIN, LOGIN)
--mode implicit   TLS from the first byte (as on port 465), AUTH required
--mode plain      no TLS offered at all, AUTH allowed in clear (a misconfigured relay)

Each accepted message is written to --maildir as <n>.eml, with an X-Rcpt-To header in
front. Prints "ready <port>" once it listens.
"""
import argparse
import asyncio
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Store:
    def __init__(self, maildir):
        self.maildir = maildir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.maildir, f"{self.count:05d}.eml")
        with open(path + ".tmp", "wb") as out:
            out.write(b"X-Rcpt-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            out.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 queued"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["starttls", "implicit", "plain"], required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user", default="lk")
    parser.add_argument("--password", default="relay-secret")
    parser.add_argument("--maildir", required=True)
    args = parser.parse_args()

    context = None
    if args.mode != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    store = Store(args.maildir)
    auth = authenticator(args.user, args.password)

    def factory():
        common = dict(
            hostname="latchkey-test-relay",
            authenticator=auth,
            auth_required=True,
        )
        if args.mode == "starttls":
            return SMTP(store, tls_context=context, require_starttls=True,
                        auth_require_tls=True, **common)
        # implicit TLS: the whole session is encrypted already; plain: nothing to require.
        return SMTP(store, auth_require_tls=False, **common)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, host="127.0.0.1", port=0,
        ssl=context if args.mode == "implicit" else None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
