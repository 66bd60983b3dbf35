"""The `replast` command: one table mapping subcommands to typed functions (jsonargparse builds the options).

    replast finetune --model mobilenetv2_100 --data br35h --epochs 5 --out runs/x
    replast finetune --config run.yaml --print_config

Options accept dashes or underscores (`--reinit.lr-scale` = `--reinit.lr_scale`), and a yes/no option
given without a value means true (`--collect` = `--collect true`). Any ReplastError or parse error becomes
one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, set_parsing_settings

from replast import backends, commands
from replast.config import FinetuneConfig
from replast.errors import ConfigError, ReplastError, plain

set_parsing_settings(docstring_parse_attribute_docstrings=True)

COMMANDS: dict[str, dict[str, Any]] = {
    "models": {"help": "List the model zoo (offline pretrained weights).", "fn": commands.models},
    "datasets": {"help": "List the shipped datasets.", "fn": commands.datasets},
    "finetune": {"help": "Fine-tune one model, optionally after re-initialization.", "fn": commands.finetune,
                 "config": FinetuneConfig},
    "diagnose": {"help": "Measure plasticity per layer on your data.", "fn": commands.diagnose},
    "reinit": {"help": "Write a re-initialized model for any training script.", "fn": commands.reinit_model},
    # `sweep --config` names the study file itself, so it takes no generic config file.
    "sweep": {"help": "Run (or resume) a study of many runs.", "fn": commands.sweep, "config_file": False},
    "merge": {"help": "Add one study OUT's finished runs to another's results.", "fn": commands.merge,
              "positional": True},
    "report": {"help": "Write report.md and report.html for a study.", "fn": commands.report, "positional": True},
    "bench": {"help": "Training throughput against a plain DataLoader loop.", "fn": commands.bench},
    "demo": {"help": "The embedded default job: MobileNetV2 on Br35H, strategies compared.", "fn": commands.demo},
}


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="replast", description="Restore the plasticity of pretrained image classifiers "
                            "before fine-tuning: diagnose, re-initialize, fine-tune, compare.", exit_on_error=False)
    subcommands = parser.add_subcommands(dest="command")
    for name, entry in COMMANDS.items():
        sub = ArgumentParser(description=entry["help"], exit_on_error=False)
        if entry.get("config_file", True):
            sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
        if "config" in entry:
            sub.add_class_arguments(entry["config"], nested_key=None)
        else:
            sub.add_function_arguments(entry["fn"], as_positional=entry.get("positional", False))
        subcommands.add_subcommand(name, sub, help=entry["help"])
    return parser


def normalize_option_names(argv: Sequence[str]) -> list[str]:
    """`--reinit.lr-scale=3` → `--reinit.lr_scale=3`; values are left alone."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + sep + value
        out.append(token)
    return out


def yes_no_options(command: str) -> set[str]:
    """Option names of `command` whose default is a bool (nested config fields included)."""
    entry = COMMANDS.get(command)
    if entry is None:
        return set()
    from replast.study import flatten

    if "config" in entry:
        return {k for k, v in flatten(entry["config"]().to_dict()).items() if isinstance(v, bool)}
    defaults = {p.name: dataclasses.asdict(p.default) if dataclasses.is_dataclass(p.default) else p.default
                for p in inspect.signature(entry["fn"]).parameters.values()}  # `reinit: ReinitConfig` → reinit.*
    return {k for k, v in flatten(defaults).items() if isinstance(v, bool)}


def bare_flags_to_true(argv: Sequence[str]) -> list[str]:
    """`--collect` with no value (end of line or another option next) → `--collect true`."""
    flags = yes_no_options(argv[0]) if argv else set()
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token[2:] in flags and token.startswith("--") and (following is None or following.startswith("--")):
            out.append("true")
    return out


def check_config_files(argv: Sequence[str]) -> None:
    """A broken `--config FILE` fails with a message that names the file (jsonargparse's does not)."""
    entry = COMMANDS.get(argv[0]) if argv else None
    if entry is None or not entry.get("config_file", True):  # sweep's --config is a study file
        return
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            _check_config_file(argv[i + 1])
        elif token.startswith("--config="):
            _check_config_file(token.partition("=")[2])


def _check_config_file(value: str) -> None:
    path = Path(value)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # inline YAML longer than a file name may be
        return
    if not is_file:
        if path.suffix.lower() in CONFIG_SUFFIXES:  # anything else may be inline YAML, which jsonargparse takes
            raise ConfigError(f"config file {value} does not exist; check the path")
        return
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {value} ({type(e).__name__}); pass a YAML file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {value} is not valid YAML ({' '.join(str(e).split())[:200]}); "
                          "fix the syntax") from e
    if content is None:
        raise ConfigError(f"config file {value} is empty; write one `option: value` per line or drop --config")
    if not isinstance(content, dict):
        raise ConfigError(f"config file {value} holds a {type(content).__name__}, not a mapping of options "
                          "(option: value per line)")


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    argv = bare_flags_to_true(normalize_option_names(argv))
    check_config_files(argv)
    try:
        ns = parser.parse_args(argv)
    except SystemExit as done:  # --help and --print_config end here
        return done.code if isinstance(done.code, int) else 0
    name = ns.command
    entry = COMMANDS[name]
    args = ns[name].as_dict()
    if entry.get("config_file", True):
        args.pop("config", None)
    if "config" in entry:
        result = entry["fn"](_to_config(entry["config"], args))
    else:
        result = entry["fn"](**args)
    return int(result) if isinstance(result, int) else 0


def _to_config(cls: type, args: dict[str, Any]) -> Any:
    return cls.from_dict(args) if hasattr(cls, "from_dict") else cls(**args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    backends.keep_freed_host_memory()
    try:
        return run(argv)
    except (ReplastError, ArgumentError) as e:
        if debug:
            raise
        print(f"replast: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replast: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    text = plain(str(error))
    if isinstance(error, ArgumentError):
        text += " (see --help)"
    return text


