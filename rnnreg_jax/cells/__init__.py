"""Pure recurrent cell steps: LSTM, GRU and the tanh RNN.

A cell is split in two so the input projection of every time step runs as one
large matmul outside `lax.scan` (the fast path), and only `h @ W_h` stays in
the loop:

    xw = project_inputs(params, x, input_mask)        # [T, B, G*H], once
    carry, y_t = step(params, carry, xw[t], noise_t)  # per step, in the scan

A step is deterministic given its arguments: it never samples noise. Every
mask or mixing coefficient arrives in `noise_t` (a `StepNoise`), sampled from
explicit keys by `rnnreg_jax.noise`.

Gate order (PyTorch's, so weights port both ways, see `rnnreg_jax.torch_port`):
  * LSTM ``i, f, g, o``: the columns of `w_x`, `w_h`, `b` hold the input,
    forget, candidate and output gate blocks of width H, in that order.
  * GRU ``r, z, n`` with PyTorch's *reset-after* candidate:
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.
  * RNN: ``h' = tanh(x W_x + b + h W_h)``.
  * ``lstm_ln``: the layer-normalized LSTM of Ba et al. 2016 (same gate
    order; see `lstm_ln_update`). Not one of the papers' cells, so it is in
    `ALL_CELL_TYPES` but not in `CELL_TYPES`, and it has no PyTorch port.
  * ``lstm_bn``: the recurrently batch-normalized LSTM of Cooijmans et al.
    2016 (same gate order), in `cells.lstm_bn`; likewise beyond the papers.
  * ``keras_lstm``, ``keras_gru``: Keras 0.x's LSTM and GRU as Gal & Ghahramani's
    sentiment code ran them (`cells.keras`): hard-sigmoid gates, Keras 0.x's
    initialization, and for the GRU the reset gate *before* the product and a sigmoid
    candidate, ``n = sigmoid(x W_in + b_in + (r * h) W_hn)``, ``h' = z h + (1 - z) n``,
    no recurrent bias. Same gate orders and storage as ``lstm`` and ``gru``; in
    `ALL_CELL_TYPES`, without a PyTorch port or Pallas kernels.

One module per concept: `base` (step noise, cell records, the registry), `layout`
(masked products and their transposes), `params` (initial parameters and states, input
projections), one module per cell (`lstm`, `lstm_ln`, `lstm_bn`, `gru`, `tanh_rnn`,
`keras` for Keras 0.x's pair).
A cell of your own is a `Cell` record (docs/CUSTOM_REGULARIZERS.md).

Weights are stored input-major (`w_x: [F, G*H]`, `w_h: [H, G*H]`), the
transpose of PyTorch's `weight_ih_l0: [G*H, F]`.
"""

from __future__ import annotations

from typing import Any

from rnnreg_jax.cells.base import (
    ALL_CELL_TYPES,
    BUILTINS,
    CELL_TYPES,
    EXTRA_CELL_TYPES,
    LN_EPSILON,
    LSTM_TYPES,
    NUM_GATES,
    RECURRENT_BIAS_CELLS,
    REGISTRY,
    Array,
    Carry,
    Cell,
    CellStatistics,
    Params,
    StepNoise,
    cell_name,
    check_cell_type,
    check_size,
    check_step,
    has_memory,
    maybe_scale,
    merge_noise,
    mix,
    num_gates,
    projected_gates,
    record_of,
    register,
    reject_lstm_only,
    the_record,
    update_params,
)
from rnnreg_jax.cells.gru import GRU, gru_step, gru_update
from rnnreg_jax.cells.keras import (
    KERAS_GRU,
    KERAS_LSTM,
    hard_sigmoid,
    keras_gru_step,
    keras_gru_update,
    keras_lstm_step,
    keras_lstm_update,
)
from rnnreg_jax.cells.layout import (
    PerGate,
    gate_blocks,
    gate_major,
    is_per_gate,
    leading_gates,
    leading_projection,
    per_gate_product,
    per_gate_recurrent,
    per_gate_weights,
    project_inputs,
    recurrent_projection,
    recurrent_transpose,
    recurrent_weight_grad,
    split_recurrent_weights,
)
from rnnreg_jax.cells.lstm import LSTM, lstm_gates, lstm_step, lstm_update
from rnnreg_jax.cells.lstm_bn import LSTM_BN, lstm_bn_step, lstm_bn_update
from rnnreg_jax.cells.lstm_ln import LSTM_LN, layer_norm, lstm_ln_step, lstm_ln_update
from rnnreg_jax.cells.params import (
    check_forget_bias,
    check_layer,
    check_scale,
    check_w_h,
    default_init_scale,
    init_carry,
    init_params,
    project,
    with_forget_bias,
)
from rnnreg_jax.cells.tanh_rnn import RNN, rnn_step, rnn_update

BUILTINS.update({record.name: record
                 for record in (LSTM, GRU, RNN, LSTM_LN, LSTM_BN, KERAS_LSTM, KERAS_GRU)})
# The built-in cells' functions by name, as the records hold them.
STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step, "lstm_ln": lstm_ln_step,
         "lstm_bn": lstm_bn_step, "keras_lstm": keras_lstm_step, "keras_gru": keras_gru_step}
UPDATES = {name: record.update for name, record in BUILTINS.items()}
UPDATE_PARAMS = {name: record.update_params for name, record in BUILTINS.items()}


def get_step(cell: Any):
    """The step function of a cell: `(params, carry, xw_t, noise) -> (carry, y)`, the
    masked recurrent product then the record's update (LSTM-only sites refused for a
    cell without a memory cell)."""
    record = the_record(cell)
    if record is BUILTINS.get(record.name):  # the module's own step: the same composition
        return STEPS[record.name]

    def step(params, carry, xw_t, noise=StepNoise()):
        if not record.has_memory:
            reject_lstm_only(noise, record.name)
        leading = record.projected_gates
        if leading is None:
            rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
            return record.update(params, carry, xw_t, rec_t, noise)
        rec_t, w_rest = leading_projection(carry["h"], params["w_h"], noise.recurrent, leading)
        return record.update(dict(params, w_h=w_rest), carry, xw_t, rec_t, noise)

    return step


def get_update(cell: Any):
    """The elementwise update of a cell: `(params, carry, xw_t, rec_t, noise)`."""
    return the_record(cell).update


def statistics_of(cell: Any) -> CellStatistics | None:
    """The running statistics a cell keeps (the batch-normalized LSTM's population), or
    None."""
    return the_record(cell).statistics


def has_aux_output(cell: Any) -> bool:
    """Whether a cell's per-step output is `(h_t, aux_t)` (its statistics, say)."""
    return the_record(cell).aux_output


__all__ = [
    "ALL_CELL_TYPES", "BUILTINS", "CELL_TYPES", "GRU", "KERAS_GRU", "KERAS_LSTM", "LSTM",
    "LSTM_BN", "LSTM_LN", "RNN", "hard_sigmoid", "keras_gru_step", "keras_gru_update",
    "keras_lstm_step", "keras_lstm_update",
    "the_record", "PerGate", "CellStatistics", "cell_name", "has_aux_output",
    "statistics_of",
    "EXTRA_CELL_TYPES", "LN_EPSILON", "LSTM_TYPES", "NUM_GATES",
    "RECURRENT_BIAS_CELLS", "REGISTRY", "STEPS", "UPDATES", "UPDATE_PARAMS", "Array", "Carry",
    "Cell", "Params", "StepNoise", "check_cell_type", "check_forget_bias", "check_layer",
    "check_scale", "check_size", "check_step", "check_w_h",
    "default_init_scale",
    "gate_blocks", "gate_major", "get_step", "is_per_gate", "leading_gates", "leading_projection",
    "get_update",
    "gru_step", "gru_update", "has_memory",
    "init_carry", "init_params", "layer_norm", "lstm_bn_step", "lstm_bn_update", "lstm_gates",
    "lstm_ln_step", "lstm_ln_update", "lstm_step", "lstm_update", "maybe_scale", "merge_noise",
    "mix", "num_gates", "per_gate_product", "projected_gates", "per_gate_recurrent",
    "per_gate_weights", "project",
    "project_inputs", "record_of", "recurrent_projection", "recurrent_transpose",
    "recurrent_weight_grad", "register", "reject_lstm_only", "rnn_step", "rnn_update",
    "split_recurrent_weights",
    "update_params", "with_forget_bias",
]
