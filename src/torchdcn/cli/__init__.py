"""The ``torchdcn`` command line: the top layer, which imports from every other one.

- :mod:`.main`: the parser, ``main()`` and one function per command (``train``, ``eval``, ``demo``).
- :mod:`.options`: each command's options as a table, config-file reading and value checks.
- :mod:`.demo`: the ``make demo`` job (plain / v1 / v2 CNNs on distorted MNIST).
"""

from .main import (
    COMMANDS,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    build_parser,
    main,
    read_config_file,
    resolve_settings,
)

__all__ = [
    "COMMANDS",
    "EXIT_FAILURE",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "read_config_file",
    "resolve_settings",
]
