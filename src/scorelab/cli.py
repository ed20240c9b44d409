"""`scorelab` command line. Each sub-command lives in scorelab/commands/<name>.py with `register(subparsers)`.

Bad input exits 2 with a one-line message, never a traceback."""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = ["data", "fit", "train", "sample", "schedule", "restore", "diagnose", "metrics", "report", "bench"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `scorelab sample: error: ... (see scorelab sample --help)`, exit 2.
    Sub-parsers are made by the parent's class, so every sub-command gets it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scorelab",
        description="Score functions of diffusion models: analytic denoisers, fast samplers, teleportation, "
                    "CPU-trained networks, diagnostics and metrics.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"scorelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            mod = import_module(f"scorelab.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"scorelab.commands.{name}":
                continue  # sub-command not part of this installation
            raise
        mod.register(sub)
    return parser


class CLIError(Exception):
    """Raised by commands for bad input: printed as one line, exit status 2."""


def _warning_line(command: str):
    """warnings.showwarning printing one line, `scorelab COMMAND: warning: ...` (no file name, no source line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"scorelab {command}: warning: {text[0] if text else category.__name__}", file=sys.stderr)
    return show


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:    # every sub-command's --device, checked before any work
            from .commands import check_device

            check_device(args.device)
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            status = args.func(args)
    except KeyboardInterrupt:
        print("scorelab: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"scorelab {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:   # under torchrun: leave the process group cleanly (exiting with it alive can abort the process)
        if "scorelab.distributed" in sys.modules:
            sys.modules["scorelab.distributed"].close()
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
