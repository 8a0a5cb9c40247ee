"""Which config keys the code reads while it runs (tests/test_layout.py's "every key is read").

OmegaConf has no access hook, so :class:`KeyRecorder` makes one: inside ``with recorder:``
the ways code reads a config node are wrapped and each key read is stored under its full
dotted name (``trainer.steps``, ``data.source.limit``, ``reg.vat.eps``); on leaving the block
every wrapped attribute is put back as it was.

What counts as a read:

- ``node.key``, ``node[key]``, ``node.get(key)``, ``getattr(node, key)`` on a ``DictConfig``
  (also ``dict(node)`` / ``{**node}``, which call ``node[key]`` for every key), and
  ``node.items()`` / ``node.values()`` (every child);
- ``OmegaConf.select(node, "a.b")``;
- ``OmegaConf.to_container(node)`` of a sub-tree (``cfg.optim``) gives dicts that record the
  keys read from them (:class:`RecordingDict`); ``OmegaConf.to_object(node)`` the same for
  dicts, and dataclass objects whose fields record their reads (:func:`_track_object`). A
  conversion of a whole config (a node without a parent: the checkpoint's and the resolved
  config's copy) reads nothing by itself;
- a node made by ``OmegaConf.merge(schema, node)`` (a regulariser's settings) keeps the name
  of the node it was merged from, so its reads are named ``reg.vat.eps``, not ``eps``.

Only reads made by the code under ``roots`` (the package) count, the immediate caller decides
(OmegaConf's and Hydra's own reads while composing or merging do not), and none made while a
function of ``ignore`` is on the stack (checking or recording a value is not using it).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import weakref
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_UNSET = object()


def resolve(dotted: str):
    """``"pkg.module.Class.function"`` -> the object (the longest importable module prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        if obj is not None:
            return obj
        break
    raise LookupError(f"{dotted} does not exist (moved or renamed? update the list naming it)")


class RecordingDict(dict):
    """A plain dict (what ``to_container`` returns) that records ``d[key]`` / ``d.get(key)``
    / ``items()`` / ``values()`` as reads of ``prefix + key``; ``only``: the keys that do (a
    dict merged from several sources, see :meth:`KeyRecorder.adopt`)."""

    def __init__(self, data, recorder: KeyRecorder, prefix: str, only=None):
        super().__init__(data)
        self._recorder, self._prefix, self._only = recorder, prefix, only

    def _note(self, keys, frame) -> None:
        keys = [k for k in keys if self._only is None or k in self._only]
        if keys and self._recorder.counts(frame):
            self._recorder.reads.update(f"{self._prefix}{k}" for k in keys)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self._note([key], sys._getframe(1))
        return value

    def get(self, key, default=None):
        if key in self:
            self._note([key], sys._getframe(1))
        return super().get(key, default)

    def items(self):
        self._note(list(self.keys()), sys._getframe(1))
        return super().items()

    def values(self):
        self._note(list(self.keys()), sys._getframe(1))
        return super().values()


class KeyRecorder:
    """Records the full keys of the config values read by code under ``roots``; a context
    manager (the wrappers exist only inside ``with``). ``ignore``: functions during which
    nothing counts; ``handoffs``: ``{dotted function: (argument, group)}``, see :meth:`adopt`.
    """

    def __init__(self, roots, ignore=(), handoffs=None):
        self.roots = tuple(str(Path(r).resolve()) + os.sep if Path(r).is_dir()
                           else str(Path(r).resolve()) for r in roots)
        self.ignore = {getattr(f, "__code__", f) for f in ignore}
        self.handoffs = dict(handoffs or {})
        self.reads: set[str] = set()
        self._aliases: dict[int, tuple[weakref.ref, str]] = {}
        self._converted: dict[str, dict] = {}
        self._saved: list[tuple[object, str, object]] = []

    # ------------------------------------------------------------------ who is reading
    def from_roots(self, frame) -> bool:
        return frame is not None and frame.f_code.co_filename.startswith(self.roots)

    def counts(self, frame) -> bool:
        """True when ``frame`` (the reader) is code under ``roots`` and no ignored function
        is on the stack."""
        if not self.from_roots(frame):
            return False
        while frame is not None:
            if frame.f_code in self.ignore:
                return False
            frame = frame.f_back
        return True

    # ------------------------------------------------------------------ naming
    def prefix(self, node) -> str:
        """The full key of ``node`` (``""`` for a root), through the merge aliases."""
        own = node._get_full_key(None)
        root = node._get_root()
        alias = self._aliases.get(id(root))
        if alias is not None and alias[0]() is root:
            return f"{alias[1]}.{own}" if own else alias[1]
        return own

    def full_key(self, node, key) -> str:
        base = self.prefix(node)
        return f"{base}.{key}" if base else str(key)

    def is_whole_config(self, node) -> bool:
        return isinstance(node, DictConfig) and self.prefix(node) == ""

    # ------------------------------------------------------------------ wrappers
    def _patch(self, owner, name: str, wrapper) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _UNSET)))
        setattr(owner, name, wrapper)

    def __enter__(self) -> KeyRecorder:
        rec = self
        get_attr, get_item = DictConfig.__getattr__, DictConfig.__getitem__
        get, items, values = DictConfig.get, DictConfig.items, DictConfig.values

        def key_reader(original):
            def read(node, key, *args, **kwargs):
                value = original(node, key, *args, **kwargs)
                frame = sys._getframe(1)
                if rec.counts(frame):
                    rec.reads.add(rec.full_key(node, key))
                return value
            return read

        def children_reader(original):
            def read(node):
                frame = sys._getframe(1)
                if rec.counts(frame):
                    rec.reads.update(rec.full_key(node, k) for k in node.keys())
                return original(node)
            return read

        select, to_container = OmegaConf.select, OmegaConf.to_container
        to_object, merge = OmegaConf.to_object, OmegaConf.merge

        def select_reader(cfg, key, *args, **kwargs):
            value = select(cfg, key, *args, **kwargs)
            if isinstance(cfg, DictConfig) and rec.counts(sys._getframe(1)):
                rec.reads.add(rec.full_key(cfg, key))
            return value

        def container_reader(cfg, *args, **kwargs):
            out = to_container(cfg, *args, **kwargs)
            if rec.is_whole_config(cfg) or not isinstance(cfg, DictConfig) \
                    or not rec.from_roots(sys._getframe(1)):
                return out
            group = rec.prefix(cfg)
            tracked = rec.track(out, group + ".")
            rec._converted[group] = tracked
            return tracked

        def object_reader(cfg, *args, **kwargs):
            out = to_object(cfg, *args, **kwargs)
            if rec.is_whole_config(cfg) or not isinstance(cfg, DictConfig) \
                    or not rec.from_roots(sys._getframe(1)):
                return out
            return rec.track(out, rec.prefix(cfg) + ".")

        def merge_namer(*configs):
            out = merge(*configs)
            if rec.from_roots(sys._getframe(1)):
                named = [rec.prefix(c) for c in configs if isinstance(c, DictConfig)]
                named = [n for n in named if n]
                if named and isinstance(out, DictConfig):
                    rec._aliases[id(out)] = (weakref.ref(out), named[-1])
            return out

        self._patch(DictConfig, "__getattr__", key_reader(get_attr))
        self._patch(DictConfig, "__getitem__", key_reader(get_item))
        self._patch(DictConfig, "get", key_reader(get))
        self._patch(DictConfig, "items", children_reader(items))
        self._patch(DictConfig, "values", children_reader(values))
        self._patch(OmegaConf, "select", staticmethod(select_reader))
        self._patch(OmegaConf, "to_container", staticmethod(container_reader))
        self._patch(OmegaConf, "to_object", staticmethod(object_reader))
        self._patch(OmegaConf, "merge", staticmethod(merge_namer))
        for dotted, (argument, group) in self.handoffs.items():
            self._patch_handoff(dotted, argument, group)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, old in reversed(self._saved):
            if old is _UNSET:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._saved.clear()

    # ------------------------------------------------------------------ converted values
    def track(self, value, prefix: str):
        """``to_container`` / ``to_object`` output whose reads are recorded: dicts become
        :class:`RecordingDict`, dataclass objects record their field reads; lists stay."""
        if isinstance(value, dict):
            return RecordingDict({k: self.track(v, f"{prefix}{k}.") for k, v in value.items()},
                                 self, prefix)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _track_object(value, self, prefix)
        return value

    def adopt(self, settings: dict, group: str) -> dict:
        """``settings`` as a :class:`RecordingDict` naming ``group.<key>`` for every value
        that is the very object the last ``to_container`` of ``group`` handed out (a dict
        merged from that container and other values, e.g. a method's optimiser overrides:
        those are not the group's and record nothing)."""
        source = self._converted.get(group)
        if source is None or isinstance(settings, RecordingDict):
            return settings
        ours = {k for k, v in settings.items() if k in source
                and dict.__getitem__(source, k) is v}
        return RecordingDict(settings, self, group + ".", only=ours)

    def _patch_handoff(self, dotted: str, argument: str, group: str) -> None:
        """Wrap the function ``dotted`` wherever a da_train module holds it, so its dict
        argument ``argument`` records reads as ``group.<key>`` (see :meth:`adopt`)."""
        import inspect

        original = resolve(dotted)
        signature = inspect.signature(original)
        rec = self

        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            if isinstance(bound.arguments.get(argument), dict):
                bound.arguments[argument] = rec.adopt(bound.arguments[argument], group)
            return original(*bound.args, **bound.kwargs)

        wrapper.__wrapped__ = original
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] != dotted.split(".")[0] or module is None:
                continue
            for attr, value in list(vars(module).items()):
                if value is original:
                    self._patch(module, attr, wrapper)


_TRACKED_CLASSES: dict[type, type] = {}


def _track_object(obj, recorder: KeyRecorder, prefix: str):
    """A dataclass object (``OmegaConf.to_object``) whose field reads are recorded as
    ``prefix + field``: its class is swapped for a subclass that notes each field read."""
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        tracked = recorder.track(value, f"{prefix}{f.name}.")
        if tracked is not value:
            object.__setattr__(obj, f.name, tracked)
    cls = type(obj)
    sub = _TRACKED_CLASSES.get(cls)
    if sub is None:
        names = frozenset(f.name for f in dataclasses.fields(cls))

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            if name in names:
                rec, pre = object.__getattribute__(self, "_key_access")
                if rec.counts(sys._getframe(1)):
                    rec.reads.add(pre + name)
            return value

        sub = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__,
                                          "__module__": cls.__module__})
        _TRACKED_CLASSES[cls] = sub
    object.__setattr__(obj, "__class__", sub)
    object.__setattr__(obj, "_key_access", (recorder, prefix))
    return obj


# ---------------------------------------------------------------------------- schemas
def leaf_keys(node, prefix: str = "") -> set[str]:
    """The dotted leaf keys of a (structured) config node; a list or a value is a leaf, an
    empty dict node has none."""
    keys = set()
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys |= leaf_keys(child, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


# ---------------------------------------------------------------------------- runs
def run_in_process(args: list[str]) -> int:
    """``da-train *args`` in this process (``da_train.cli.main``, what the console script
    calls); its exit code. The environment variables main() sets, the logging handlers and
    torch's thread count (set per job from ``trainer.threads``) are put back afterwards."""
    import logging

    import torch

    from da_train import cli, sweeps

    names = ("HYDRA_FULL_ERROR", sweeps.COMMAND_ENV, cli.MAIN_PID_ENV)
    env = {name: os.environ.get(name) for name in names}
    os.environ.pop("HYDRA_FULL_ERROR", None)  # as cli_helpers.da_train_env: da-train's errors
    root, threads, argv = logging.getLogger(), torch.get_num_threads(), sys.argv
    handlers, level = list(root.handlers), root.level
    sys.argv = ["da-train", *args]
    try:
        cli.main()
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
