"""`python -m oauth_service …`: operator commands of the OAuth service.

    python -m oauth_service generate-key          a new TOKEN_ENCRYPTION_KEY entry
    python -m oauth_service reencrypt             re-encrypt every stored token under the newest key
    python -m oauth_service upgrade|current       app-schema migrations
    python -m oauth_service serve --port 8080     run the HTTP service
    python -m oauth_service create-app-login NAME  a dedicated LOGIN role (member of xero_elt_app, owns
                                                  nothing); prints the APP_DATABASE_URL to use
    python -m oauth_service create-analyst-login NAME
                                                  a read-only LOGIN role (member of xero_elt_analyst:
                                                  SELECT on schema analytics only, owns nothing); prints
                                                  the ANALYST_DATABASE_URL to give the analyst

Key rotation: put a new key first in TOKEN_ENCRYPTION_KEY (keep the old ones after it), deploy,
run `reencrypt`, then drop the old keys.
"""

import argparse
import logging
import os
import sys

from oauth_service.crypto import DecryptionError
from oauth_service.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m oauth_service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("generate-key", help="print a new TOKEN_ENCRYPTION_KEY entry")
    sub.add_parser("reencrypt", help="re-encrypt stored tokens under the newest TOKEN_ENCRYPTION_KEY")
    sub.add_parser("upgrade", help="apply the app-schema migrations (DATABASE_URL)")
    sub.add_parser("current", help="print the applied app-schema revision")
    login = sub.add_parser(
        "create-app-login",
        help="create a LOGIN role (random password, member of xero_elt_app) and print its APP_DATABASE_URL",
    )
    login.add_argument("name", help="the new role's name, e.g. xero_elt_service")
    analyst = sub.add_parser(
        "create-analyst-login",
        help="create a read-only LOGIN role (random password, member of xero_elt_analyst) and print its "
        "ANALYST_DATABASE_URL",
    )
    analyst.add_argument("name", help="the new role's name, e.g. xero_elt_analyst_jane")
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="default: all interfaces (a container), loopback in DEMO_MODE")
    serve.add_argument("--port", type=int, default=8080)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        from oauth_service.secret_source import apply_secrets

        apply_secrets()  # settings held in AWS Secrets Manager, when <NAME>_SECRET_ID names them
        if args.command == "generate-key":
            from oauth_service.settings import generate_key

            print(generate_key())
        elif args.command in ("upgrade", "current"):
            from oauth_service import migrations

            url = os.environ.get("DATABASE_URL")
            if not url:
                raise SettingsError("DATABASE_URL is required")
            if args.command == "upgrade":
                migrations.upgrade(url)
            print(migrations.current(url))
        elif args.command == "reencrypt":
            from oauth_service.db import make_engine
            from oauth_service.settings import check_keys
            from oauth_service.vault import reencrypt_all

            url = os.environ.get("DATABASE_URL")
            keys = check_keys(os.environ.get("TOKEN_ENCRYPTION_KEY"))
            if not url:
                raise SettingsError("DATABASE_URL is required")
            engine = make_engine(url, pool_size=1)
            try:
                n = reencrypt_all(engine, keys)
            finally:
                engine.dispose()
            print(f"re-encrypted {n} value(s) under the newest key")
        elif args.command == "create-app-login":
            from oauth_service.db import create_app_login

            url = os.environ.get("DATABASE_URL")
            if not url:
                raise SettingsError("DATABASE_URL is required (the app schema's owner, as for migrations)")
            app_url = create_app_login(url, args.name)
            print(f"APP_DATABASE_URL={app_url}")
            print(
                "Keep it in the service's and the pipeline's secret store; it is not shown again.",
                file=sys.stderr,
            )
        elif args.command == "create-analyst-login":
            from oauth_service.db import create_analyst_login

            url = os.environ.get("DATABASE_URL")
            if not url:
                raise SettingsError("DATABASE_URL is required (the app schema's owner, as for migrations)")
            analyst_url = create_analyst_login(url, args.name)
            print(f"ANALYST_DATABASE_URL={analyst_url}")
            print(
                "Give it to the analyst through a secret store or password manager; it is not shown again.",
                file=sys.stderr,
            )
        elif args.command == "serve":
            from oauth_service.server import serve as run

            run(None, host=args.host, port=args.port)
    except (SettingsError, DecryptionError) as exc:  # e.g. reencrypt without an old key still in use
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
