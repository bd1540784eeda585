"""Command-line plumbing shared by the experiment binaries.

`--config=NAME` picks a named preset; `--config.a.b=VALUE` overrides any
field, parsed with the type of the preset's value. Unknown presets or fields
end the run with one sentence listing the valid names (exit status 2).
absl parses every other flag (`--workdir`, `--data_dir`, ...).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Mapping

import ml_collections
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Name of a preset in experiments/configs/<task>.py.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_string("data_dir", None, "Data directory (default $RNNREG_DATA_DIR, then cache).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: host:port of process 0 (auto-detected on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")

Presets = Mapping[str, Callable[[], ml_collections.ConfigDict]]


class ConfigError(ValueError):
    """A bad --config or --config.<field> flag; the message is one sentence."""


def _convert(text: str, current):
    """Parse `text` to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"Expected true or false, got {text!r}.")
    if isinstance(current, int | float) or isinstance(current, tuple | list) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text
            raise ConfigError(f"Cannot parse {text!r} as {type(current).__name__}.") from None
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list | int):
            value = tuple(value) if isinstance(value, list) else (value,)
        return value
    return text


def override_text(value) -> str:
    """A stored JSON value as a `--config.<field>=` override reads it back (a list as the
    tuple `_convert` parses, without spaces)."""
    if isinstance(value, list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted>` from a command-line string."""
    node, parts = config, dotted.split(".")
    for depth, part in enumerate(parts):
        keys = sorted(node.keys())
        if part not in node:
            where = ".".join(parts[:depth]) or "config"
            raise ConfigError(f"Unknown config field '{dotted}'; fields of {where}: "
                              f"{', '.join(keys)}.")
        if depth < len(parts) - 1:
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"Config field '{'.'.join(parts[:depth + 1])}' has no "
                                  "sub-fields.")
    try:
        with node.unlocked():
            node[parts[-1]] = _convert(text, node[parts[-1]])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Bad value for config field '{dotted}': {err}") from None


def split_config_args(argv: list[str], presets: Presets) -> tuple[ml_collections.ConfigDict,
                                                                 list[str]]:
    """Build the config from `--config=NAME` and `--config.x=v`; return the rest of argv."""
    name, overrides, rest = None, [], [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                value = next(args, "")
            overrides.append((key, value))
        elif arg == "--config" or arg.startswith("--config="):
            name = arg.partition("=")[2] if "=" in arg else next(args, "")
        else:
            rest.append(arg)
    if name is None:
        raise ConfigError(f"Pass --config=NAME with one of: {', '.join(sorted(presets))}.")
    if name not in presets:
        raise ConfigError(f"Unknown preset '{name}'; valid presets: {', '.join(sorted(presets))}.")
    config = presets[name]()
    with config.unlocked():
        config.preset = name
    for key, value in overrides:
        apply_override(config, key, value)
    return config, rest


def make_flags_parser(presets: Presets, holder: dict):
    """An `absl.app.run` flags parser that also builds the config into `holder`."""

    def parser(argv: list[str]) -> list[str]:
        try:
            config, rest = split_config_args(argv, presets)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        holder["config"] = config
        try:
            return FLAGS(rest)
        except flags.Error as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return parser
