"""ptb experiments: `python -m experiments.ptb --config=NAME --workdir=DIR`.

Presets: experiments/configs/ptb.py. Any field: `--config.<block>.<field>=VALUE`.
"""

from experiments.configs.ptb import PRESETS
from experiments.main import main_for

if __name__ == "__main__":
    main_for("ptb", PRESETS)
