"""Language-model settings that do not go together, refused in one sentence naming the
config fields before anything is read or written. The model refuses them too, but later:
after the workdir was locked and its record written, in the model's own argument names,
or (an input dropout mask on `embed_to_gates`) only at the first training step."""

from __future__ import annotations


def check_language_model(config) -> None:
    """ValueError (one sentence) where the model block's embedding settings clash with
    each other or with the reg block; nothing for a model without them (pMNIST,
    sentiment)."""
    from rnnreg_jax.models import embedding_width

    model = config.get("model")
    if model is None or "tie_embeddings" not in model:
        return
    sizes = tuple(model.hidden_sizes)
    to_gates = bool(model.get("embed_to_gates"))
    try:
        width = embedding_width(model.cell, sizes, model.get("embed_size"), to_gates)
    except ValueError as err:  # embed_to_gates with another width: its own sentence
        raise ValueError(f"config.model: {err}") from None
    if model.tie_embeddings is True and width != sizes[-1]:
        raise ValueError(f"config.model.tie_embeddings shares the embedding with the softmax, "
                         f"so the embedding's width ({width}) must equal the last of "
                         f"config.model.hidden_sizes {sizes}; set config.model.embed_size="
                         f"{sizes[-1]} or tie_embeddings=False.")
    if to_gates:
        from experiments.configs.common import regularization

        if "input" in regularization(config.reg).sites():
            raise ValueError("config.model.embed_to_gates feeds the embedding straight into "
                             "the first layer's gates, which take no input dropout; turn the "
                             "reg block's input dropout off (e.g. "
                             "--config.reg.variational.input=0.0) or set "
                             "embed_to_gates=False.")
