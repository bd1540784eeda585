"""What the NNX recurrent modules share: options, modes, the dropout key, penalties and
the weight transfer to and from their linen twins.

Keys: a training call draws ONE key from the module's `dropout` stream (or takes the
call's `rngs=`) and derives every noise site's key from it exactly as the linen module
derives them from `apply(..., rngs={"dropout": key})` (`linen_key`), so the same key
gives the same masks in both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.core
import flax.linen
import flax.traverse_util
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core.scope import LazyRng

from rnnreg_jax import cells, nn, partitioning, precision, rnn
from rnnreg_jax.regularizers.base import Regularizer, check_regularizer
from rnnreg_jax.regularizers.checks import check_flag, check_key
from rnnreg_jax.shown import shown
from rnnreg_jax.unroll_checks import check_forget_bias

# The recurrent options (`nn.OPTION_FIELDS`) the NNX modules implement: all of them
# today. An option the linen modules gain later is refused here at any value but its
# default until it is added (and implemented) here too, never silently ignored.
SUPPORTED_OPTIONS = ("cell", "reg", "init_scale", "unroll", "implementation",
                     "bn_max_steps", "bn_momentum", "recurrent_bias", "forget_bias",
                     "orthogonal_init", "dtype", "param_dtype", "param_axes")

NO_STREAM = ("Training mode (deterministic=False) with noise regularizers needs a dropout "
             "PRNG key: construct with rngs=nnx.Rngs(params=0, dropout=1), call with "
             "rngs=key, or call .eval().")


def linen_key(key: jax.Array, *path: str, draw: int = 1) -> jax.Array:
    """The key a linen module at `path` (its names from the root, `()` for the root)
    gets from its `draw`-th `make_rng("dropout")` (1: the first) under
    `apply(..., rngs={"dropout": key})`.
    """
    check_key(key, required=True)  # None or an int array failed inside jax
    for name in path:
        if not isinstance(name, str):
            raise ValueError(f"Each name of the path must be a module name (a str), got "
                             f"{shown(name)}.")
    cells.check_size(draw, "draw")  # 1: the first make_rng; 0 named no draw at all
    return LazyRng.create(key, *path, draw).as_jax_rng()


def get_value(variable: nnx.Variable) -> Any:
    """A variable's value, also a pytree's (`get_value` in later flax 0.12 releases,
    which deprecate `.value`; flax 0.12.0 has `.value` only)."""
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def set_value(variable: nnx.Variable, value: Any) -> None:
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value


def dropout_stream(rngs: Any) -> nnx.RngStream | None:
    """A module's own `dropout` stream, forked from the constructor's `rngs` as
    `nnx.Dropout` does (its `default` stream if it has no `dropout`), or None."""
    if not isinstance(rngs, nnx.Rngs):
        raise ValueError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}.")
    return rngs["dropout"].fork() if has_dropout(rngs) else nnx.data(None)


def has_dropout(rngs: nnx.Rngs) -> bool:
    """Whether `rngs["dropout"]` is a stream (its own, or the `default` one)."""
    return "dropout" in rngs or "default" in rngs


def params_only(rngs: nnx.Rngs) -> nnx.Rngs:
    """Rngs with one `params` stream forked from `rngs`: what a parent module gives
    the child it calls with keys of its own (no dropout stream of the child's)."""
    return nnx.Rngs(params=rngs["params"]())


def resolve_options(linen_class: type, options: dict) -> dict:
    """`options` completed with `linen_class`'s defaults (the options of
    `nn.RecurrentOptions`; a model's defaults may differ, `init_scale` 0.1 for the
    language model)."""
    defaults = {f.name: f.default for f in dataclasses.fields(linen_class)
                if f.name in nn.OPTION_FIELDS}
    for name, value in options.items():
        if name not in defaults:
            raise ValueError(f"Unknown option {name!r}; the recurrent options are "
                             f"{', '.join(nn.OPTION_FIELDS)}.")
        if name not in SUPPORTED_OPTIONS and value != defaults[name]:
            raise ValueError(f"The option {name!r} is not supported by rnnreg_jax.nnx yet; "
                             "use the linen modules for it.")
    resolved = {name: options.get(name, defaults[name]) for name in SUPPORTED_OPTIONS}
    check_regularizer(resolved["reg"])
    for name, value in resolved.items():  # as the linen twin checks its own
        if isinstance(defaults[name], bool):
            check_flag(value, name)
    # at construction: the linen twin refuses them at init, here they waited for a call
    if resolved["implementation"] not in rnn.IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {rnn.IMPLEMENTATIONS}, got "
                         f"{shown(resolved['implementation'])}.")
    cells.check_size(resolved["unroll"], "unroll")
    check_forget_bias(resolved["forget_bias"])
    precision.check_module_dtypes(resolved["param_dtype"], resolved["dtype"])
    if resolved["param_axes"] is not None:  # hashable, as a module's static attribute
        resolved["param_axes"] = tuple(partitioning.axes_of(resolved["param_axes"]).items())
    return resolved


def linen_options(module: Any) -> dict:
    """A linen module's recurrent options (to build its NNX twin)."""
    return {name: getattr(module, name) for name in nn.OPTION_FIELDS}


class RecurrentModule(nnx.Module):
    """Base of `StackedRNN`, `LanguageModel` and `SequenceModel`.

    Attributes:
      deterministic: evaluation mode (noise replaced by its expectation); `.eval()` sets
        it, `.train()` clears it (False, training, by default as `nnx.Dropout`).
      use_running_average: a cell that keeps running statistics ("lstm_bn"): use them
        (True) or the window's own, updating them (False); None follows `deterministic`.
        `.eval()` / `.train()` set it too.
      rngs: the module's own `dropout` stream (None without one).
      and the recurrent options as attributes (`cell`, `reg`, `init_scale`, ...).
    """

    LINEN: type  # the linen twin's class

    # Set by `_set_options` (the options, as `nn.RecurrentOptions` types them; `param_axes`
    # made hashable) and by the subclasses' constructors (`rngs`).
    cell: Any
    reg: Regularizer
    init_scale: float | None
    unroll: int
    implementation: str
    bn_max_steps: int
    bn_momentum: float
    recurrent_bias: bool
    forget_bias: float
    orthogonal_init: bool
    dtype: Any
    param_dtype: Any
    param_axes: tuple[tuple[str, tuple], ...] | None
    deterministic: bool
    use_running_average: bool | None
    rngs: nnx.RngStream | None

    def _set_options(self, options: dict, deterministic: bool,
                     use_running_average: bool | None) -> None:
        for name, value in resolve_options(self.LINEN, options).items():
            setattr(self, name, value)
        # checked here, as a call's are (`modes`): the string "False" was taken as True
        self.deterministic = check_flag(deterministic, "deterministic")
        self.use_running_average = (None if use_running_average is None else
                                    check_flag(use_running_average, "use_running_average"))

    def recurrent_options(self) -> dict:
        """The recurrent options as keyword arguments (of a child, or of the linen twin)."""
        return {name: getattr(self, name) for name in SUPPORTED_OPTIONS}

    def modes(self, deterministic: bool | None,
              use_running_average: bool | None) -> tuple[bool, bool]:
        """`(deterministic, use_running_average)` of a call: the call's arguments over the
        attributes; a call's `deterministic` also decides the running statistics unless
        it gives `use_running_average` (as in the linen modules); each a bool (the string
        "False" was taken as True)."""
        if deterministic is not None:
            check_flag(deterministic, "deterministic")
        if use_running_average is not None:
            check_flag(use_running_average, "use_running_average")
        if deterministic is not None:
            average = deterministic if use_running_average is None else use_running_average
            return deterministic, average
        if use_running_average is None:
            use_running_average = self.use_running_average
        return self.deterministic, (self.deterministic if use_running_average is None
                                    else use_running_average)

    def call_key(self, rngs: Any, needed: bool) -> jax.Array | None:
        """The call's dropout key: from `rngs` (a key, an `nnx.RngStream` or an
        `nnx.Rngs`'s `dropout` stream) or else one draw of the module's own stream;
        None when the call draws no noise."""
        if not needed:
            return None
        source = self.rngs if rngs is None else rngs
        if source is None:
            raise ValueError(NO_STREAM)
        if isinstance(source, nnx.Rngs):
            if not has_dropout(source):
                raise ValueError(NO_STREAM)
            return source["dropout"]()
        if isinstance(source, nnx.RngStream):
            return source()
        if isinstance(source, jax.Array):
            check_key(source, "rngs")  # an int array failed inside jax.random's draws
            return source
        raise ValueError(f"rngs must be an nnx.Rngs, an nnx.RngStream or a PRNG key, got "
                         f"{type(source).__name__}.")

    def stack(self):
        """The `StackedRNN` that runs the recurrence (the module itself, or its `rnn`)."""
        return self.rnn

    def penalties(self) -> dict[str, jax.Array]:
        """The loss terms of the latest call (norm stabilizer, AR, TAR: the linen modules'
        `penalties` collection, by name): empty after an evaluation call or with no
        penalty regularizer. A loss adds `penalty()` (their sum) in training."""
        return dict(get_value(self.stack().penalty_terms))

    def penalty(self) -> jax.Array:
        """The sum of `penalties()` (0 without any), to add to the training loss."""
        leaves = jax.tree.leaves(self.penalties())
        return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.float32))

    def linen_module(self):
        """The linen module with this module's options (its variables: `to_linen`)."""
        raise NotImplementedError

    def to_linen(self) -> tuple[Any, dict]:
        """`(linen module, variables)` computing what this module computes: the `params`
        (and, for "lstm_bn", `batch_stats`) trees are this module's `nnx.Param` and
        `nnx.BatchStat` states as nested dicts, paths unchanged; a parameter with
        `out_sharding` metadata (`param_axes`) comes boxed in `nn.LogicallyPartitioned`,
        as linen's `init` boxes it."""
        variables = {"params": boxed_params(nnx.state(self, nnx.Param))}
        stats = nnx.to_pure_dict(nnx.state(self, nnx.BatchStat))
        if stats:
            variables["batch_stats"] = stats
        return self.linen_module(), variables

    def load_linen(self, variables: dict) -> None:
        """Take the weights (and running statistics) of the linen twin's `variables`
        (`{"params": ..., "batch_stats": ...}`, boxed or not); their layout must be this
        module's. The parameters' metadata (their `out_sharding`) stays this module's."""
        variables = flax.linen.unbox(flax.core.unfreeze(variables))
        for collection, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
            state = nnx.state(self, kind)
            given = variables.get(collection, {})
            check_same_layout(nnx.to_pure_dict(state), given, collection)
            nnx.replace_by_pure_dict(state, given)
            nnx.update(self, state)

    @classmethod
    def from_linen(cls, module: Any, variables: dict, *, rngs: nnx.Rngs | None = None):
        """This class's twin of the linen `module` (same options), holding `variables`.

        Args:
          module: the linen module (`rnnreg_jax.nn.StackedRNN`, `models.LanguageModel`,
            `models.SequenceModel`, matching this class).
          variables: its variables (`module.init(...)` or trained).
          rngs: the `dropout` stream's source (none: calls in training mode need
            `rngs=`). The parameters drawn at construction are replaced.
        """
        if not isinstance(module, cls.LINEN):
            raise ValueError(f"{cls.__name__}.from_linen takes a linen "
                             f"{cls.LINEN.__module__}.{cls.LINEN.__name__}, got "
                             f"{type(module).__name__}.")
        streams = {"params": 0}
        if rngs is not None and has_dropout(rngs):
            streams["dropout"] = rngs["dropout"]()
        model = cls._twin_of(module, flax.linen.unbox(flax.core.unfreeze(variables)),
                             nnx.Rngs(**streams))
        model.load_linen(variables)
        return model

    @classmethod
    def _twin_of(cls, module: Any, variables: dict, rngs: nnx.Rngs):
        raise NotImplementedError


def boxed_params(state: nnx.State) -> dict:
    """An `nnx.Param` state as linen's `params` tree: nested dicts of arrays, those with
    `out_sharding` metadata boxed in `nn.LogicallyPartitioned` with those axis names."""
    def leaf(variable):
        names = variable.get_metadata().get("out_sharding")
        value = get_value(variable)
        return value if not names else flax.linen.LogicallyPartitioned(value, tuple(names))

    flat = {tuple(str(key) for key in path): leaf(variable)
            for path, variable in nnx.to_flat_state(state)}
    return flax.traverse_util.unflatten_dict(flat)


def check_same_layout(mine: Any, given: Any, collection: str) -> None:
    """ValueError unless `given` has `mine`'s paths and shapes."""
    def shapes(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): jnp.shape(leaf) for path, leaf in flat}

    expected, got = shapes(mine), shapes(given)
    for path, shape in expected.items():
        if path not in got:
            raise ValueError(f"The linen variables lack {collection}{path}, which this "
                             "model has.")
        if got[path] != shape:
            raise ValueError(f"The linen {collection}{path} has shape {got[path]}, this "
                             f"model's {shape}.")
    for path in got:
        if path not in expected:
            raise ValueError(f"The linen variables have {collection}{path}, which this "
                             "model lacks.")
