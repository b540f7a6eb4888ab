"""Command line: ``enrichproxy serve|check|loadgen|demo|metadata|explain`` (also ``python -m
enrichproxy``).

Flags that name files or addresses also read an environment variable (shown in ``--help``), so
a container can be configured without a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from enrichproxy import __version__
from enrichproxy.config.schema import (
    ENGINES,
    LOG_FORMATS,
    LOG_LEVEL_ALIASES,
    LOG_LEVELS,
    Config,
    load_config,
)
from enrichproxy.errors import ConfigError, EnrichproxyError
from enrichproxy.server.logs import configure_logging

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("enrichproxy")

# How long SIGTERM waits for requests under way before the queues are drained.
REQUEST_GRACE_SECONDS = 5.0

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_FAILED = 1
"""The command did not do all it was asked: documents rejected, MongoDB or the proxy unreachable."""
# How long ``explain`` waits for the proxy; it answers from memory, so this only bounds a hang.
EXPLAIN_TIMEOUT_SECONDS = 10.0


def _env_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    help_text: str,
    default: str | None = None,
    aliases: Sequence[str] = (),
    **kwargs: Any,
) -> None:
    """A flag that also reads ``ENRICHPROXY_<FLAG>`` from the environment, so a container
    can be configured without a command line. ``aliases`` are other spellings of the flag
    (Prometheus' ``--config.file`` for ``--config``)."""
    env = "ENRICHPROXY_" + flag.lstrip("-").upper().replace("-", "_")
    parser.add_argument(
        flag,
        *aliases,
        dest=flag.lstrip("-").replace("-", "_"),
        default=os.environ.get(env, default),
        help=f"{help_text} (env {env})",
        **kwargs,
    )


def _config_argument(parser: argparse.ArgumentParser) -> None:
    _env_option(
        parser,
        "--config",
        "YAML configuration file (default %(default)s)",
        default="conf/enrichproxy.yaml",
        aliases=("--config.file",),
    )


def _load(path: str) -> Config | None:
    """The configuration, or None after printing every problem (TLS files loaded too, so a
    certificate that ssl cannot use is reported like any other problem)."""
    from enrichproxy.server.tls import check_tls

    try:
        config = load_config(path)
        check_tls(config)
        return config
    except ConfigError as exc:
        _report_problems(path, exc)
        return None


def _report_problems(path: str, exc: ConfigError) -> None:
    print(f"enrichproxy: invalid configuration {path}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    views = ", ".join(v.name for v in config.views)
    print(
        f"{args.config}: OK ({len(config.views)} views: {views}; "
        f"{len(config.remote_write)} destinations)"
    )
    # The memory bound, as the operator sizes it (docs/operations.md#sizing).
    total = config.limits.max_input_series
    per_view = ", ".join(
        f"{v.name} {v.max_input_series}" for v in config.views if v.max_input_series
    )
    print(
        f"input series: at most {total if total else 'unlimited'} (limits.max_input_series)"
        + (f"; per view: {per_view}" if per_view else "")
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    overrides = _command_line_overrides(args)
    config = overrides(config)
    configure_logging(config.log_level, config.log_format)
    from aiohttp import web

    from enrichproxy.server.app import create_app, reload_on_sighup
    from enrichproxy.server.tls import server_context

    # Loaded once: a reload does not change the listener (checked by _load already).
    ssl_context = None if config.tls is None else server_context(config.tls)
    host, port = config.listen_host_port
    scheme = "http" if ssl_context is None else "https"
    log.info("enrichproxy %s listening on %s://%s:%d", __version__, scheme, host, port)
    # A reload (SIGHUP, POST /-/reload) reads the same file, with the same flags over it.
    try:
        app = create_app(config, config_path=args.config, overrides=overrides)
    except ConfigError as exc:  # engine: native, where it is not built
        _report_problems(args.config, exc)
        return EXIT_CONFIG
    app.cleanup_ctx.append(reload_on_sighup)
    app.on_startup.append(_log_stop_signals)
    app.on_startup.append(_freeze_startup_heap)  # after every cleanup_ctx has started
    web.run_app(
        app,
        host=host,
        port=port,
        ssl_context=ssl_context,
        access_log=None,
        print=None,
        # For requests under way: a write takes milliseconds. The drain of the queues has its
        # own deadline (shutdown_timeout); both together must fit the orchestrator's grace.
        shutdown_timeout=min(REQUEST_GRACE_SECONDS, config.shutdown_timeout_ms / 1000),
    )
    log.info("stopped")
    return EXIT_OK


async def _freeze_startup_heap(app: web.Application) -> None:
    """Moves what start-up made (modules, configuration, engine, clients: ~50 k objects) out of
    the cyclic collector's sight. A full collection walks every tracked object; with them it
    took 30-50 ms on a busy 2-core machine, a pause any write could land in, set off by the
    allocations of a large flush or request. They live as long as the process, so the
    collector has nothing to find among them."""
    gc.collect()
    gc.freeze()


async def _log_stop_signals(app: web.Application) -> None:
    """SIGTERM and SIGINT stop the server as aiohttp's own handlers do, after a log line that
    says which signal came and what happens now (otherwise a stop is silent until done)."""
    import signal

    from aiohttp.web_runner import GracefulExit

    from enrichproxy.server.app import PROXY

    loop = asyncio.get_running_loop()
    timeout_s = app[PROXY].config.shutdown_timeout_ms / 1000

    def stop(signum: signal.Signals) -> None:
        log.info(
            "received %s: stopping; open windows are emitted and the queues drained within %.0fs",
            signum.name,
            timeout_s,
        )
        raise GracefulExit

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)


def _with_listen(config: Config, listen: str) -> Config:
    from dataclasses import replace

    return replace(config, listen=listen)


def _command_line_overrides(args: argparse.Namespace) -> Callable[[Config], Config]:
    """``--listen``, ``--log-level`` and ``--engine`` over a configuration, at start and at every
    reload."""
    from dataclasses import replace

    def apply(config: Config) -> Config:
        if args.listen:
            config = _with_listen(config, args.listen)
        if args.log_level:
            level = LOG_LEVEL_ALIASES.get(args.log_level, args.log_level)
            config = replace(config, log_level=level)
        if args.log_format:
            config = replace(config, log_format=args.log_format)
        if args.engine:
            config = replace(config, engine=args.engine)
        return config

    return apply


def cmd_loadgen(args: argparse.Namespace) -> int:
    from enrichproxy.tools import loadgen

    configure_logging("warning")
    return asyncio.run(loadgen.run(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from enrichproxy.tools import demo

    configure_logging("info")
    return asyncio.run(demo.run(args))


def cmd_metadata_import(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from enrichproxy.metadata import admin

    try:
        documents = admin.read_documents(args.file)
        report = asyncio.run(admin.import_documents(config.metadata, documents, args.rule))
    except EnrichproxyError as exc:
        print(f"enrichproxy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.file}: {report.summary()}")
    for line in report.rejected:
        print(f"{args.file}: rejected {line}", file=sys.stderr)
    return EXIT_FAILED if report.rejected else EXIT_OK


def cmd_metadata_export(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from enrichproxy.metadata import admin

    try:
        documents = asyncio.run(admin.export_documents(config.metadata, args.rule))
        text = admin.format_documents(documents, args.format)
    except EnrichproxyError as exc:
        print(f"enrichproxy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(text)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    """Ask a running proxy; its answer is printed as it comes (text, or JSON with --json)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from enrichproxy.engine.explain import EXPLAIN_PATH

    query = urllib.parse.urlencode({"series": args.series})
    url = f"{args.url.rstrip('/')}{EXPLAIN_PATH}?{query}"
    headers = {"Accept": "application/json" if args.json else "text/plain"}
    # The proxy is addressed directly: an HTTP proxy from the environment has no business here.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    try:
        headers.update(_explain_credentials(args))
        if args.ca_file:
            import ssl

            context = ssl.create_default_context(cafile=args.ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
    except OSError as exc:  # ssl.SSLError too: a CA file that holds no certificate
        print(f"enrichproxy: cannot use {exc.filename or args.ca_file}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=args.timeout) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            answer = exc.read().decode(errors="replace").strip()
        print(f"enrichproxy: {args.url} answered {exc.code}: {answer}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"enrichproxy: cannot reach {args.url}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(body if body.endswith("\n") else body + "\n")
    return EXIT_OK


def _explain_credentials(args: argparse.Namespace) -> dict[str, str]:
    """The Authorization header for a proxy with ``auth``; secrets come from files (trimmed,
    as the proxy reads its own), so they never show in ``ps`` or shell history."""
    from enrichproxy.server.auth import basic_credentials, bearer_credentials

    if args.bearer_token_file:
        with open(args.bearer_token_file, encoding="utf-8") as handle:
            return {"Authorization": bearer_credentials(handle.read().strip())}
    if args.username:
        password = ""
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as handle:
                password = handle.read().strip()
        return {"Authorization": basic_credentials(args.username, password)}
    return {}


def _add_metadata_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    metadata = commands.add_parser(
        "metadata", help="import or export the documents of a rule's MongoDB collection"
    )
    actions = metadata.add_subparsers(dest="metadata_command", required=True)

    def rule_argument(parser: argparse.ArgumentParser) -> None:
        _env_option(
            parser,
            "--rule",
            "the enrichment rule whose collection to use (default: the first rule)",
        )

    importer = actions.add_parser(
        "import",
        help="upsert documents by key from a YAML, JSON or CSV file",
        description="Validate every document as the proxy would, upsert the valid ones by the"
        " rule's key fields (creating the unique index on them) and report inserted, updated,"
        " unchanged and rejected. Exit status 1 when a document was rejected or MongoDB"
        " could not be used.",
    )
    importer.add_argument("file", help="documents: .yaml/.yml or .json (a list), or .csv")
    _config_argument(importer)
    rule_argument(importer)
    importer.set_defaults(func=cmd_metadata_import)

    exporter = actions.add_parser("export", help="print every document, ordered by key")
    _config_argument(exporter)
    rule_argument(exporter)
    exporter.add_argument(
        "--format", choices=["yaml", "json", "csv"], default="yaml", help="default %(default)s"
    )
    exporter.set_defaults(func=cmd_metadata_export)


def _add_explain_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = commands.add_parser(
        "explain",
        help="ask a running proxy what it does with one series",
        description="The lookup key and matching document per rule, the enriched labels, and"
        " per view the output series and its aggregation group's current value.",
    )
    explain.add_argument(
        "series", help='the series\' exact labels, e.g. order_total{pod="checkout-1",job="app"}'
    )
    _env_option(
        explain,
        "--url",
        "the proxy's base URL (default %(default)s)",
        default="http://127.0.0.1:9201",
    )
    explain.add_argument("--json", action="store_true", help="print the JSON answer")
    _env_option(explain, "--bearer-token-file", "token for a proxy with auth.bearer_token_file")
    _env_option(explain, "--username", "user for a proxy with auth.basic_auth")
    _env_option(explain, "--password-file", "that user's password")
    _env_option(
        explain,
        "--ca-file",
        "CA certificates to verify an https proxy with (default: the system's)",
    )
    explain.add_argument(
        "--timeout",
        type=float,
        default=EXPLAIN_TIMEOUT_SECONDS,
        help="seconds (default %(default)s)",
    )
    explain.set_defaults(func=cmd_explain)


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
    _env_option(
        serve,
        "--listen",
        "host:port, overrides the config's listen",
        aliases=("--web.listen-address",),
    )
    _env_option(
        serve,
        "--log-level",
        "overrides the config's log_level",
        aliases=("--log.level",),
        choices=[*LOG_LEVELS, *LOG_LEVEL_ALIASES],
    )
    _env_option(
        serve,
        "--log-format",
        "overrides the config's log_format",
        aliases=("--log.format",),
        choices=list(LOG_FORMATS),
    )
    _env_option(
        serve,
        "--engine",
        "overrides the config's engine (auto: native when built, else python)",
        choices=list(ENGINES),
    )
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check", help="validate a configuration and exit")
    _config_argument(check)
    check.set_defaults(func=cmd_check)

    from enrichproxy.tools import loadgen

    generator = commands.add_parser("loadgen", help="send simulated remote-write load")
    loadgen.add_arguments(generator)
    generator.set_defaults(func=cmd_loadgen)

    from enrichproxy.tools import demo

    demo_parser = commands.add_parser(
        "demo", help="run MongoDB (secantusdb), a downstream Prometheus, the proxy and load"
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=cmd_demo)

    _add_metadata_commands(commands)
    _add_explain_command(commands)
    return parser


# What a shell reports for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C where a command does not stop by itself: the user asked, no traceback.
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
