"""The ``torchdcn`` command line: the top layer, which imports from every other one.

- :mod:`.main`: the parser, ``main()`` and one function per command (``train``, ``eval``,
  ``detect``, ``demo``).
- :mod:`.options`: each command's options as a table (rows: :mod:`.option`); :mod:`.settings`:
  config-file reading, preset defaults and value checks.
- :mod:`.presets`: the models ``--model`` names (``mnist_cnn``, ``faster_rcnn``,
  ``rpn_detector``) and rebuilding one from a checkpoint.
- :mod:`.detection`: COCO-style data, evaluation and the metrics table of the detectors;
  :mod:`.detect`: the ``detect`` command (PNGs and COCO results).
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
