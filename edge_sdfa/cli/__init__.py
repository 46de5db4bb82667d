"""The ``edge-sdfa`` command: a thin layer over library functions.

Each command group lives in a module with a ``register(app)`` function. The device's own groups
(``runtime``, ``data``) are here; host, bridge and simulator groups are registered by their own
packages through the ``edge_sdfa.commands`` entry-point group (``edge_sdfa.plugins``), so this
package imports none of them and a device install lists none of their commands.
"""
from __future__ import annotations

import importlib
import sys

import typer

from edge_sdfa import plugins
from edge_sdfa.errors import UserError, os_error_message

COMMAND_MODULES = ("runtime", "data", "predict")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="edge-sdfa",
        help="On-device SNN personalisation with int8 Spiking Direct Feedback Alignment.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                           help="print the version, bundle format and runtime ABI, then exit")):
        """On-device SNN personalisation with int8 Spiking Direct Feedback Alignment."""

    for name in COMMAND_MODULES:
        importlib.import_module(f"edge_sdfa.cli.{name}").register(app)
    for name, ep in sorted(plugins.entry_points(plugins.COMMANDS).items()):
        try:
            register = plugins.load_object(ep.value)
        except ImportError as exc:  # a plug-in whose own dependencies are missing: skip it, say why
            print(f"warning: command group {name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(app)
    return app


def _print_version(value: bool) -> None:
    if not value:
        return
    from edge_sdfa import __version__
    from edge_sdfa.manifest import FORMAT_VERSION, RUNTIME_ABI

    print(f"edge-sdfa {__version__} (bundle format {FORMAT_VERSION}, runtime ABI {RUNTIME_ABI})")
    raise typer.Exit(0)


def main(argv: list[str] | None = None) -> None:
    command = typer.main.get_command(build_app())
    try:
        command.main(args=argv, prog_name="edge-sdfa", standalone_mode=False)
    except UserError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"no such file: {exc.filename}" if exc.filename else os_error_message(exc))
    except OSError as exc:  # read-only or full disk, permissions, a vanished port: the user's to fix
        _fail(os_error_message(exc))
    except MemoryError:
        _fail("out of memory; use smaller inputs (see docs/limits.md) or free memory")
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Typer vendors click in recent releases and uses click itself in older ones, so the
        # exception classes are matched by shape, not by import.
        name = type(exc).__name__
        if name == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if name == "Abort":
            _fail("aborted")
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(exc.format_message().replace("\n", " ") + where)
        raise


def _fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)
