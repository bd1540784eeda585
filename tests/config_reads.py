"""Which fields of an experiment config the code reads while it runs.

`record_reads(config)` patches `ml_collections.ConfigDict` for the duration of a
`with` block so that every field looked up by name (`config.train.seed`,
`config.data["seq_len"]`, `config.train.get("distributed")`) below `config` is
recorded by its dotted path. Bulk copies (`to_dict`, `items`, `values`, `repr`,
equality, JSON) are not reads: the run writes `config.json` with them, and a field
that is only ever copied is a knob that does nothing. The engine completes the
train block with its defaults (`rnnreg_jax.train.config.with_defaults`); the copy
it makes is tracked under the same path.
"""

from __future__ import annotations

import contextlib
import functools

import ml_collections

# Reads by bulk methods: writing config.json and logging the config are not reads.
_BULK_METHODS = ("to_dict", "items", "iteritems", "values", "__repr__", "__str__", "__eq__",
                 "copy_and_resolve_references", "to_json", "to_json_best_effort",
                 "__deepcopy__")
# Modules that import `with_defaults` by name.
_WITH_DEFAULTS_USERS = ("rnnreg_jax.train.loop", "rnnreg_jax.train.evaluation",
                        "rnnreg_jax.train.optim")


def leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
    """The dotted paths of every non-ConfigDict field of `config`."""
    out = set()
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            out |= leaf_paths(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


@contextlib.contextmanager
def record_reads(config: ml_collections.ConfigDict):
    """Yields a set that fills with the dotted paths of the fields read in the block."""
    import importlib

    cls = ml_collections.ConfigDict
    reads: set[str] = set()
    prefixes: dict[int, str] = {}
    keep_alive: list = []  # ids stay unique while the objects live
    state = {"bulk": 0}

    def track(node, prefix: str) -> None:
        prefixes[id(node)] = prefix
        keep_alive.append(node)

    def register(node, prefix: str) -> None:
        track(node, prefix)
        state["bulk"] += 1
        try:
            for key in node.keys():
                value = node[key]
                if isinstance(value, cls):
                    register(value, f"{prefix}{key}.")
        finally:
            state["bulk"] -= 1

    original_getitem = cls.__getitem__

    def getitem(self, key):
        value = original_getitem(self, key)
        prefix = prefixes.get(id(self))
        if prefix is not None and not state["bulk"] and isinstance(key, str):
            if isinstance(value, cls):
                if id(value) not in prefixes:
                    track(value, f"{prefix}{key}.")
            else:
                reads.add(f"{prefix}{key}")
        return value

    def bulk(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            state["bulk"] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                state["bulk"] -= 1
        return wrapper

    originals = {name: cls.__dict__[name] for name in _BULK_METHODS if name in cls.__dict__}
    modules = [importlib.import_module(name) for name in _WITH_DEFAULTS_USERS]
    original_defaults = {m: m.with_defaults for m in modules}

    def defaults_wrapper(original):
        @functools.wraps(original)
        def with_defaults(train_config):
            state["bulk"] += 1
            try:
                merged = original(train_config)
            finally:
                state["bulk"] -= 1
            prefix = prefixes.get(id(train_config))
            if prefix is not None:
                track(merged, prefix)
            return merged
        return with_defaults

    register(config, "")
    cls.__getitem__ = getitem
    for name, method in originals.items():
        setattr(cls, name, bulk(method))
    for module, original in original_defaults.items():
        module.with_defaults = defaults_wrapper(original)
    try:
        yield reads
    finally:
        cls.__getitem__ = original_getitem
        for name, method in originals.items():
            setattr(cls, name, method)
        for module, original in original_defaults.items():
            module.with_defaults = original
