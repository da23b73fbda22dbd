"""The command line: wiring only."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from vidrop.config.settings import Settings
    from vidrop.daemon.wiring import GeneratorFactory
    from vidrop.pipeline.generate import Generator

EX_CONFIG = 78
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CANTCREAT = 73
EX_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`'s yes


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
        code = args.handler(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away (`vidrop config | head -1`) is caught
        return code
    except LedgerUnavailable as exc:  # `vidrop status` on a database that is down: one line, try again later
        print(f"vidrop: {exc.reason} ({exc.detail}) {exc.fix}", file=sys.stderr)
        return EX_TEMPFAIL
    except BrokenPipeError:  # the reader of stdout closed it: stop quietly, as `cat` and `yes` do
        _quiet_stdout()
        return EX_BROKEN_PIPE


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's own flush at exit fails no more."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidrop", description="Turn dropped images and prompts into videos.")
    parser.add_argument(
        "--config",
        help="settings file (default: $VIDROP_CONFIG, /etc/vidrop/vidrop.toml, ~/.config/vidrop/vidrop.toml)",
    )
    parser.add_argument("--version", action=_Version, help="print the vidrop, diffusers and torch versions")
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
    units.add_argument("--user", help="the account the service runs as (created, a system user, if absent)")
    units.add_argument("--group", help="the group that owns the inbox and outbox (the designers'; default: --user's)")
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
    status.add_argument("--json", action="store_true", help="one JSON document for scripts (see the README)")
    status.set_defaults(handler=_status)
    _queue_controls(commands)
    retry = commands.add_parser("retry", help="queue failed jobs again; read refused inputs again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("paths", nargs="*", default=[], metavar="PATH", help="input image (in the inbox)")
    which.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    retry.set_defaults(handler=_retry)
    check = commands.add_parser(
        "validate", help="apply the intake's rules to a sidecar (and image): the request or the error"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="photo.json and/or photo.png")
    check.add_argument(
        "--to", dest="folder", help="inbox folder the files would be dropped in (default: where they are)"
    )
    check.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    check.set_defaults(handler=_validate)
    send = commands.add_parser("submit", help="copy an image (and its prompt) into the inbox safely; --wait for it")
    send.add_argument("image", type=Path)
    prompt = send.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the prompt (written as the sidecar)")
    prompt.add_argument("--sidecar", type=Path, help="a sidecar JSON file to submit with the image")
    send.add_argument("--to", dest="folder", help="inbox folder to drop into (default: the inbox itself)")
    send.add_argument("--wait", action="store_true", help="wait for the video or the error file")
    send.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    send.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
    send.set_defaults(handler=_submit)
    demo = commands.add_parser("demo-model", help="write a tiny random-weight pipeline (its videos are noise)")
    demo.add_argument("directory", type=Path)
    demo.add_argument("--force", action="store_true", help="write into a folder that is not empty")
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


def _queue_controls(commands) -> None:
    """`vidrop pause`, `resume`, `drain`, `cancel PATH|JOB_ID`, `priority PATH|JOB_ID N` (daemon/controls.py)."""
    for name, text in (
        ("pause", "no new job starts on any instance (running ones finish); intake goes on"),
        ("resume", "jobs start again on every instance (ends a pause or a drain)"),
        ("drain", "finish the jobs queued now, then start nothing new until `vidrop resume`"),
        ("cancel", "cancel a queued job (its error file says so) or abandon a running one"),
        ("priority", "set a queued job's priority (higher runs first; default 0)"),
    ):
        control = commands.add_parser(name, help=text)
        if name in ("cancel", "priority"):
            control.add_argument("target", metavar="PATH|JOB_ID", help="input image (in the inbox) or job id")
        if name == "priority":
            control.add_argument("priority", type=int, metavar="N")
        control.add_argument("--config", default=argparse.SUPPRESS, help="settings file")
        control.set_defaults(handler=_control, control=name)


class _Version(argparse.Action):
    """--version: read only when asked, from the installed metadata (torch is not imported)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from vidrop.daemon.versions import version_line

        print(version_line())
        parser.exit()


class _DemoModels:
    """The names `vidrop demo-model` builds, read from its builders only when asked: they import torch."""

    def __iter__(self):
        from vidrop.pipeline.demo_model import BUILDERS

        return iter(BUILDERS)

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def _load(args, *, warn: bool = True):
    from vidrop.config.errors import ConfigError
    from vidrop.config.settings import load_settings

    try:
        loaded = load_settings(args.config)
    except ConfigError as exc:
        print(f"vidrop: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    for name, nearest in loaded.unknown_variables if warn else ():  # `run` logs them as events instead
        hint = f"; did you mean {nearest}?" if nearest else "; `vidrop config` lists every setting"
        print(f"vidrop: warning: {name} is not a vidrop setting and is ignored{hint}", file=sys.stderr)
    return loaded


def _serve(args, *, once: bool) -> int:
    loaded = _load(args, warn=False)
    settings = loaded.settings
    import faulthandler

    from vidrop.config.settings import apply_process_environment, load_settings, service_manager
    from vidrop.daemon.logs import configure_logging

    # A watchdog abort (SIGABRT) or a crash prints every thread's stack to stderr, i.e. into the journal.
    faulthandler.enable()
    terminal = configure_logging(settings.log_level, settings.log_format, manager=service_manager())
    progress = terminal.progress() if terminal is not None else None  # the live line, at a terminal only
    for name, nearest in loaded.unknown_variables:
        import structlog

        structlog.get_logger().warning("unknown_variable", variable=name, nearest=nearest, ignored=True)
    apply_process_environment(settings)
    from vidrop.config.errors import ConfigError, ModelUnavailable
    from vidrop.daemon.app import Daemon
    from vidrop.daemon.systemd import SystemdNotifier
    from vidrop.daemon.wiring import Wiring

    wiring = Wiring(settings, generator_factory=args.generator_factory, notifier=SystemdNotifier(), progress=progress)
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
        if progress is not None:
            progress.close()
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
    print(f"# config file: {loaded.config_file or '(none)'} ({loaded.config_origin or 'given'})")
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
    from vidrop.daemon.ledger import open_ledger

    settings = _load(args).settings
    if not settings.ledger_url and not settings.ledger_path.exists():
        print(
            f"vidrop: no ledger at {settings.ledger_path}: nothing has been processed with these settings yet",
            file=sys.stderr,
        )
        return EX_CONFIG
    ledger = open_ledger(settings.ledger_url, settings.state_dir)  # a fleet's PostgreSQL ledger too
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
    from vidrop.daemon.install import InstallError, prepare_folders, prepare_service
    from vidrop.daemon.units import (
        DEFAULT_WATCHDOG_SECONDS,
        UnitError,
        UnitOptions,
        render_units,
        systemctl_lines,
        write_units,
    )

    options = UnitOptions(
        user=args.user, group=args.group, watchdog_seconds=args.watchdog_seconds or DEFAULT_WATCHDOG_SECONDS
    )
    try:
        config, account, done = prepare_service(getattr(args, "config", None), args.user, args.group)
        args.config = str(config)
        loaded = _load(args)
        units = render_units(loaded, options)
        done += prepare_folders(loaded.settings, account, args.group)
    except (UnitError, InstallError) as exc:
        print(f"vidrop: {exc}", file=sys.stderr)
        return EX_CONFIG
    for line in done:
        print(line)
    for path in write_units(units, args.output):
        print(f"wrote {path}")
    print("now run:")
    for line in systemctl_lines(args.output):
        print(f"  {line}")


def _status(args) -> int:
    import time

    from vidrop.daemon.report import render_status

    loaded = _load(args)
    settings = loaded.settings
    with _existing_ledger(loaded) as ledger:
        if ledger is None:
            return EX_CONFIG
        now = time.time()
        if args.json:
            from vidrop.daemon.controls import status_document

            document = status_document(ledger.status(now), now, settings.recovery.lease_seconds)
            print(json.dumps(document, indent=2))
        else:
            print(render_status(ledger.status(now), now, settings.recovery.lease_seconds))
    return 0


@contextlib.contextmanager
def _existing_ledger(loaded) -> Iterator[Any]:
    """The ledger the settings name, closed after use; None (and why on stderr) where it is a SQLite file that
    does not exist: `status`, `retry` and the queue controls never create one."""
    from vidrop.daemon.ledger import open_ledger

    if _no_ledger(loaded):
        yield None
        return
    ledger = open_ledger(loaded.settings.ledger_url, loaded.settings.state_dir)
    try:
        yield ledger
    finally:
        ledger.close()


def _no_ledger(loaded) -> bool:
    """Whether the SQLite ledger the settings name is missing: say so (and what chose that place); create none."""
    settings = loaded.settings
    if settings.ledger_url.startswith(("postgresql://", "postgres://")):
        return False
    if settings.ledger_url:
        path, chosen_by = Path(settings.ledger_url.removeprefix("sqlite://")), ("ledger_url", "VIDROP_LEDGER_URL")
    else:
        path, chosen_by = settings.ledger_path, ("state_dir", "VIDROP_STATE_DIR")
    if path.exists():
        return False
    source = loaded.sources.get(chosen_by[0], "default")
    where = {"default": "the default", "file": f"{loaded.config_file}"}.get(source, source)
    print(
        f"vidrop: no ledger at {path} ({chosen_by[0]} from {where}): nothing has run with these settings; "
        f"check {chosen_by[1]} or {chosen_by[0]} in the settings file",
        file=sys.stderr,
    )
    return True


def _retry(args) -> int:
    from vidrop.daemon.report import describe_requeued, relative_inputs

    loaded = _load(args)
    settings = loaded.settings
    if not args.paths and not args.failed:
        print("vidrop retry: name an input PATH or --failed", file=sys.stderr)
        return 2
    with _existing_ledger(loaded) as ledger:
        if ledger is None:
            return EX_CONFIG
        inputs = None if args.failed else relative_inputs(args.paths, settings.inbox)
        # Refusals are queued again too: a daemon (running now, or at its next start) reads their files again.
        requeued = ledger.requeue(inputs=inputs, failed=args.failed)
        refused = sorted({job.input for job in requeued if not job.params})
        if refused:  # and a start reads them again, not passing them over as unchanged
            ledger.forget_inputs(refused)
        print(describe_requeued(requeued))
        if inputs is not None and not requeued:
            print(f"no failed job for {', '.join(inputs)}", file=sys.stderr)
            return 1
    return 0


def _control(args) -> int:
    import time

    from vidrop.daemon import controls

    loaded = _load(args)
    settings = loaded.settings
    with _existing_ledger(loaded) as ledger:
        if ledger is None:
            return EX_CONFIG
        if args.control == "cancel":
            return controls.cancel(ledger, args.target, settings.inbox, time.time())
        if args.control == "priority":
            return controls.priority(ledger, args.target, args.priority, settings.inbox)
        print(controls.set_mode(ledger, args.control, time.time()))
    return 0


def _validate(args) -> int:
    from vidrop.daemon.submit import print_document, validate

    status, document = validate(_load(args).settings, args.files, args.folder)
    print_document(document)
    return status


def _submit(args) -> int:
    from vidrop.daemon.submit import submit, wait_outcome

    settings = _load(args).settings
    placed, relative, job_id = submit(
        settings, args.image, prompt=args.prompt, sidecar=args.sidecar, folder=args.folder
    )
    print(f"submitted {placed} (job {job_id})")
    if not args.wait:
        return 0
    status, text = wait_outcome(settings, relative, job_id, args.timeout)
    print(text, file=sys.stdout if status == 0 else sys.stderr)
    return status


def _demo_model(args) -> int:
    refusal = _demo_target_refusal(args.directory, force=args.force)
    if refusal:
        print(f"vidrop demo-model: {refusal[1]}", file=sys.stderr)
        return refusal[0]
    from vidrop.pipeline.demo_model import DEMO_NOTE, write_demo_model

    try:
        path = write_demo_model(args.directory, args.family)
    except OSError as exc:
        print(f"vidrop demo-model: cannot write {args.directory}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"wrote a tiny {args.family} pipeline to {path}")
    print(DEMO_NOTE)
    print(f"use it with: VIDROP_PIPELINE__MODEL={path.absolute()} vidrop run")
    return 0


def _demo_target_refusal(directory: Path, *, force: bool) -> tuple[int, str] | None:
    """Why `demo-model` must not write to `directory` (exit code and one line), or None when it may."""
    import os

    if directory.exists() and not directory.is_dir():
        return EX_CANTCREAT, f"{directory} is a file, not a folder; name a new folder"
    if directory.is_dir() and any(directory.iterdir()) and not force:
        return EX_CANTCREAT, f"{directory} is not empty; name a new folder, or add --force to write into it"
    parent = next((p for p in (directory, *directory.absolute().parents) if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return EX_CANTCREAT, f"cannot create {directory}: {parent} is not a writable folder"
    return None


if __name__ == "__main__":
    sys.exit(main())
