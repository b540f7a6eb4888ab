"""Command line: ``enrichproxy serve|check|loadgen|demo`` (also ``python -m enrichproxy``).

Flags that name files or addresses also read an environment variable (shown in ``--help``), so
a container can be configured without a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from enrichproxy import __version__
from enrichproxy.config import Config, load_config
from enrichproxy.errors import ConfigError

log = logging.getLogger("enrichproxy")

EXIT_OK = 0
EXIT_CONFIG = 1


def configure_logging(level: str) -> None:
    """One line per event, logfmt-style, on stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("ENRICHPROXY_CONFIG", "conf/enrichproxy.yaml"),
        help="YAML configuration file (env ENRICHPROXY_CONFIG; default %(default)s)",
    )


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"enrichproxy: invalid configuration {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    views = ", ".join(v.name for v in config.views)
    print(
        f"{args.config}: OK ({len(config.views)} views: {views}; "
        f"{len(config.remote_write)} destinations)"
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.listen:
        config = _with_listen(config, args.listen)
    configure_logging(args.log_level or config.log_level)
    from aiohttp import web

    from enrichproxy.app import create_app

    host, port = config.listen_host_port
    log.info("enrichproxy %s listening on %s:%d", __version__, host, port)
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=config.shutdown_timeout_ms / 1000,
    )
    return EXIT_OK


def _with_listen(config: Config, listen: str) -> Config:
    from dataclasses import replace

    return replace(config, listen=listen)


def cmd_loadgen(args: argparse.Namespace) -> int:
    from enrichproxy import loadgen

    configure_logging("warning")
    return asyncio.run(loadgen.run(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from enrichproxy import demo

    configure_logging("info")
    return asyncio.run(demo.run(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enrichproxy",
        description="Prometheus remote-write proxy: enrich series from MongoDB, "
        "aggregate them into views, forward them.",
    )
    parser.add_argument("--version", action="version", version=f"enrichproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    _config_argument(serve)
    serve.add_argument(
        "--listen",
        default=os.environ.get("ENRICHPROXY_LISTEN"),
        help="host:port, overrides the config's listen (env ENRICHPROXY_LISTEN)",
    )
    serve.add_argument(
        "--log-level",
        default=os.environ.get("ENRICHPROXY_LOG_LEVEL"),
        choices=["debug", "info", "warning", "error"],
        help="overrides the config's log_level (env ENRICHPROXY_LOG_LEVEL)",
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check", help="validate a configuration and exit")
    _config_argument(check)
    check.set_defaults(func=cmd_check)

    from enrichproxy import loadgen

    generator = commands.add_parser("loadgen", help="send simulated remote-write load")
    loadgen.add_arguments(generator)
    generator.set_defaults(func=cmd_loadgen)

    from enrichproxy import demo

    demo_parser = commands.add_parser(
        "demo", help="run MongoDB (secantusdb), a downstream Prometheus, the proxy and load"
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
