"""Sample text from a trained PTB language model.

    python -m experiments.generate --workdir=DIR [--checkpoint=best|latest]
        [--prompt="the company said"] [--length=50] [--temperature=1.0] [--top_k=K]
        [--num_samples=1] [--seed=0] [--data_dir=DIR]

Reads the run's `config.json` and checkpoint as `experiments.evaluate` does (by default
the model the run reports), rebuilds its model, and prints `--num_samples` texts, each
the prompt and `--length` tokens after it (`rnnreg_jax.generate`), under a line
`== sample K ==`. `--temperature=0` decodes greedily (the most likely token at every
step); above 0 it samples, sharper below 1 and flatter above; `--top_k` samples among the
k most likely tokens only (greedy decoding takes the first of them anyway). `--seed`
fixes the draws: the same seed prints the same text.

The prompt is read with the corpus's own conventions. Word level (`ptb_word`): words
split on whitespace, a line break as `<eos>`; a word outside the vocabulary reads as
`<unk>`, as the corpus itself maps its rare words, with a note on stderr naming it
(PTB is lower case, its numbers are `N`). Character level (`ptb_char`): every character
one symbol, a space the word separator `_`, a line break `<eol>`; a character outside the
vocabulary is an error. Without a prompt (or with an empty one) the text starts after
the line-end symbol (`<eos>`, `<eol>`), as a sentence starts in the corpus; that symbol
is not printed. The output decodes the same way back: words joined by spaces, `_` as a
space, `<eos>` and `<eol>` as line breaks. Nothing in DIR is written. A text longer than
1000 tokens reports its progress on stderr after every 1000.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from experiments.evaluate import (
    check_fits,
    default_checkpoint,
    load_config,
    reported_params,
    restore_checkpoint,
)
from experiments.flag_parsing import DATA_DIR_REMEDY, ArgumentParser, refuse_empty

LANGUAGE_MODEL_DATASETS = ("ptb_word", "ptb_char")
PROGRESS_EVERY = 1000  # tokens between progress lines of a long text


def encode_prompt(corpus, text: str) -> tuple[list[int], list[str]]:
    """`text` as ids of `corpus` (see the module docstring), and the words read as
    `<unk>`. Raises ValueError on a symbol the vocabulary lacks (and no `<unk>`)."""
    from rnnreg_jax.data.ptb import EOL, EOS, UNK

    if corpus.name == "ptb_char":
        symbols = ["_" if ch == " " else EOL if ch == "\n" else ch for ch in text]
        kind = "character"
    else:
        lines = [line.split() for line in text.split("\n")]
        symbols = [w for i, line in enumerate(lines) for w in [EOS] * (i > 0) + line]
        kind = "word"
    lookup = corpus.symbol_to_id
    ids, unknown = [], []
    for symbol in symbols:
        if symbol not in lookup:
            if UNK not in lookup or kind == "character":
                raise ValueError(f"The {kind} {symbol!r} of the prompt is not in the "
                                 f"{corpus.name} vocabulary.")
            unknown.append(symbol)
            symbol = UNK
        ids.append(lookup[symbol])
    return ids, unknown


def decode(corpus, ids) -> str:
    """Ids of `corpus` as text: words joined by spaces (characters side by side, `_` a
    space), the line-end symbols as line breaks."""
    from rnnreg_jax.data.ptb import EOL, EOS

    symbols = corpus.decode(np.asarray(ids))
    if corpus.name == "ptb_char":
        return "".join(" " if s == "_" else "\n" if s == EOL else s for s in symbols)
    lines: list[list[str]] = [[]]
    for symbol in symbols:
        if symbol == EOS:
            lines.append([])
        else:
            lines[-1].append(symbol)
    return "\n".join(" ".join(words) for words in lines)


def start_symbol(corpus) -> str:
    """The symbol a sentence follows in `corpus`: its line end."""
    from rnnreg_jax.data.ptb import EOL, EOS

    return EOL if corpus.name == "ptb_char" else EOS


def generate_workdir(workdir: str, prompt: str = "", length: int = 50,
                     temperature: float = 1.0, num_samples: int = 1, seed: int = 0,
                     top_k: int | None = None, checkpoint: str | None = None,
                     data_dir: str | None = None, on_progress=None) -> dict:
    """`num_samples` texts from the run's checkpoint: {"samples": [prompt + continuation],
    "ids": int [num_samples, length] (the tokens generated), "unknown": the prompt's
    words read as `<unk>`, "checkpoint": {"name", "epoch", "step"}}. `checkpoint` None:
    the run's own (`default_checkpoint`). `on_progress(done, length)`, if given, hears
    of every `PROGRESS_EVERY` tokens as they are drawn."""
    import jax

    from experiments.configs.common import regularization
    from rnnreg_jax.generate import generate
    from rnnreg_jax.tasks import language_model, text_corpus

    config = load_config(workdir)
    dataset = config.data.dataset
    if dataset not in LANGUAGE_MODEL_DATASETS:
        raise ValueError(f"{workdir} holds a {dataset} run; text comes from language models "
                         f"({', '.join(LANGUAGE_MODEL_DATASETS)}).")
    for flag, value in (("--num_samples", num_samples), ("--length", length)):
        if value < 1:  # --length: generate's own message named num_tokens
            raise ValueError(f"{flag} must be at least 1, got {value}.")
    if not 0 <= seed < 2 ** 32:  # jax.random.key: an OverflowError past int64, and seeds
        # that differ by 2**32 draw the same text
        raise ValueError(f"--seed must be a whole number in [0, 2**32), got {seed}.")
    if not (math.isfinite(temperature) and temperature >= 0):  # before the checkpoint is read
        raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}.")
    if top_k is not None and top_k < 1:  # greedy decoding never read it: let through
        raise ValueError(f"--top_k must be a whole number >= 1, got {top_k}.")
    explicit = checkpoint is not None
    state, checkpoint = restore_checkpoint(workdir, checkpoint or default_checkpoint(config),
                                           fall_back=not explicit)
    corpus = text_corpus(config.data, data_dir)
    prompt_ids, unknown = encode_prompt(corpus, prompt)
    model = language_model(config.model, regularization(config.reg), corpus.vocab_size)
    params = reported_params(state)  # NT-ASGD's average, as the run's evaluations read
    check_fits(model, np.zeros((1, 1), np.int32), True, params,
               f"The {checkpoint} checkpoint in {workdir}")
    variables = {"params": params, **(state.get("model_state") or {})}
    prompt_array: np.ndarray | None = None
    start_id: int | None = None
    rows: int | None = None
    if prompt_ids:
        prompt_array = np.tile(np.asarray(prompt_ids, np.int32), (num_samples, 1))
    else:  # a sentence start: after the line-end symbol
        start_id, rows = corpus.symbol_to_id[start_symbol(corpus)], num_samples
    tokens, _ = generate(model, variables, jax.random.key(seed), length,
                         prompt=prompt_array, start_id=start_id, batch_size=rows,
                         temperature=temperature,
                         top_k=None if temperature == 0 else top_k,  # main notes it
                         on_progress=on_progress, progress_every=PROGRESS_EVERY)
    ids = np.asarray(tokens)
    samples = [decode(corpus, prompt_ids + row.tolist()) for row in ids]
    return {"samples": samples, "ids": ids, "unknown": unknown,
            "checkpoint": {"name": checkpoint, "epoch": int(state["epoch"]),
                           "step": int(state["step"])}}


def _progress_printer(length: int):
    """None for a short text; else a function printing `generated D/N tokens (R tokens/s)`
    on stderr (the rate counts the steps since the start, compilation included)."""
    if length <= PROGRESS_EVERY:
        return None
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"generated {done}/{total} tokens ({rate:,.0f} tokens/s)", file=sys.stderr,
              flush=True)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    from rnnreg_jax.data import DataError

    parser = ArgumentParser(prog="python -m experiments.generate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a language-model run's workdir")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="default: the one the run reports (best validation where its "
                             "config selects it, else latest)")
    parser.add_argument("--prompt", default="", help="the text to continue (default: none, "
                                                      "start a sentence)")
    parser.add_argument("--length", type=int, default=50, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0: greedy; above 0: sample softmax(logits / temperature)")
    parser.add_argument("--top_k", type=int, default=None,
                        help="sample among the k most likely tokens only")
    parser.add_argument("--num_samples", type=int, default=1, help="texts to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws, in [0, 2**32)")
    parser.add_argument("--data_dir", default=None,
                        help="data folder (default: $RNNREG_DATA_DIR, then the cache)")
    args = parser.parse_args(argv)
    refuse_empty({"workdir": (args.workdir, "pass the workdir of a language-model run"),
                  "data_dir": (args.data_dir, DATA_DIR_REMEDY)})
    try:
        out = generate_workdir(args.workdir, args.prompt, args.length, args.temperature,
                               args.num_samples, args.seed, args.top_k, args.checkpoint,
                               args.data_dir, on_progress=_progress_printer(args.length))
    except (ValueError, FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out["unknown"]:
        print("note: not in the vocabulary, read as <unk>: "
              f"{', '.join(map(repr, dict.fromkeys(out['unknown'])))}.", file=sys.stderr)
    if args.top_k is not None and args.temperature == 0:
        print("note: --top_k does nothing at --temperature=0, which takes the most likely "
              "token at every step.", file=sys.stderr)
    where = out["checkpoint"]
    top_k = "" if args.top_k is None else f", top_k {args.top_k}"
    print(f"{args.workdir} ({where['name']} checkpoint: epoch {where['epoch']}, "
          f"step {where['step']}); temperature {args.temperature:g}{top_k}, seed {args.seed}")
    for k, text in enumerate(out["samples"], 1):
        print(f"== sample {k} ==")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
