"""Typed config values: the schema of a config node with a `_target_` is its target's signature.

A net, task, regulariser, data module, callback, metric, optimizer or trainer is configured by a node whose
`_target_` names a class (or a function); the class's constructor says which keys it takes and, in its type
annotations (`inspect.signature` + `typing.get_type_hints`), what each value must be. `check_targets` holds every
such node of a composed config to that, before anything is built: a key the constructor does not take (and no
`**kwargs` of it does) and a value of the wrong type are refused in one paragraph naming the key, the value and the
type. So a new option, or a user's own class, is checked by being annotated, with no list to edit.

What an annotation says (`conforms`): `bool` a real boolean (true/false: Hydra reads `no`, `off`, `maybe` as
strings, and they are refused), `int` a whole number (not a bool, not a float), `float` any number, `str` a string
(a number is not: quote it), `X | None`, `Literal[...]`, `list[int]` / `Sequence[int]` / `tuple[...]` (a list),
`dict[K, V]`, unions of these; `Callable`, `Any`, a missing annotation and a class no config value can be (a Tensor)
are not checked. `Annotated[T, Ge(1)]` adds a bound the type cannot say (`PositiveInt`, `Channels` below), checked
here as well, before the run folder is made; a check that needs several values stays in the constructor.

The primary config's own keys (iterations, seed, chunk, ...) have no constructor: config/validate.py types them in
a dataclass, checked by `check_fields` with the same annotations.

A constructor's `**kwargs` passed on to `super().__init__(...)` (the tasks' `*args, **kwargs`) stands for the base
class's parameters, followed up the MRO; any other `**kwargs` takes any key, each value checked against its
annotation (the data module's `**extras`). A node under a `_recursive_: false` node is built by its parent's own
code and is not checked here (task=physics: deepinv's classes, whose errors tasks/physics.py explains). A `_target_`
that cannot be imported is left to `build`, which reports it.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import enum
import functools
import inspect
import math
import os
import pathlib
import textwrap
import types
import typing
from typing import Annotated, Any, Callable, Literal, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import DIPError


# ----------------------------------------------------------------------------------------------- bounds (metadata)
@dataclasses.dataclass(frozen=True)
class Ge:
    """A finite number >= bound."""

    bound: float

    def __call__(self, v: Any) -> bool:
        return _finite(v) and v >= self.bound

    def says(self) -> str:
        return f">= {self.bound:g}"


@dataclasses.dataclass(frozen=True)
class Gt:
    """A finite number > bound."""

    bound: float

    def __call__(self, v: Any) -> bool:
        return _finite(v) and v > self.bound

    def says(self) -> str:
        return f"> {self.bound:g}"


@dataclasses.dataclass(frozen=True)
class Le:
    """A finite number <= bound."""

    bound: float

    def __call__(self, v: Any) -> bool:
        return _finite(v) and v <= self.bound

    def says(self) -> str:
        return f"<= {self.bound:g}"


@dataclasses.dataclass(frozen=True)
class Len:
    """A list of `min` to `max` items (max None: no limit)."""

    min: int = 0
    max: int | None = None

    def __call__(self, v: Any) -> bool:
        return self.min <= len(v) and (self.max is None or len(v) <= self.max)


@dataclasses.dataclass(frozen=True)
class Check:
    """Any other rule on one value: `test(value)`, and what it expects in words."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, v: Any) -> bool:
        return bool(self.test(v))

    def says(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Says:
    """What is expected, in words, in place of what the annotation would say (an example, the unit)."""

    text: str


PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
#: channel counts, one per scale
Channels = Annotated[Sequence[PositiveInt], Len(1)]


# ------------------------------------------------------------------------------------------- what a type accepts
_NONE = type(None)
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _finite(v: Any) -> bool:
    return isinstance(v, int) or math.isfinite(v)  # a Python int is finite however large (math.isfinite overflows)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def conforms(value: Any, tp: Any) -> bool:
    """Whether a plain config value (None, bool, int, float, str, list, dict) is one of type `tp`."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.ForwardRef, typing.TypeVar)):
        return True
    if isinstance(value, dict) and "_target_" in value:  # a node Hydra builds into an object (in a list)
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return conforms(value, args[0]) and all(m(value) for m in args[1:] if callable(m))
    if _is_union(tp):
        return any(conforms(value, a) for a in args)
    if tp is None or tp is _NONE:
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_int(value)
    if tp is float or tp is complex:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin in _SEQUENCES or tp in _SEQUENCES:
        return isinstance(value, (list, tuple)) and (not args or all(conforms(v, args[0]) for v in value))
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if not isinstance(value, dict):
            return False
        if len(args) != 2:
            return True
        return all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if origin is collections.abc.Callable or tp is collections.abc.Callable or origin is type or tp is type:
        return True  # a function or class: given by name, found when built
    if inspect.isclass(tp):
        if issubclass(tp, enum.Enum):
            return isinstance(value, tp) or (isinstance(value, str) and value in tp.__members__)
        if isinstance(value, str) and (issubclass(tp, pathlib.PurePath) or tp is os.PathLike):
            return True
        return isinstance(value, tp)
    return True  # a typing construct not known here: not checked


def _from_config(tp: Any) -> bool:
    """Whether a config value can be of type `tp` at all (a Tensor or a Lightning Accelerator cannot)."""
    if inspect.isclass(tp) and typing.get_origin(tp) is None:
        return tp in (bool, int, float, str, _NONE, list, tuple, dict) or issubclass(tp, (enum.Enum, pathlib.PurePath))
    return True


def _members(tp: Any) -> list[Any]:
    """A union's members, flattened; anything else as itself."""
    if _is_union(tp):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _bases(tp: Any) -> list[Any]:
    """A union's members, flattened, each without its Annotated metadata; anything else as itself."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if _is_union(tp):
        return [m for a in typing.get_args(tp) for m in _bases(a)]
    return [tp]


def describe(tp: Any, plural: bool = False) -> str:
    """What values of type `tp` are, in words: 'a whole number >= 1', 'a non-empty list of whole numbers >= 1'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        said = [m.text for m in args[1:] if isinstance(m, Says)]
        if said:
            return said[0]
        bounds = " ".join(m.says() for m in args[1:] if hasattr(m, "says"))
        length = next((m for m in args[1:] if isinstance(m, Len)), None)
        if length is not None and _is_list_type(args[0]):
            base = _list_words(args[0], plural, length)
        else:
            base = describe(args[0], plural)
        return f"{base} {bounds}" if bounds else base
    if _is_union(tp):
        members = _members(tp)
        shown = [m for m in members if _from_config(m)] or members
        nullable = _NONE in shown
        words: list[str] = []
        for m in shown:
            if m is not _NONE and describe(m, plural) not in words:
                words.append(describe(m, plural))
        if nullable:
            words.append("null")
        return " or ".join(words)
    if tp is _NONE or tp is None:
        return "null"
    if origin is Literal:
        listed = ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
        return ("values among " if plural else "one of ") + listed
    if tp is bool:
        return "booleans (true or false)" if plural else "true or false (a boolean)"
    if tp is int:
        return "whole numbers" if plural else "a whole number"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if _is_list_type(tp):
        return _list_words(tp, plural)
    if origin in _MAPPINGS or tp in _MAPPINGS:
        inner = f" of {describe(args[0], True)} to {describe(args[1], True)}" if len(args) == 2 else ""
        return f"{'mappings' if plural else 'a mapping'}{inner}"
    name = getattr(tp, "__name__", str(tp))
    return f"{name} objects" if plural else f"a {name}"


def _is_list_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is tuple or tp is tuple or origin in _SEQUENCES or tp in _SEQUENCES


def _list_words(tp: Any, plural: bool, length: Len | None = None) -> str:
    """'a list of whole numbers', 'a non-empty list of ...', 'a list of 2 values [a number, a number]'."""
    args = typing.get_args(tp)
    lists = "lists" if plural else "a list"
    if typing.get_origin(tp) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return f"{lists} of {len(args)} values [{', '.join(describe(a) for a in args)}]"
    if length is not None and length.min == 1 and length.max is None:
        lists = "non-empty lists" if plural else "a non-empty list"
    items = describe(args[0], plural=True) if args else "values"
    if length is not None and length.min == length.max:
        return f"{lists} of {length.min} {items}"
    if length is not None and length.max is not None:
        return f"{lists} of {length.min} to {length.max} {items}"
    return f"{lists} of {items}" if args or length is not None else lists


# ------------------------------------------------------------------------------------------ a target's parameters
@dataclasses.dataclass(frozen=True)
class Schema:
    """What a target takes: its name, each keyword parameter's annotation (Any: none), and, where a `**kwargs` takes
    any other key, that annotation (`rest`; None: no other key is taken)."""

    name: str
    params: dict[str, Any]
    rest: Any = None


def _hints(func: Any) -> dict[str, Any]:
    """`func`'s annotations as types; one that does not resolve (a name only a type checker sees) is left out."""
    func = inspect.unwrap(func)
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:
        pass
    out = {}
    namespace = getattr(func, "__globals__", {})
    for name, annotation in getattr(func, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # as get_type_hints does, one annotation at a time
            except Exception:
                continue
        out[name] = annotation
    return out


def _passes_on(init: Any, kwargs: str) -> bool:
    """Whether `init` passes its `**kwargs` on to `super().__init__(...)`: read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(init))))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
            and isinstance(node.func.value, ast.Call)
            and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "super"
            and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwargs for k in node.keywords)
        ):
            return True
    return False


def _signature_of(func: Any) -> tuple[dict[str, Any], str | None, Any]:
    """(keyword parameters -> annotation, the name of its **kwargs or None, that one's annotation) of a function."""
    hints = _hints(func)
    params: dict[str, Any] = {}
    kwargs = None
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            kwargs = p.name
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = hints.get(p.name, Any)
    return params, kwargs, hints.get(kwargs, Any) if kwargs else None


@functools.lru_cache(maxsize=None)
def schema_of(target: str) -> Schema | None:
    """The Schema of the class or function `target` names; None where it cannot be imported or has no signature
    (`build` then reports what is wrong)."""
    try:
        from hydra.utils import get_object

        obj = get_object(target)
    except Exception:
        return None
    try:
        if not inspect.isclass(obj):
            params, _, rest = _signature_of(obj)
            return Schema(getattr(obj, "__qualname__", target), params, rest)
        params: dict[str, Any] = {}
        for klass in obj.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            if klass is object:
                break
            own, kwargs, rest = _signature_of(init)
            own.pop(next(iter(inspect.signature(init).parameters), "self"), None)  # self
            for name, annotation in own.items():
                params.setdefault(name, annotation)
            if kwargs is None:
                break
            if not _passes_on(init, kwargs):  # a **kwargs that takes any key (the data module's extras)
                return Schema(obj.__qualname__, params, rest)
        return Schema(obj.__qualname__, params)
    except (TypeError, ValueError):  # a builtin or extension type: no signature to read
        return None


# ------------------------------------------------------------------------------------------------- the checking
# Keys whose null the run fills in, by the top-level group: net.output_channels (the image's channels).
NULL_FILLED = {"net": ("output_channels",)}
# Keys the run passes itself, by the top-level group (no setting of the config: left out of the keys a refusal lists)
PASSED_BY_RUN = {
    "task": ("net", "optimizer", "speed"),
    "optimizer": ("params",),
    "trainer": ("callbacks", "logger", "default_root_dir"),
}
# hydra: Hydra's own settings, not a run's. logger: Lightning's and W&B's loggers take **kwargs and annotate with
# names that do not resolve outside a type checker; run/loggers.py builds them and names what is wrong with one.
UNCHECKED_GROUPS = ("hydra", "logger")
_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
_BOOLEAN_WORDS = {"yes": "true", "on": "true", "y": "true", "no": "false", "off": "false", "n": "false"}


def show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def refusal(where: str, value: Any, tp: Any, owner: str | None = None) -> DIPError:
    """The one-paragraph error for `where`=`value`, not of type `tp` (`owner`: "Skip's need_sigmoid")."""
    hint = ""
    members = _bases(tp)
    words = [a for m in members if typing.get_origin(m) is Literal for a in typing.get_args(m)]
    text = str in members or any(isinstance(a, str) for a in words)
    numbers = any(m in (int, float) for m in members)
    if isinstance(value, str) and bool in members and not text:
        word = _BOOLEAN_WORDS.get(value.strip().lower())
        hint = f": {value!r} is a string, not a boolean" + (f"; write {where}={word}" if word else "")
    elif isinstance(value, str) and numbers and not text:
        hint = f": {value!r} is a string, not a number"
    elif _is_number(value) and str in members and not numbers:
        hint = f"; a name that Hydra reads as a number is quoted: \"{where}='{value}'\""
    elif isinstance(value, float) and int in members and float not in members:
        hint = "; a float is not taken for a whole number"
    owner = f" for {owner}" if owner else ""
    return DIPError(f"{where}={show(value)} is not valid; expected {describe(tp)}{owner}{hint}.")


def check_value(where: str, value: Any, tp: Any, owner: str | None = None) -> None:
    """Raise the refusal unless `value` (a plain value or a config node) is of type `tp`."""
    try:
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception as err:  # an interpolation inside it that does not resolve, a missing value
        raise unreadable(where, err, tp) from None
    if not conforms(plain, tp):
        raise refusal(where, plain, tp, owner)


def unreadable(where: str, err: Exception, tp: Any) -> DIPError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__  # OmegaConf's own lines add full_key: ...
    return DIPError(f"{where} could not be read from the config ({first}); expected {describe(tp)}.")


def _read(node: DictConfig, key: Any, where: str, tp: Any) -> Any:
    """node[key], resolved; a DIPError where it does not resolve or is missing (???)."""
    if OmegaConf.is_missing(node, key):
        raise DIPError(f"{where} is ??? (a value that must be given) in the config; expected {describe(tp)}.")
    try:
        return node[key]
    except Exception as err:  # an interpolation that does not resolve
        raise unreadable(where, err, tp) from None


def check_fields(node: DictConfig, kind: type, where: str = "") -> None:
    """The keys of `node` that the dataclass `kind` annotates, each against its annotation; a field whose type is a
    dataclass again is a sub-node. A key `kind` lacks is not refused here (config/validate.py's check_keys does
    that for the top level)."""
    hints = typing.get_type_hints(kind, include_extras=True)
    for f in dataclasses.fields(kind):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in node.keys():  # (`in node` is false for a missing value, ???)
            continue
        tp = hints[f.name]
        value = _read(node, f.name, key, tp)
        if dataclasses.is_dataclass(tp):
            if isinstance(value, DictConfig):
                check_fields(value, tp, key)
            continue
        check_value(key, value, tp)


def check_node(node: DictConfig, where: str, filled: Sequence[str] = (), passed: Sequence[str] = ()) -> None:
    """A node with a `_target_`: every key is one its target takes, every value of the annotated type; nodes with a
    `_target_` inside it are checked the same way (not under `_recursive_: false`, not through an interpolation:
    such a node is checked where it is written)."""
    schema = schema_of(str(node["_target_"]))
    if schema is None:
        return
    recursive = node.get("_recursive_", True) is not False
    for key in node.keys():
        if key in _HYDRA_KEYS:
            continue
        at = f"{where}.{key}"
        if key in schema.params:
            tp = schema.params[key]
        elif schema.rest is not None:
            tp = schema.rest
        else:
            raise unknown_key(at, node, key, schema, passed)
        value = _read(node, key, at, tp)
        if value is None and (key in filled or key in passed):
            continue
        if isinstance(value, DictConfig) and "_target_" in value:
            if recursive and not OmegaConf.is_interpolation(node, key):
                check_node(value, at)
            continue
        check_value(at, value, tp, f"{schema.name}'s {key}")
        if recursive and isinstance(value, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(node, key):
            check_targets_in(value, at)


def unknown_key(at: str, node: DictConfig, key: Any, schema: Schema, passed: Sequence[str]) -> DIPError:
    takes = [k for k in schema.params if k not in passed]
    close = difflib.get_close_matches(str(key), takes, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    try:
        value = node[key]
    except Exception:  # an interpolation that does not resolve: named without its value
        value = None
    shown = f"{at}={show(value)}" if value is not None and not OmegaConf.is_config(value) else at
    return DIPError(
        f"{shown}: {key} is not a setting of {schema.name} ({node['_target_']}), so it would change nothing or fail "
        f"when built; {guess}{schema.name} takes {', '.join(takes) or 'no settings'}."
    )


def check_targets_in(node: Any, where: str) -> None:
    """Every node with a `_target_` inside `node` (a dict or list node without one)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            check_node(node, where, NULL_FILLED.get(where, ()), PASSED_BY_RUN.get(where, ()))
            return
        items = [(k, f"{where}.{k}" if where else str(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(i, f"{where}.{i}") for i in range(len(node))]
    else:
        return
    for key, at in items:
        if where == "" and key in UNCHECKED_GROUPS:
            continue
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            check_targets_in(child, at)


def check_targets(cfg: DictConfig) -> None:
    """Every node of the composed config with a `_target_`, against its target's signature (the module's
    docstring); the first problem is raised as a DIPError."""
    check_targets_in(cfg, "")
