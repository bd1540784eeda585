"""Command-line plumbing shared by the experiment binaries.

`--config=NAME` picks a named preset of the binary's task; `--config=FILE.py:ARG`
loads a config file as Flax's examples and big_vision do (`get_config(ARG)`, or
`get_config()` without `:ARG`), e.g. `--config=experiments/configs/ptb.py:zaremba_small`
or a file of your own. `--config.a.b=VALUE` overrides any field, parsed with the type
of the preset's value. Unknown presets, files or fields end the run with one sentence
listing the valid names (exit status 2). absl parses every other flag (`--workdir`,
`--data_dir`, ...).

`ml_collections.config_flags` is not used: it takes no bare preset names, and its
errors for an unknown field or a bad value are absl usage dumps, not one sentence.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping

import ml_collections
from absl import flags

from experiments.configs.common import pick_preset
from experiments.flag_parsing import HELP_FLAGS, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "A preset of experiments/configs/<task>.py, or a config "
                    "file: path/to/file.py[:ARG] (its get_config(ARG)).")
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
            if isinstance(current, tuple | list) and current and all(
                    isinstance(v, str) for v in current):
                words = _bare_words(text)  # a list of names: mc_splits=valid,test
                if words:
                    return words
            raise ConfigError(f"Cannot parse {text!r} as {type(current).__name__}.") from None
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list | int):
            value = tuple(value) if isinstance(value, list) else (value,)
        return value
    return text


def _bare_words(text: str) -> tuple[str, ...] | None:
    """`valid,test`, `(valid,)` or `[valid, test]` as names, the way `override_text`
    writes a stored list back; None where a name would be empty."""
    inner = text.strip()
    if inner[:1] in "([" and inner[-1:] in ")]":
        inner = inner[1:-1]
    words = [w.strip() for w in inner.split(",")]
    if len(words) > 1 and words[-1] == "":  # "(valid,)": a one-name tuple
        words.pop()
    return tuple(words) if all(words) else None


def override_text(value) -> str:
    """A stored JSON value as a `--config.<field>=` override reads it back (a list as the
    tuple `_convert` parses, without spaces)."""
    if isinstance(value, list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted>` from a command-line string. A flag of the reg block's older
    flat layout (`reg.zoneout_hiddens`, in the commands of runs recorded with it) sets
    the fields it stands for today (`reg.zoneout.hiddens`)."""
    from experiments.configs.common import LEGACY_REG_FIELDS

    section, _, field = dotted.partition(".")
    reg = config.get("reg")
    if (section == "reg" and field in LEGACY_REG_FIELDS and reg is not None
            and field not in reg):
        for name, argument in LEGACY_REG_FIELDS[field]:
            apply_override(config, f"reg.{name}.{argument}", text)
        return
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
    if isinstance(node[parts[-1]], ml_collections.ConfigDict):  # ml_collections' cast error
        raise ConfigError(f"Config field '{dotted}' is a block of fields "
                          f"({', '.join(sorted(node[parts[-1]].keys()))}); set one of them: "
                          f"--config.{dotted}.FIELD=VALUE.")
    current = node[parts[-1]]
    try:
        with node.unlocked():
            node[parts[-1]] = _convert(text, current)
    except ConfigError as err:
        raise ConfigError(f"Bad value for config field '{dotted}': {err}") from None
    except TypeError:  # ml_collections' two sentences of Python type names
        raise ConfigError(f"Bad value for config field '{dotted}': expected "
                          f"{_expected(current)}, got {text!r}.") from None
    except ValueError as err:
        raise ConfigError(f"Bad value for config field '{dotted}': {_one_line(err)}.") from None


def _expected(current) -> str:
    """What a field of `current`'s type takes, in words."""
    if isinstance(current, int):
        return "a whole number"
    if isinstance(current, float):
        return "a number"
    if isinstance(current, tuple | list):  # its own value the example (names or sizes)
        return f"a tuple such as {tuple(current)!r}"
    return f"a {type(current).__name__}"


def _one_line(err: Exception) -> str:
    """An exception's message on one line, without its final period."""
    return " ".join(str(err).split()).rstrip(".")


def is_config_file(spec: str) -> bool:
    """`--config=` names a file (`x.py` or `x.py:ARG`) rather than a preset."""
    path = spec.partition(".py:")[0] + ".py" if ".py:" in spec else spec
    return path.endswith(".py")


# The blocks of every preset (experiments/configs/*.py), which the binaries read.
REQUIRED_BLOCKS = ("model", "data", "reg", "train")


def load_config_file(spec: str) -> tuple[ml_collections.ConfigDict, str]:
    """(config, preset name) of `FILE.py[:ARG]`: the file's `get_config(ARG)`, or
    `get_config()` without ARG. The name is ARG, else the file's stem: it names the
    default workdir and the report's rows, as `./launch.sh tpu run` derives it."""
    if ".py:" in spec:
        path, _, arg = spec.partition(".py:")
        path += ".py"
    else:
        path, arg = spec, None
    if not os.path.isfile(path):
        raise ConfigError(f"Config file '{path}' does not exist.")
    module_name = "_rnnreg_config_" + os.path.basename(path)[:-3].replace("-", "_")
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None  # a .py file
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # as an import would: dataclasses, pickle need it
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error of the user's file is one line
        raise ConfigError(f"Cannot load config file '{path}': "
                          f"{type(err).__name__}: {_one_line(err)}.") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"Config file '{path}' defines no get_config(); add one that "
                          "returns an ml_collections.ConfigDict.")
    required = [p for p in inspect.signature(get_config).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if arg is None and required:
        names = getattr(module, "PRESETS", None)
        known = f" with NAME one of: {', '.join(sorted(names))}" if names else ""
        raise ConfigError(f"Config file '{path}' needs an argument: "
                          f"--config={path}:NAME{known}.")
    try:
        config = get_config(arg) if arg is not None else get_config()
    except ValueError as err:  # pick_preset's unknown name, or the file's own refusal
        raise ConfigError(_one_line(err) + ".") from None
    except (KeyError, TypeError) as err:
        call = f"get_config({arg!r})" if arg is not None else "get_config()"
        raise ConfigError(f"{call} of '{path}' failed: {type(err).__name__}: "
                          f"{_one_line(err)}.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of '{path}' returned a {type(config).__name__}, not "
                          "an ml_collections.ConfigDict.")
    missing = [b for b in REQUIRED_BLOCKS
               if not isinstance(config.get(b), ml_collections.ConfigDict)]
    if missing:  # read before any check: an AttributeError
        raise ConfigError(f"get_config() of '{path}' returned a config without the blocks "
                          f"{missing} that every experiment config has; start from a preset "
                          "(e.g. experiments.configs.ptb.tiny()) and change its fields.")
    name = arg or os.path.basename(path)[:-3]
    return config, name


def _space_value(flag: str, value: str | None, placeholder: str) -> str:
    """The value of `flag` given as the next argument (`--config.x VALUE`): a flag there,
    or none, is refused; taken as the value, `--config.paper.source --workdir=W` recorded
    `--workdir=W` as the source and trained in the default workdir. A value that starts
    with `--` goes after `=`."""
    if value is None or value.startswith("--"):
        raise ConfigError(f"{flag} needs a value ({flag}={placeholder}).")
    return value


def split_config_args(argv: list[str], presets: Presets) -> tuple[ml_collections.ConfigDict,
                                                                 list[str]]:
    """Build the config from `--config=NAME` and `--config.x=v`; return the rest of argv."""
    name, overrides, rest = None, [], [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                value = _space_value(arg, next(args, None), "VALUE")
            overrides.append((key, value))
        elif arg == "--config" or arg.startswith("--config="):
            name = (arg.partition("=")[2] if "=" in arg
                    else _space_value(arg, next(args, None), "NAME"))
        else:
            rest.append(arg)
    if name is None:
        raise ConfigError(f"Pass --config=NAME with one of: {', '.join(sorted(presets))}.")
    if is_config_file(name):
        config, name = load_config_file(name)
    else:
        try:
            config = pick_preset(presets, name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    with config.unlocked():
        config.preset = name
    for key, value in overrides:
        if key == "preset":  # it renamed the run: its default workdir, its report row and
            # the preset the report compares its settings with
            raise ConfigError("config.preset is the name --config gives the run; pick the "
                              "preset with --config=NAME and the folder with --workdir=DIR.")
        apply_override(config, key, value)
    return config, rest




def make_flags_parser(presets: Presets, holder: dict):
    """An `absl.app.run` flags parser that also builds the config into `holder`."""

    def parser(argv: list[str]) -> list[str]:
        if HELP_FLAGS.intersection(argv) and not any(
                a == "--config" or a.startswith("--config=") for a in argv):
            # Help needs no preset: name them, then absl prints the usage and exits.
            print(f"Presets (--config=NAME): {', '.join(sorted(presets))}.")
            rest = [a for a in argv if not a.startswith("--config.")]
        else:
            try:
                config, rest = split_config_args(argv, presets)
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
            holder["config"] = config
        return parse_flags(rest)

    return parser
