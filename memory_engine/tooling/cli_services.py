"""The service commands of ``memory-engine``: ``up``, ``demo``, and the ``worker``, ``beat`` and
``flower`` shortcuts, which replace this process with the matching ``celery -A worker ...``."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Annotated, NoReturn

import typer

from memory_engine.tooling.cli_support import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    JsonOption,
    cli_settings,
    emit_json,
    handled,
    stderr_console,
    stdout_console,
)

__all__ = ["services_app"]

UP_POLL_INTERVAL_S = 0.5

services_app = typer.Typer()


@services_app.command()
@handled
def up(
    beat: Annotated[bool, typer.Option(help="Run Celery Beat.")] = True,
    flower: Annotated[bool, typer.Option(help="Run Flower.")] = True,
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    flower_port: Annotated[
        int | None, typer.Option(help="Flower port (default MEMORY_FLOWER_PORT).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Log level of the services.")] = "INFO",
    json_output: JsonOption = False,
) -> None:
    """Run worker, Beat and Flower (and an embedded Redis if MEMORY_REDIS_URL is unset) until
    Ctrl-C or SIGTERM, then stop them all."""
    from memory_engine.tooling.processes import (
        ShutdownRequested,
        raise_if_shutdown_requested,
        shutdown_on_signals,
    )
    from memory_engine.tooling.services import (
        ServiceError,
        Services,
        describe,
        flower_credentials,
    )

    settings = cli_settings()
    out = stdout_console()
    with shutdown_on_signals(), Services(settings) as services:
        try:
            services.ensure_redis()
            nodename = f"memory-engine@{socket.gethostname()}"
            worker = services.start_worker(
                nodename=nodename, concurrency=concurrency, loglevel=loglevel
            )
            if beat:
                services.start_beat(loglevel=loglevel)
            port = flower_port or settings.flower_port
            auth = flower_credentials(settings, services, user="admin") if flower else None
            flower_proc = services.start_flower(port=port, loglevel=loglevel) if flower else None
            services.wait_for_worker(worker, nodename)
            if flower_proc is not None:
                services.wait_for_port(flower_proc, port)
            info = {**describe(services), "worker": nodename}
            if auth is not None:
                info["flower"] = {"url": f"http://127.0.0.1:{port}/", **auth}
            if json_output:
                emit_json({"ok": True, "event": "started", **info}, line=True)
            else:
                out.print(f"up: worker {nodename}, redis {info['redis_url']}")
                if auth is not None:
                    flower_url = info["flower"]["url"]
                    out.print(
                        f"Flower: {flower_url} user {auth['user']} password {auth['password']}"
                    )
                out.print("Ctrl-C to stop.")
            while not services.dead():
                raise_if_shutdown_requested()
                time.sleep(UP_POLL_INTERVAL_S)
            dead = services.dead()[0]
            raise ServiceError(
                f"{dead.name} exited with code {dead.popen.returncode}; stopping the others"
            )
        except (KeyboardInterrupt, ShutdownRequested):
            pass  # a requested stop: leaving the block stops every service
    if json_output:
        emit_json({"ok": True, "event": "stopped"}, line=True)
    else:
        out.print("stopped; no service process left running")


@services_app.command()
@handled
def demo(
    conversations: Annotated[int, typer.Option(min=1, max=10_000)] = 20,
    messages_per_conversation: Annotated[int, typer.Option(min=2, max=5000)] = 60,
    resource: Annotated[
        str, typer.Option(help="demo-support, demo-chat, or a resource of MEMORY_RESOURCES_DIR.")
    ] = "demo-support",
    beat: Annotated[bool, typer.Option("--beat", help="Also run Celery Beat.")] = False,
    flower: Annotated[bool, typer.Option("--flower", help="Also run Flower.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated conversations.")] = 7,
    threads: Annotated[int, typer.Option(min=1, max=64, help="Appending threads.")] = 4,
    drain_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the flushes.")
    ] = 60.0,
    turn_delay_ms: Annotated[
        float, typer.Option(min=0, help="Pause after each append, like an agent's LLM call.")
    ] = 10.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's memories in a configured Redis.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Start Redis (unless configured) and a worker, simulate agent conversations, report the
    flushes, then stop everything it started."""
    from memory_engine.tooling import demo as demo_module
    from memory_engine.tooling import demo_render
    from memory_engine.tooling.processes import (
        ShutdownRequested,
        raise_if_shutdown_requested,
        shutdown_on_signals,
    )

    options = demo_module.DemoOptions(
        conversations=conversations,
        messages_per_conversation=messages_per_conversation,
        resource_id=resource,
        beat=beat,
        flower=flower,
        seed=seed,
        threads=threads,
        drain_timeout_s=drain_timeout,
        turn_delay_ms=turn_delay_ms,
        keep=keep,
    )
    hooks = demo_module.DemoHooks() if json_output else demo_render.rich_hooks(stderr_console())
    try:
        with shutdown_on_signals():
            report = demo_module.run_demo(cli_settings(), options, hooks)
            raise_if_shutdown_requested()  # a signal whose exception Python swallowed
    except (KeyboardInterrupt, ShutdownRequested):
        stderr_console().print("interrupted; every process the demo started was stopped")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_output:
        emit_json(report.as_dict())
    else:
        demo_render.render_report(report, stdout_console())
    if not report.as_dict()["ok"]:
        raise typer.Exit(EXIT_FAILURE)


def _exec_celery(command: str, args: list[str], json_output: bool) -> NoReturn:
    from memory_engine.tooling.services import Services, celery_argv, service_root

    services = Services(cli_settings())
    argv = celery_argv(command, *args)
    env = services.child_env()
    if json_output:
        emit_json({"ok": True, "exec": argv, "cwd": str(service_root())}, line=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(service_root())
    os.execve(argv[0], argv, env)


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@services_app.command(context_settings=_PASSTHROUGH)
@handled
def worker(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Exec `celery -A worker worker` on every engine queue; extra arguments are passed on."""
    from memory_engine.tooling.services import worker_args

    _exec_celery("worker", [*worker_args(loglevel="INFO"), *ctx.args], json_output)


@services_app.command(context_settings=_PASSTHROUGH)
@handled
def beat(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Exec `celery -A worker beat` (RedBeat scheduler); extra arguments are passed on."""
    _exec_celery("beat", ["-S", "redbeat.RedBeatScheduler", *ctx.args], json_output)


@services_app.command(context_settings=_PASSTHROUGH)
@handled
def flower(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Exec `celery -A worker flower` (auth from MEMORY_FLOWER_*); extra arguments passed on."""
    port = cli_settings().flower_port
    args = (
        ctx.args if any(a.startswith("--port") for a in ctx.args) else [f"--port={port}", *ctx.args]
    )
    _exec_celery("flower", args, json_output)
