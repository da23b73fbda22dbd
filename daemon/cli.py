"""The command line: wiring only."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidrop.config.settings import Settings
    from vidrop.daemon.wiring import GeneratorFactory
    from vidrop.pipeline.generate import Generator

EX_CONFIG = 78
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75


def production_generator(settings: Settings) -> Generator:
    """The models on offer, loaded through the production loader."""
    from vidrop.pipeline.model_set import open_models

    return open_models(settings.pipeline, limits=settings.limits, memory=settings.memory)


def main(argv: list[str] | None = None, *, generator_factory: GeneratorFactory = production_generator) -> int:
    """Entry point of the `vidrop` console script. The daemon gets its generator from generator_factory:
    the composition root chooses (the test harness passes one that wraps the production generator)."""
    from vidrop.daemon.ledger.base import LedgerUnavailable

    parser = _parser()
    args = parser.parse_args(argv)
    args.generator_factory = generator_factory
    try:
        return args.handler(args)
    except LedgerUnavailable as exc:  # `vidrop status` on a database that is down: one line, try again later
        print(f"vidrop: {exc.reason} ({exc.detail}) {exc.fix}", file=sys.stderr)
        return EX_TEMPFAIL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidrop", description="Turn dropped images and prompts into videos.")
    parser.add_argument("--config", help="settings file (default: $VIDROP_CONFIG, else config/vidrop.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("run", _run, "run the daemon in the foreground"),
        ("once", _once, "process everything pending in the inbox, then exit (1 if a job failed)"),
        ("check", _check, "validate settings, folders, model and device"),
        ("config", _config, "print the effective settings and where each came from"),
        ("schema", _schema, "print the JSON Schema of the sidecar file"),
        ("gallery", _gallery, "write the outbox's gallery pages and status files from the ledger now"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
        command.set_defaults(handler=handler)
    units = commands.add_parser("install-systemd", help="write vidrop.service and vidrop@.service for this install")
    units.add_argument("--output", type=Path, default=Path("/etc/systemd/system"), help="where to write the units")
    units.add_argument("--user", help="the account the service runs as (default: root)")
    units.add_argument(
        "--watchdog-seconds",
        type=int,
        default=None,
        help="WatchdogSec=: how long a silent main loop may last (default 300)",
    )
    units.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    units.set_defaults(handler=_install_systemd)
    status = commands.add_parser("status", help="the queue, each instance and its job, recent failures, throughput")
    status.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    status.set_defaults(handler=_status)
    retry = commands.add_parser("retry", help="queue failed jobs again; read refused inputs again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("paths", nargs="*", default=[], metavar="PATH", help="input image (in the inbox)")
    which.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    retry.set_defaults(handler=_retry)
    demo = commands.add_parser("demo-model", help="write a tiny random-weight pipeline (its videos are noise)")
    demo.add_argument("directory", type=Path)
    demo.add_argument(
        "--family",
        choices=_DemoModels(),
        metavar="FAMILY",
        default="ltx",
        help="which tiny pipeline: %(choices)s (default %(default)s)",
    )
    demo.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    demo.set_defaults(handler=_demo_model)
    return parser


class _DemoModels:
    """The names `vidrop demo-model` builds, read from its builders only when asked: they import torch."""

    def __iter__(self):
        from vidrop.pipeline.demo_model import BUILDERS

        return iter(BUILDERS)

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def _load(args):
    from vidrop.config.errors import ConfigError
    from vidrop.config.settings import load_settings

    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"vidrop: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def _serve(args, *, once: bool) -> int:
    loaded = _load(args)
    settings = loaded.settings
    import faulthandler

    from vidrop.config.settings import apply_process_environment, load_settings, service_manager
    from vidrop.daemon.logs import configure_logging

    # A watchdog abort (SIGABRT) or a crash prints every thread's stack to stderr, i.e. into the journal.
    faulthandler.enable()
    configure_logging(settings.log_level, settings.log_format, manager=service_manager())
    apply_process_environment(settings)
    from vidrop.config.errors import ConfigError, ModelUnavailable
    from vidrop.daemon.app import Daemon
    from vidrop.daemon.systemd import SystemdNotifier
    from vidrop.daemon.wiring import Wiring

    wiring = Wiring(settings, generator_factory=args.generator_factory, notifier=SystemdNotifier())
    daemon = Daemon(wiring, settings_loader=lambda: load_settings(args.config).settings)
    daemon.install_signal_handlers()
    # What the imports made (torch, diffusers: some 300,000 objects) lives as long as the process. Frozen,
    # it is left out of every later collection, so the one after each job walks only what jobs made; a
    # full walk took 0.2-0.4 s per job. Frozen before the model loads, so unloading it still frees its cycles.
    gc.collect()
    gc.freeze()
    try:
        return daemon.run(once=once)
    except ModelUnavailable as exc:
        import structlog

        structlog.get_logger().error("model_unavailable", error=exc.reason, detail=exc.detail, fix=exc.fix)
        print(f"vidrop: {exc.reason} {exc.fix}", file=sys.stderr)
        return EX_CONFIG
    except ConfigError as exc:  # a setting found unusable while starting (metrics.port taken, no prometheus_client)
        print(f"vidrop: {exc.reason}", file=sys.stderr)
        return EX_CONFIG
    finally:
        sys.stderr.flush()


def _run(args) -> int:
    return _serve(args, once=False)


def _once(args) -> int:
    return _serve(args, once=True)


def _check(args) -> int:
    from vidrop.daemon.checks import run_checks

    loaded = _load(args)
    return run_checks(loaded)


def _config(args) -> int:
    from vidrop.config.settings import flat_settings

    loaded = _load(args)
    print(f"# config file: {loaded.config_file or '(none)'}")
    for name, value in flat_settings(loaded.settings).items():
        print(f"{name} = {json.dumps(value)}  # {loaded.sources[name]}")
    return 0


def _schema(args) -> int:
    from vidrop.config.sidecar import sidecar_schema

    print(json.dumps(sidecar_schema(), indent=2))
    return 0


def _gallery(args) -> int:
    from vidrop.daemon.clock import SystemClock
    from vidrop.daemon.gallery.writer import INDEX, GalleryWriter
    from vidrop.daemon.ledger.sqlite import SqliteLedger

    settings = _load(args).settings
    if not settings.ledger_path.exists():
        print(
            f"vidrop: no ledger at {settings.ledger_path}: nothing has been processed with these settings yet",
            file=sys.stderr,
        )
        return EX_CONFIG
    ledger = SqliteLedger(settings.ledger_path)
    try:
        writer = GalleryWriter(
            ledger=ledger,
            outbox=settings.outbox,
            clock=SystemClock(),
            page_size=settings.gallery.page_size,
            refresh_seconds=settings.gallery.refresh_seconds,
        )
        folders = writer.rebuild()
    finally:
        ledger.close()
    print(f"wrote the gallery of {len(folders)} folder(s); open {(settings.outbox / INDEX).absolute()}")
    return 0


def _install_systemd(args) -> int:
    from vidrop.daemon.units import (
        DEFAULT_WATCHDOG_SECONDS,
        UnitError,
        UnitOptions,
        render_units,
        systemctl_lines,
        write_units,
    )

    loaded = _load(args)
    options = UnitOptions(user=args.user, watchdog_seconds=args.watchdog_seconds or DEFAULT_WATCHDOG_SECONDS)
    try:
        units = render_units(loaded, options)
    except UnitError as exc:
        print(f"vidrop: {exc}", file=sys.stderr)
        return EX_CONFIG
    for path in write_units(units, args.output):
        print(f"wrote {path}")
    print("now run:")
    for line in systemctl_lines(args.output):
        print(f"  {line}")


def _status(args) -> int:
    import time

    from vidrop.daemon.ledger import open_ledger
    from vidrop.daemon.report import render_status

    settings = _load(args).settings
    ledger = open_ledger(settings.ledger_url, settings.state_dir)
    try:
        now = time.time()
        print(render_status(ledger.status(now), now, settings.recovery.lease_seconds))
    finally:
        ledger.close()
    return 0


def _retry(args) -> int:
    from vidrop.daemon.ledger import open_ledger
    from vidrop.daemon.report import describe_requeued, relative_inputs

    settings = _load(args).settings
    if not args.paths and not args.failed:
        print("vidrop retry: name an input PATH or --failed", file=sys.stderr)
        return 2
    inputs = None if args.failed else relative_inputs(args.paths, settings.inbox)
    ledger = open_ledger(settings.ledger_url, settings.state_dir)
    try:
        # Refusals are queued again too: a daemon (running now, or at its next start) reads their files again.
        requeued = ledger.requeue(inputs=inputs, failed=args.failed)
        refused = sorted({job.input for job in requeued if not job.params})
        if refused:  # and a start reads them again, not passing them over as unchanged
            ledger.forget_inputs(refused)
        print(describe_requeued(requeued))
        if inputs is not None and not requeued:
            print(f"no failed job for {', '.join(inputs)}", file=sys.stderr)
            return 1
    finally:
        ledger.close()
    return 0


def _demo_model(args) -> int:
    from vidrop.pipeline.demo_model import DEMO_NOTE, write_demo_model

    path = write_demo_model(args.directory, args.family)
    print(f"wrote a tiny {args.family} pipeline to {path}")
    print(DEMO_NOTE)
    print(f"use it with: VIDROP_PIPELINE__MODEL={path.absolute()} vidrop run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
