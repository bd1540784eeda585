"""sentiment experiments: `python -m experiments.sentiment --config=NAME --workdir=DIR`.

Presets: experiments/configs/sentiment.py. Any field: `--config.<block>.<field>=VALUE`.
"""

from experiments.configs.sentiment import PRESETS
from experiments.main import main_for

if __name__ == "__main__":
    main_for("sentiment", PRESETS)
