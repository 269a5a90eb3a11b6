"""Small argument checks shared by the op families; each family has one validation helper built
from these, so every error names the argument, the shape received and the shape expected.
:func:`real_scalar` is the rule for scalar arguments: the ops', the RoI modules', the detectors'
inputs and post-processing, the box coder's and the analysis tools' (the sampler, matcher,
anchors, losses and the engine's configs keep checks of their own)."""

from __future__ import annotations

import contextlib
import math
import numbers
import reprlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def real_scalar(
    value: object,
    name: str,
    *,
    integral: bool = False,
    integer_floats: bool = False,
    finite: bool = True,
    tensor: bool = True,
    wanted: str | None = None,
) -> float | int:
    """``value`` checked as one real number, returned as a Python number: the rule of the scalar
    arguments (thresholds, scales, sizes, counts) of the ops and their modules, the detectors'
    inputs and post-processing and the analysis tools (see the module docstring).

    Accepted: a Python or NumPy real number, or (``tensor``) a 0-d real tensor that does not
    require grad, read with ``.item()``. ``integral``: an integer is wanted (Python or NumPy
    int, 0-d integer tensor); ``integer_floats`` also takes a float holding an integer
    (``480.0``, a 0-d float tensor of one).

    ``TypeError`` (wrong kind): a bool (Python, NumPy or tensor: surely a mistake), a complex
    number, a str or any other object, a tensor that is not 0-d and real (or any tensor unless
    ``tensor``), a 0-d tensor that requires grad (no gradient reaches a scalar argument), and
    with ``integral`` a float (unless ``integer_floats``). ``ValueError`` (wrong value): NaN,
    infinity when ``finite``, and with ``integer_floats`` a float that is not an integer (2.5).
    Every message names ``name``, says what it got and what was ``wanted`` (the words after
    "must be"; default "a real number" / "an int"). Range checks ("positive", "in [0, 1]")
    stay with the callers.

    Returns an ``int`` when ``integral`` or ``value`` is an integer (integer arithmetic stays
    exact, e.g. clipping integer boxes), else a ``float``. Under ``torch.compile``: a symbolic
    ``SymInt`` / ``SymFloat`` (a float or int standing for every value of later calls) is
    returned unchecked, as there is no value to test (a ``SymFloat`` where an int is wanted is
    a ``TypeError`` unless ``integer_floats``); while ``torch.compiler.is_compiling()`` the
    kind is checked but not finiteness. Eager calls check everything.

    Example:
        >>> real_scalar(0.5, "spatial_scale"), real_scalar(torch.tensor(2), "sampling_ratio")
        (0.5, 2)
        >>> real_scalar(2.0, "sampling_ratio", integral=True)
        Traceback (most recent call last):
        ...
        TypeError: sampling_ratio must be an int, got float 2.0
    """
    strict_int = integral and not integer_floats
    if wanted is None:
        wanted = "an int" if integral else "a real number"
    if isinstance(value, torch.SymInt) or (isinstance(value, torch.SymFloat) and not strict_int):
        return value  # type: ignore[return-value]
    if isinstance(value, Tensor):
        kind = "integer" if strict_int else "real"
        shape = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        if not tensor:
            raise TypeError(f"{name} must be {wanted} (a Python or NumPy number), got {shape}")
        bad_dtype = value.dtype == torch.bool or value.is_complex()
        if value.dim() != 0 or bad_dtype or (strict_int and value.is_floating_point()):
            raise TypeError(f"{name} must be {wanted} or a 0-d {kind} tensor, got {shape}")
        if value.requires_grad:
            raise TypeError(
                f"{name} must not require grad (no gradient reaches it), got a 0-d tensor with "
                f"requires_grad=True; pass {name}.detach() or a Python number"
            )
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or (strict_int and not isinstance(value, numbers.Integral))
    ):
        raise TypeError(
            f"{name} must be {wanted}, got {type(value).__name__} {reprlib.repr(value)}"
        )
    if isinstance(value, numbers.Integral):
        return int(value)
    if not torch.compiler.is_compiling():  # traced values may be symbolic: no value to test
        number = float(value)
        if math.isnan(number):
            raise ValueError(f"{name} must be {'finite' if finite else 'a number'}, got nan")
        if finite and math.isinf(number):
            raise ValueError(f"{name} must be finite, got {number}")
    if integral:
        if not float(value).is_integer():
            raise ValueError(f"{name} must be {wanted}, got {value!r}, not an integer")
        return int(value)
    return float(value)


def pair(value: object, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``, ``(1,) -> (1, 1)``, as ``torch.nn.functional.conv2d``
    takes them: an integer scalar (int, NumPy integer, 0-d integer tensor: :func:`real_scalar`
    with ``integral``) or a sequence (or 1-D integer tensor) of one or two of them; anything
    else is a TypeError naming ``name``."""
    wanted = "an int or a pair of ints (or a sequence of one int, as conv2d takes)"
    if isinstance(value, Tensor) and value.dim() == 1:
        items = list(value.unbind())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
    else:
        single = real_scalar(value, name, integral=True, wanted=wanted)
        return single, single
    if len(items) in (1, 2):
        try:
            ints = [real_scalar(v, f"{name}[{i}]", integral=True) for i, v in enumerate(items)]
        except TypeError as error:
            raise TypeError(f"{name} must be {wanted}, got {value!r}; {error}") from error
        return ints[0], ints[-1]
    raise TypeError(f"{name} must be {wanted}, got {value!r}")


def script_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """TorchScript's :func:`pair` (an int or a pair of ints, no validation)."""
    if isinstance(value, int):
        return value, value
    return value


def check_tensor(t: object, name: str, ndim: int, layout: str) -> Tensor:
    """``t`` is a floating-point tensor with ``ndim`` dimensions (``layout`` describes them)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(
            f"{name} must be {ndim}-D with shape {layout}, got {t.dim()}-D shape {tuple(t.shape)}"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_same(reference: Tensor, ref_name: str, **others: Tensor | None) -> None:
    """Every tensor in ``others`` has ``reference``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(
                f"{name} is on {t.device} but {ref_name} is on {reference.device}; "
                "all tensors must be on one device"
            )
        if t.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {ref_name} has dtype {reference.dtype}; "
                "all tensors must share one dtype (cast them, or use torch.autocast)"
            )


def check_shape(t: Tensor, name: str, expected: Sequence[int], layout: str) -> None:
    """``t.shape == expected``; ``layout`` spells the expected shape symbolically."""
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(t.shape)}"
        )


def autocast_dtype(input: object) -> torch.dtype | None:
    """The autocast dtype in force for ``input``'s device, or None (also on devices, such as
    ``meta``, that have no autocast)."""
    if not isinstance(input, Tensor):
        return None
    try:
        enabled = torch.is_autocast_enabled(input.device.type)
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(input.device.type) if enabled else None


def autocast_off(input: Tensor) -> AbstractContextManager:
    """A context in which the kernels' own products are not recast by an enclosing autocast
    (a no-op when autocast is off for ``input``'s device, or that device has none)."""
    if autocast_dtype(input) is None:
        return nullcontext()
    return torch.autocast(input.device.type, enabled=False)


class CheckedByCaller:
    """A per-thread flag: inside :meth:`scope` a check the caller has just made is skipped by
    the code it calls (the RoI ops' value check of ``rois``, the detector heads' target check).

    ``scope()`` does nothing while ``torch.compile`` traces (the checks then run where the graph
    runs); the flag is restored on exit, also after an exception, and nests.

    Example:
        >>> checked = CheckedByCaller()
        >>> with checked.scope():
        ...     bool(checked)
        True
        >>> bool(checked)
        False
    """

    def __init__(self) -> None:
        self._state = threading.local()

    def __bool__(self) -> bool:
        return getattr(self._state, "on", False)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The block in which the flag is set (this thread only)."""
        if torch.compiler.is_compiling():
            yield
            return
        before = bool(self)
        self._state.on = True
        try:
            yield
        finally:
            self._state.on = before
