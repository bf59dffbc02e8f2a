"""The ``anogen`` command: wires one module per command and turns library errors into exit codes.

Exit codes: 0 ok, 1 runtime error, 2 usage or bad input. A known failure prints one line (and a hint);
``--debug`` or ``ANOGEN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from anogen import __version__
from anogen.cli import data as data_cmd
from anogen.cli import demo as demo_cmd
from anogen.cli import env as env_cmd
from anogen.cli import eval as eval_cmd
from anogen.cli import export as export_cmd
from anogen.cli import fit as fit_cmd
from anogen.cli import mask as mask_cmd
from anogen.cli import presets as presets_cmd
from anogen.cli import prior as prior_cmd
from anogen.cli import report as report_cmd
from anogen.cli import synth as synth_cmd
from anogen.cli import toy as toy_cmd
from anogen.cli import verify as verify_cmd
from anogen.cli._output import Output
from anogen.errors import AnogenError


def _debug_enabled(ctx: typer.Context) -> bool:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    return bool(obj.get("debug")) or os.environ.get("ANOGEN_DEBUG", "") not in ("", "0")


class AnogenGroup(TyperGroup):
    """Catches library errors once, for every subcommand, so commands stay thin."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AnogenError as exc:
            if _debug_enabled(ctx):
                raise
            Output().error(_escape(str(exc)), hint=_escape(exc.hint) if exc.hint else None)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            Output().error("interrupted; finished files are kept and a rerun resumes")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.TyperException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors become a message
            if _debug_enabled(ctx):
                raise
            Output().error(
                _escape(f"unexpected {type(exc).__name__}: {exc}"),
                hint="rerun with --debug (or ANOGEN_DEBUG=1) for the traceback, and report it",
            )
            raise typer.Exit(1) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


app = typer.Typer(
    name="anogen",
    cls=AnogenGroup,
    help="Few-shot anomaly image generation: learn each defect type from a few photos, "
    "generate thousands of realistic anomalies with pixel-accurate masks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"anogen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for torch (default: the cores this process may use - affinity and cgroup quota - "
            "shared by the processes launched together; ANOGEN_THREADS, then OMP_NUM_THREADS, if set).",
        ),
    ] = None,
) -> None:
    ctx.obj = {"debug": debug}
    from anogen.threads import apply_thread_policy

    # Here, before any command imports torch: the OpenMP runtime reads its variables once, when torch loads.
    ctx.obj["threads"] = apply_thread_policy(threads)


app.command("env", help=env_cmd.__doc__, epilog=env_cmd.EPILOG)(env_cmd.env)
app.command("demo", epilog=demo_cmd.EPILOG)(demo_cmd.demo)
app.add_typer(presets_cmd.app, name="presets")
app.add_typer(toy_cmd.app, name="toy")
app.add_typer(data_cmd.app, name="data")
app.command("eval", epilog=eval_cmd.EPILOG)(eval_cmd.eval_command)
app.command("export", epilog=export_cmd.EPILOG)(export_cmd.export_command)
app.command("fit", epilog=fit_cmd.EPILOG)(fit_cmd.fit_command)
app.command("report", epilog=report_cmd.EPILOG)(report_cmd.report_command)
app.command("prior", epilog=prior_cmd.EPILOG)(prior_cmd.prior)
app.command("synth", epilog=synth_cmd.EPILOG)(synth_cmd.synth_command)
app.command("mask", epilog=mask_cmd.EPILOG)(mask_cmd.mask_command)
app.command("verify", epilog=verify_cmd.EPILOG)(verify_cmd.verify_command)


def main() -> None:
    app(prog_name="anogen")


if __name__ == "__main__":
    main()
    sys.exit(0)
