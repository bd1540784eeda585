"""Model settings that do not go together, refused in one sentence naming the config
fields before anything is read or written (`check_model`, in the binaries' config check):
the language model's embedding settings, options the cell does not take, regularizers
that act on an LSTM's cell state under a cell without one, and embedding dropout on a
model without an embedding. The model refuses them too,
but later: after the workdir was locked and its record written, in the model's own
argument names, or (an input dropout mask on `embed_to_gates`) only at the first training
step. The rules are the library's own (`cells.has_memory`,
`stack_layers.takes_gate_inputs`, a regularizer's `check_cell`, ...); only the sentences
are this module's."""

from __future__ import annotations

from rnnreg_jax import cells


def check_model(config) -> None:
    """ValueError (one sentence) where the model block's settings clash with each other,
    with its cell or with the reg block; the binaries' config check."""
    from experiments.configs.common import regularizers

    if config.get("model") is None:
        return
    members = regularizers(config.reg)  # each reg sub-block's, built once for the checks
    check_language_model(config, members)
    check_cell_options(config.model)
    check_cell_state_regularizers(config.model.cell, members)
    check_embedding_regularizers(config.model, members)


def _cells_where(predicate) -> str:
    """The config's cells for which the library's `predicate` holds, for a sentence."""
    return ", ".join(cell for cell in cells.ALL_CELL_TYPES if predicate(cell))


def check_language_model(config, members: dict) -> None:
    """ValueError (one sentence) where the model block's embedding settings clash with
    each other, with the cell or with the reg block (`members`: its sub-blocks'
    regularizers); nothing for a model without them (pMNIST, sentiment)."""
    from rnnreg_jax.models import embedding_width
    from rnnreg_jax.stack_layers import takes_gate_inputs

    model = config.get("model")
    if model is None or "tie_embeddings" not in model:
        return
    sizes = tuple(model.hidden_sizes)
    to_gates = bool(model.get("embed_to_gates"))
    if to_gates and not takes_gate_inputs(model.cell):
        raise ValueError(f"config.model.embed_to_gates feeds the embedding straight into the "
                         f"first layer's gates, which config.model.cell={model.cell!r} does "
                         f"not take; set embed_to_gates=False or config.model.cell to one of "
                         f"{_cells_where(takes_gate_inputs)}.")
    try:
        width = embedding_width(model.cell, sizes, model.get("embed_size"), to_gates)
    except ValueError as err:  # embed_to_gates with another width: its own sentence
        raise ValueError(f"config.model: {err}") from None
    if model.tie_embeddings is True and width != sizes[-1]:
        raise ValueError(f"config.model.tie_embeddings shares the embedding with the softmax, "
                         f"so the embedding's width ({width}) must equal the last of "
                         f"config.model.hidden_sizes {sizes}; set config.model.embed_size="
                         f"{sizes[-1]} or tie_embeddings=False.")
    if to_gates and any("input" in member.sites() for member in members.values()):
        raise ValueError("config.model.embed_to_gates feeds the embedding straight into "
                         "the first layer's gates, which take no input dropout; turn the "
                         "reg block's input dropout off (e.g. "
                         "--config.reg.variational.input=0.0) or set embed_to_gates=False.")


def check_cell_options(model) -> None:
    """ValueError (one sentence) where a model option does not apply to the cell (the
    running statistics' options under a cell without them, which the model ignores), or an
    option of the cell's running statistics is out of range (those the model block does
    not set take the model's defaults)."""
    from rnnreg_jax import batchnorm
    from rnnreg_jax.cells.params import draws_own_params, takes_recurrent_bias
    from rnnreg_jax.model_init import head_init_clashes

    cell = model.cell
    if model.get("recurrent_bias") and not takes_recurrent_bias(cell):
        raise ValueError(f"config.model.recurrent_bias adds a second bias to every layer, "
                         f"which config.model.cell={cell!r} does not take; set "
                         f"recurrent_bias=False or config.model.cell to one of "
                         f"{_cells_where(takes_recurrent_bias)}.")
    if model.get("orthogonal_init") and draws_own_params(cell):
        raise ValueError(f"config.model.orthogonal_init draws the weights orthogonal, but "
                         f"config.model.cell={cell!r} draws its own; set orthogonal_init="
                         f"False or config.model.cell to one of "
                         f"{_cells_where(lambda c: not draws_own_params(c))}.")
    if model.get("forget_bias") and not cells.has_memory(cell):
        raise ValueError(f"config.model.forget_bias offsets an LSTM's forget gate, which "
                         f"config.model.cell={cell!r} does not have; set forget_bias=0.0 or "
                         f"config.model.cell to one of {_cells_where(cells.has_memory)}.")
    if "head_init" in model and head_init_clashes(model.head_init,
                                                  model.get("orthogonal_init", False)):
        raise ValueError(f"config.model.orthogonal_init draws the head orthogonal, and "
                         f"config.model.head_init={model.head_init!r} draws it otherwise; set "
                         f"head_init='lecun_normal' (the default) or orthogonal_init=False.")
    kept = cells.statistics_of(cell)
    statistics_fields = [name for name in ("bn_max_steps", "bn_momentum") if name in model]
    if kept is None and statistics_fields:  # a batchnorm preset whose cell was switched
        keeping = " or ".join(f"config.model.cell={c!r}" for c in cells.ALL_CELL_TYPES
                              if cells.statistics_of(c) is not None)
        raise ValueError(f"config.model.{' and '.join(statistics_fields)} set the running "
                         f"statistics that {keeping} keeps, and config.model.cell={cell!r} "
                         f"keeps none; set {keeping} or start from a preset without them "
                         f"(e.g. --config=baseline).")
    if kept is not None:
        try:
            kept.check(model.get("bn_max_steps", batchnorm.DEFAULT_MAX_STEPS),
                       model.get("bn_momentum", batchnorm.DEFAULT_MOMENTUM))
        except ValueError as err:  # the range in the library's own sentence
            raise ValueError(f"config.model: {err}") from None


# Per reg sub-block: what its setting that needs an LSTM does, and how to turn it off
# (whether it is on is for the sub-block's regularizer's `check_cell` to say).
_LSTM_SETTINGS = {
    "variational": ("config.reg.variational.cell drops units of the cell state",
                    "config.reg.variational.cell=0.0"),
    "dropout": ("config.reg.dropout.site='cell' drops units of the cell state",
                "config.reg.dropout.rate=0.0 (or another site)"),
    "zoneout": ("config.reg.zoneout.cells zones out units of the cell state",
                "config.reg.zoneout.cells=0.0"),
    "recurrent_dropout": ("config.reg.recurrent_dropout.output_zoneout zones out an "
                          "LSTM's output gate", "output_zoneout=False"),
}


def check_cell_state_regularizers(cell, members: dict) -> None:
    """ValueError (one sentence) where a reg sub-block's regularizer (`members`, by
    sub-block) acts on an LSTM's cell state and config.model.cell has none."""
    for name, member in members.items():
        try:
            member.check_cell(cell)
        except ValueError as err:
            if name not in _LSTM_SETTINGS:  # a sub-block this table lacks
                raise ValueError(f"config.reg.{name}: {err}") from None
            what, instead = _LSTM_SETTINGS[name]
            raise ValueError(f"{what}, which config.model.cell={cell!r} does not have; set "
                             f"{instead} or config.model.cell to one of "
                             f"{_cells_where(cells.has_memory)}.") from None


def check_embedding_regularizers(model, members: dict) -> None:
    """ValueError (one sentence) where a reg sub-block's regularizer (`members`) drops
    word types and the model has no embedding (pMNIST's pixels), which would train
    without that noise (`models.check_embedding_noise` refuses it when built)."""
    if "embed_size" in model or "tie_embeddings" in model:
        return  # a model of words
    for name, member in members.items():
        if member.embedding_noise:
            raise ValueError(f"config.reg.{name} drops word types (its embedding dropout), "
                             f"but this model reads features, not words (config.model has "
                             f"no embedding); turn config.reg.{name}'s embedding dropout "
                             f"off (e.g. --config.reg.{name}.embedding=0.0).")
