"""The ``enrich`` command: serve, migrate, send, phone, config."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from functools import partial

import trio

from enrich.config import ConfigError, Settings, describe_variables

log = logging.getLogger("enrich")

WEBHOOK_PATH = "/api/sms/webhook"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"enrich: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    from enrich.logs import configure_logging

    json_lines = {"auto": None, "json": True, "text": False}[settings.log_format]
    configure_logging(settings.log_level.upper(), json_lines=json_lines)


def _banner(settings: Settings, host: str, port: int, role: str) -> str:
    public = settings.effective_public_url
    shown_host = "localhost" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    lines = [
        "",
        f"  enrich is listening on http://{shown_host}:{port} (bound to {host}, role {role})",
        f"  Twilio webhook URL (Messaging > A message comes in, HTTP POST): {public}{WEBHOOK_PATH}",
        f"  Health: http://{shown_host}:{port}/health/ready",
    ]
    if settings.local_mode:
        lines += [
            f"  Local mode: embedded PostgreSQL and Redis in {settings.data_dir.resolve()}",
            "  Try it:  enrich phone link --phone +15551230001 --verified",
            '           enrich send --from +15551230001 --body "Met Sarah Johnson in Portland"',
        ]
    return "\n".join(lines) + "\n"


def cmd_serve(args: argparse.Namespace) -> int:
    from enrich.app import create_app
    from enrich.local import apply_local_defaults, ensure_local_token, start_embedded
    from enrich.logs import register_secret
    from enrich.sdnotify import SystemdNotifier
    from enrich.server import serve_app, wait_for_signal
    from enrich.tuning import AffinityError, format_cpu_list, pin_process

    settings = apply_local_defaults(_settings())
    _configure_logging(settings)
    # Read NOTIFY_SOCKET now and remove it from the environment, so the embedded
    # servers we spawn never talk to systemd on our behalf.
    notifier = SystemdNotifier(unset_environment=True)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    # --host/--port are the HOST/PORT settings for this run: the default PUBLIC_URL
    # (signatures) and INSTANCE_ID derive from them, so they must see the same port.
    settings = dataclasses.replace(settings, host=host, port=port)
    if settings.twilio_auth_token is None and not settings.local_mode:
        print(
            "enrich: TWILIO_AUTH_TOKEN is not set. Without it no webhook signature can be "
            "checked, so the server will not start. Set it to your Twilio auth token "
            "(local mode, with DATABASE_URL and REDIS_URL unset, generates one).",
            file=sys.stderr,
        )
        return 2
    settings, embedded = start_embedded(settings)
    try:
        if settings.local_mode:
            settings = ensure_local_token(settings)
        for secret in (settings.twilio_auth_token, settings.admin_token, settings.jwt_secret):
            if secret:
                register_secret(secret)
        if settings.cpu_affinity:
            # After the embedded servers started (they keep every CPU), before trio's
            # threads start (they inherit it).
            pinned = pin_process(settings.cpu_affinity)
            if pinned != settings.cpu_affinity:
                # A typo or a smaller cpuset than expected: run, but say so.
                log.warning("pinned to fewer CPUs than CPU_AFFINITY names",
                            extra={"cpus": format_cpu_list(pinned),
                                   "asked": format_cpu_list(settings.cpu_affinity)})
            else:
                log.info("pinned", extra={"cpus": format_cpu_list(pinned)})
        app = create_app(settings, role=args.role, notifier=notifier)

        async def shutdown_trigger() -> None:
            await wait_for_signal()
            await notifier.stopping()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    partial(serve_app, app, settings, host=host, port=port,
                            shutdown_trigger=shutdown_trigger)
                )
                print(_banner(settings, host, port, args.role), file=sys.stderr)
                await notifier.ready(status=f"serving on {', '.join(binds)}")

        trio.run(main)
    except AffinityError as exc:
        print(f"enrich: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        embedded.stop()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from enrich.db.migrate import migrate
    from enrich.db.pool import ConnectionPool
    from enrich.local import start_embedded

    settings = _settings()
    _configure_logging(settings)
    settings, embedded = start_embedded(settings)

    async def run() -> list[int]:
        assert settings.database_url is not None
        pool = ConnectionPool(settings.database_url, min_size=0, max_size=1)
        try:
            async with pool.connection(timeout=30) as conn:
                return await migrate(conn)
        finally:
            await pool.close()

    try:
        applied = trio.run(run)
    finally:
        embedded.stop()
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    for name, default, doc in describe_variables():
        print(f"# {doc}\n{name}={default}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the webhook server and/or the workers")
    serve.add_argument("--host", help="address to bind (default HOST)")
    serve.add_argument("--port", type=int, help="port to bind (default PORT, 3000)")
    serve.add_argument(
        "--role",
        choices=("all", "web", "worker"),
        default="all",
        help="web: answer webhooks only; worker: process jobs only; all: both (default)",
    )
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.set_defaults(func=cmd_migrate)

    cfg = sub.add_parser("config", help="print every environment variable with its default")
    cfg.set_defaults(func=cmd_config)

    from enrich.cli_tools import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
