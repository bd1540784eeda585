"""One regularizer per family (and compositions touching every step-level site), as
functions of the cell, for the tests that compare two implementations of the recurrence
case by case (tests/test_fused.py: fused vs autodiff; tests/test_pallas.py: Pallas vs
the scan), so a family added here is checked by both."""

import rnnreg_jax as rj

REGS = {
    "none": lambda cell: rj.NONE,
    "zaremba": lambda cell: rj.zaremba(0.3),
    "variational_per_gate": lambda cell: rj.variational(0.3, 0.2, 0.4, per_gate=True),
    "variational_shared": lambda cell: rj.variational(0.3, 0.2, 0.4),
    "naive_per_gate": lambda cell: rj.naive_dropout(input=0.2, recurrent=0.3, per_gate=True),
    "naive_shared": lambda cell: rj.naive_dropout(input=0.2, recurrent=0.3),
    "zoneout": lambda cell: rj.zoneout(0.3 if cell == "lstm" else 0.0, 0.2),
    "zoneout_tied": lambda cell: rj.zoneout(0.3 if cell == "lstm" else 0.0, 0.2,
                                            tie="sequence"),
    "recurrent_dropout": lambda cell: rj.recurrent_dropout(0.3, output_zoneout=cell == "lstm"),
    "recurrent_dropout_eval_scaling": lambda cell: rj.recurrent_dropout(
        0.3, output_zoneout=cell == "lstm", eval_scaling=True),
    "variational_classic": lambda cell: rj.variational(0.3, 0.2, 0.4, embedding=0.0,
                                                       per_gate=True, eval_scaling=True),
    "stochastic_depth": lambda cell: rj.stochastic_depth(0.2),
    "weight_drop": lambda cell: rj.weight_drop(0.4),
    "weight_noise": lambda cell: rj.weight_noise(0.1),
    "cell_dropout": lambda cell: rj.variational(cell=0.3) if cell == "lstm" else rj.NONE,
    # every step-level site at once (per-gate recurrent masks)
    "all": lambda cell: (rj.variational(0.3, 0.2, 0.4, per_gate=True)
                         + rj.recurrent_dropout(0.3, output_zoneout=cell == "lstm")
                         + rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.2)
                         + rj.stochastic_depth(0.1) + rj.weight_noise(0.05)),
    # and with a shared per-step recurrent mask, rnnDrop's cell mask and weight drop
    "all_shared": lambda cell: (rj.naive_dropout(input=0.2, recurrent=0.3)
                                + (rj.variational(cell=0.3) if cell == "lstm" else rj.NONE)
                                + rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.2,
                                             tie="sequence")
                                + rj.weight_drop(0.3)),
}
