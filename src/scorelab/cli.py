"""`scorelab` command line. Each sub-command lives in scorelab/commands/<name>.py with `register(subparsers)`.

Bad input exits 2 with a one-line message, never a traceback."""
from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = ["data", "fit", "train", "sample", "restore", "diagnose", "metrics", "report", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:    # every sub-command's --device, checked before any work
            from .commands import check_device

            check_device(args.device)
        status = args.func(args)
    except KeyboardInterrupt:
        print("scorelab: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"scorelab {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
