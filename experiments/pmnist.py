"""pmnist experiments: `python -m experiments.pmnist --config=NAME --workdir=DIR`.

Presets: experiments/configs/pmnist.py. Any field: `--config.<block>.<field>=VALUE`.
"""

from experiments.configs.pmnist import PRESETS
from experiments.main import main_for

if __name__ == "__main__":
    main_for("pmnist", PRESETS)
