"""The settings a command line resolves to, as the CLI tests check them."""

from __future__ import annotations

from typing import Any

from torchdcn import cli


def settings(argv: list[str]) -> dict[str, Any]:
    """``torchdcn ARGV``'s resolved settings (defaults, config file and flags), without running."""
    args = cli.build_parser().parse_args(argv)
    return cli.resolve_settings(args.command, args)
