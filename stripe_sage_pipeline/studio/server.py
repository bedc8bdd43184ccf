"""`stripe-sage mapping`: serve the mapping studio (uvicorn), on 127.0.0.1 unless a token is given."""

from __future__ import annotations

import argparse
import secrets
import sys

from stripe_sage_pipeline.runtime.db import database_url
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.studio.app import StudioConfig, create_app, is_loopback
from stripe_sage_pipeline.studio.launch import DEFAULT_DAGSTER_URL

DEFAULT_PORT = 3100
TOKEN_ENV = "STRIPE_SAGE_STUDIO_TOKEN"
DAGSTER_URL_ENV = "STRIPE_SAGE_DAGSTER_URL"


class BindRefused(ValueError):
    """Serving off loopback without a token."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token (anyone on the network could rewrite the mapping)."""
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"refusing to serve the mapping studio on {host} without a token: pass --token (or set "
            f"{TOKEN_ENV}), or bind 127.0.0.1"
        )


def config_from_env(token: str | None = None, dagster_url: str | None = None) -> StudioConfig:
    """The studio's configuration from the pipeline's settings (same database, mapping file and Sage target)."""
    s = load_settings()
    return StudioConfig(
        database_url=database_url(s),
        mapping_file=s.mapping_file,
        sage_base_url=s.sagepro_base_url,
        sage_user=s.sagepro_user,
        sage_password=s.sagepro_password,
        sage_target=s.sage_target,
        intacct_base_url=s.intacct_base_url,
        intacct_client_id=s.intacct_client_id,
        intacct_client_secret=s.intacct_client_secret,
        intacct_username=s.intacct_username,
        intacct_refresh_token=s.intacct_refresh_token,
        intacct_locations=s.intacct_locations,
        dagster_url=dagster_url if dagster_url is not None else (s.dagster_url or DEFAULT_DAGSTER_URL),
        token=token,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse `stripe-sage mapping` flags and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="stripe-sage mapping", description="the mapping studio: see, edit, preview and save mapping.yaml"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--token",
        default=load_settings().studio_token,
        help=f"access token, required off loopback (env {TOKEN_ENV}); 'generate' makes one",
    )
    parser.add_argument(
        "--dagster-url",
        default=None,
        help=f"Dagster webserver that runs transform_job after a save (env {DAGSTER_URL_ENV}, "
        f"default {DEFAULT_DAGSTER_URL})",
    )
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(24) if args.token == "generate" else args.token
    try:
        check_bind(args.host, token)
    except BindRefused as err:
        print(f"stripe-sage mapping: {err}", file=sys.stderr)
        return 2
    import uvicorn

    config = config_from_env(token, args.dagster_url)
    link = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"Mapping studio: {link}  (editing {config.mapping_file}; Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning")
    return 0
