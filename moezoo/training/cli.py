"""MoezooCLI: LightningCLI with the omegaconf parser, moezoo's run-directory callbacks, and a test after fit."""

from __future__ import annotations

import difflib
import importlib
import logging
import re
import sys
import textwrap
import zipfile
from argparse import ArgumentError
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from moezoo.errors import MoezooError

from .callbacks import ExpertLoadHeatmap, MetricsJson, PredictionWriter
from .task import TaskModule


class _NoAdverts(logging.Filter):
    """Drops Lightning's "try installing litlogger" tip, printed on every run: not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())

def declared_links(args: list[str]) -> dict[str, str]:
    """The ``model_links`` ({data attribute: model argument}) of the data class that ``args`` name last.

    The data class is named by a ``--config`` file's ``data.class_path`` (the task's config comes first), by
    ``--data.class_path`` or by ``--data CLASS``; each is imported here, before the parser is built, so that a family
    declares its links on its own data module and the core names none. A name that does not import is left to the
    parser, which reports it.
    """
    names = []
    for i, arg in enumerate(args):
        key, value = arg.split("=", 1) if "=" in arg else (arg, args[i + 1] if i + 1 < len(args) else "")
        if key == "--config":
            try:
                config = yaml.safe_load(Path(value).read_text())
            except (OSError, yaml.YAMLError):
                continue  # the parser says what is wrong with the file
            data = config.get("data") if isinstance(config, dict) else None
            if isinstance(data, dict) and isinstance(data.get("class_path"), str):
                names.append(data["class_path"])
        elif key in ("--data.class_path", "--data") and "." in value and not value.endswith((".yaml", ".yml")):
            names.append(value)
    # the last one named is the class the run uses (a flag overrides the config before it): only its links count;
    # merging an earlier class's would link two data attributes to one model argument, and which of the two wins
    # is then up to jsonargparse's order of applying links (it varied between runs)
    for name in reversed(names):
        module, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError, ValueError):
            continue
        return dict(getattr(cls, "model_links", {}))
    return {}


# A jsonargparse parse error is a tree: "Parser key" and "Problem with given class_path" blocks (with a Union's
# alternatives between them) around one reason. config_error walks down to the reason and says it in one line.
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)":$')
_CLASS_PATH = re.compile(r"Problem with given class_path '(?P<class_path>[^']+)':$")
_UNION = "Does not validate against any of the Union subtypes"
_NOT_ACCEPTED = re.compile(r"(?:Option|Subcommand '[^']+' does not accept option|"
                           r"Group '(?P<group>[^']+)' does not accept option) '(?P<key>[^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.+)")
_EXPECTED = re.compile(r"Expected a (?P<type>.+?)\. Got value: (?P<value>.*)")
_NONE = "Expected a <class 'NoneType'>"


def _union_alternatives(lines: list[str]) -> tuple[list[str], str | None]:
    """The indented "- " items under a Union error's "Errors:" line (each a block of text), and its given value."""
    items, given, depth = [], None, None
    for line in lines:
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if depth is not None and indent > depth and items:  # inside an item (which may hold a Union of its own)
            items[-1].append(line)
        elif depth is not None and indent == depth and text.startswith("- "):
            items.append([text[2:]])
        elif depth is None and text == "Errors:":
            depth = indent + 2
        else:
            depth = None
            if text.startswith("Given value: "):
                given = text.removeprefix("Given value: ")
    return [item[0] + "\n" + textwrap.dedent("\n".join(item[1:])) for item in items], given


def _innermost(message: str) -> tuple[list[tuple[str, str]], str]:
    """(path, reason): the ("key", name) and ("class", class_path) blocks around the reason, outermost first."""
    path, text = [], message
    while True:
        lines = textwrap.dedent(text).strip().splitlines() or [""]
        head, body = lines[0].strip(), "\n".join(lines[1:])
        if match := _PARSER_KEY.match(head):
            path.append(("key", match["key"]))
        elif match := _CLASS_PATH.match(head):
            path.append(("class", match["class_path"]))
        elif head == _UNION:
            alternatives, given = _union_alternatives(lines[1:])
            others = [a for a in alternatives if a.strip() != _NONE]
            nested = [a for a in others if not a.startswith("Expected a ")]
            if nested:  # the alternative that got as far as a class: its problem is the user's
                body = nested[0]
            else:  # plain types, e.g. int | None: "expected int or null"
                types = [a.strip().removeprefix("Expected a ") for a in others]
                types += ["null"] if len(others) < len(alternatives) else []
                return path, f"Expected a {' or '.join(types)}. Got value: {given}"
        else:
            return path, "\n".join(lines)
        text = textwrap.dedent(body)


def _type_name(typehint: str) -> str:
    """jsonargparse's spelling of a type as a user reads it: int, one of 'a', 'b', null."""
    typehint = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", typehint).replace("NoneType", "null")
    typehint = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", typehint)
    return typehint.replace("typing.", "")


def _argument_names(class_path: str) -> list[str]:
    """The arguments that ``class_path`` takes, as jsonargparse resolves them; empty if it cannot be inspected."""
    try:
        module, _, name = class_path.rpartition(".")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name))
    except Exception:  # only for a suggestion: the error itself is still reported
        return []
    dests = (a.dest for a in parser._actions if a.dest != "help" and not a.dest.endswith(".help"))
    return list(dict.fromkeys(d.split(".")[0] for d in dests))  # a nested dataclass's fields under its name


def config_error(message: str, parser, stage: str) -> str:
    """One line for a jsonargparse parse error of ``moezoo STAGE``: the key, what is valid, the closest valid name.

    ``parser`` is the subcommand's parser: its options are the valid top-level keys.
    """
    path, reason = _innermost(message)
    keys, owner, help_hint = [], None, f"moezoo {stage} --help"
    for kind, name in path:
        if kind == "key":
            keys.extend(name.split("."))
            continue
        if len(keys) == 1 and owner is None:  # --model / --data / --optimizer: a class chosen by class_path
            keys.append("init_args")
            help_hint = f"moezoo {stage} --{keys[0]}.help {name}"
        owner = name
    hint = f" (see `{help_hint}`)"
    first_line = reason.strip().splitlines()[0] if reason.strip() else message.strip().splitlines()[0]

    unknown = _NOT_ACCEPTED.match(first_line)
    typed = ".".join(k for k in (unknown["group"], unknown["key"]) if k) if unknown else None
    if unknown is None and (unknown := _UNRECOGNIZED.match(first_line)):
        typed = unknown["args"].split()[0].lstrip("-").split("=")[0]
    if typed is not None:
        key = ".".join([*keys, typed])
        if owner is not None:
            names = _argument_names(owner)
            first, *rest = typed.split(".")
            close = difflib.get_close_matches(first, names, n=1)
            suggestion = ".".join([*keys, close[0], *rest]) if close else None
            where, valid = f"{owner.rsplit('.', 1)[-1]} takes no argument {first!r}", ", ".join(names)
        else:  # a top-level key: trainer.*, model, data, ckpt_path, ...
            options = [a.dest for a in parser._actions if a.dest not in ("help", "==SUPPRESS==")]
            close = difflib.get_close_matches(typed, options, n=1)
            suggestion = close[0] if close else None
            where, valid = "unknown option", ", ".join(sorted({o.split(".")[0] for o in options}))
        mean = f"; did you mean {suggestion}?" if suggestion else ";"
        return f"{key}: {where}{mean} valid: {valid}{hint}"

    key = ".".join(keys)
    if expected := _EXPECTED.match(first_line):
        value = expected["value"]
        choices = re.findall(r"'([^']*)'", expected["type"]) if "Literal" in expected["type"] else []
        close = difflib.get_close_matches(value, choices, n=1)
        mean = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: expected {_type_name(expected['type'])}, got {value!r}{mean}{hint}"
    if owner is not None and path[-1] == ("class", owner):  # e.g. a class_path that does not import
        key = ".".join([*(keys[:-1] if keys[-1:] == ["init_args"] else keys), "class_path"])
        return f"{key}: {owner!r}: {first_line} (see `moezoo {stage} --help`)"
    return f"{key}: {first_line}{hint}" if key else f"{first_line}{hint}"


# ckpt_path values that are not files: Lightning resolves them (or a URL's filesystem reads it)
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def _is_local_file_path(ckpt_path: str) -> bool:
    return ckpt_path not in _SPECIAL_CKPT_PATHS and "://" not in ckpt_path and not ckpt_path.startswith("registry")


def unreadable_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be loaded (truncated, corrupt), or None if it can.

    ``torch.save`` writes a zip archive whose members carry CRC-32s: reading them all finds a truncated or damaged
    file without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except Exception as err:  # BadZipFile for a truncated file; any failure to read means it cannot be loaded
        return f"truncated or not a checkpoint: {err}"
    if bad is not None:
        return f"corrupt data in {bad}"
    if not any(name.endswith("data.pkl") for name in names):
        return "not a PyTorch checkpoint"
    return None


@rank_zero_only
def _warn(message: str) -> None:
    sys.stderr.write(f"moezoo: warning: {message}\n")


class MoezooCLI(LightningCLI):
    """Every run writes into ``--trainer.default_root_dir`` (its run directory):

    - ``checkpoints/last.ckpt`` after every epoch (resume with ``--ckpt_path last``) and ``checkpoints/best-*.ckpt``
      by the task's validation metric;
    - ``expert_load/epoch_NNN.png`` and ``metrics.json``; Lightning's own logs under ``lightning_logs/``;
    - for ``predict``, ``predictions.pt`` (and ``predictions.csv`` for one label per sample).

    ``fit`` ends by testing the best checkpoint when the datamodule has a test split. Sizes the data decides
    (classes, channels, feature widths, vocabularies: the data module's ``model_links``) reach the model's
    arguments by ``link_arguments`` when both are instantiated.

    With ``--ckpt_path``, Lightning takes the model's arguments from the checkpoint (so the architecture matches it);
    ``--model.*`` flags typed on the command line still win over them (e.g. ``moezoo test ... --model.cfg_scale 1``).
    """

    def __init__(self, args: list[str], run_info: dict | None = None, weights: Path | None = None,
                 launch_argv: list[str] | None = None):
        self._args = list(args)
        # what Lightning's launcher re-runs in each extra process (DDP, expert parallel): the command as typed
        self._launch_argv = launch_argv
        self._run_info = dict(run_info or {})  # the task variant and the command, written to metrics.json
        self._weights = weights  # a hub folder whose model.safetensors the model starts from (--weights)
        if weights is not None:
            self._run_info["weights"] = str(weights)
        self._links = declared_links(self._args)
        super().__init__(
            TaskModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # parse errors raise, for config_error to say them in one line (not jsonargparse's usage dump)
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            args=args,
        )

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise self._config_error(err) from None

    def _config_error(self, err: ArgumentError) -> MoezooError:
        stage = self._args[0] if self._args and self._args[0] in self.subcommands() else None
        parser = self._subcommand_parsers.get(stage, self.parser) if stage else self.parser
        try:
            return MoezooError(config_error(str(err), parser, stage or "fit"))
        except Exception:  # a message shaped unlike any seen: still one line
            return MoezooError(" ".join(line.strip() for line in str(err).splitlines()))

    def add_arguments_to_parser(self, parser) -> None:
        for attribute, argument in self._links.items():
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{argument}", apply_on="instantiate")

    def _model_flags(self) -> dict:
        """The ``--model.*`` flags of the command line as a nested dict of YAML-typed values under ``init_args``."""
        flags, args = {}, self._args
        for i, arg in enumerate(args):
            if not arg.startswith("--model."):
                continue
            key, value = arg.split("=", 1) if "=" in arg else (arg, args[i + 1] if i + 1 < len(args) else "true")
            path = key[len("--model."):].split(".")
            if path[0] not in ("init_args", "class_path", "dict_kwargs"):
                path = ["init_args", *path]
            node = flags
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = yaml.safe_load(value)
        return flags

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and _is_local_file_path(str(ckpt_path)):
            # an explicit file is the user's choice: no fallback to another one, unlike `--ckpt_path last`
            if not Path(ckpt_path).exists():
                raise MoezooError(f"ckpt_path: no such checkpoint file: {ckpt_path}")
            # (a folder is a sharded checkpoint, FSDP's or ModelParallelStrategy's: Lightning reads it)
            if Path(ckpt_path).is_file() and (reason := unreadable_checkpoint(Path(ckpt_path))):
                raise MoezooError(f"ckpt_path: cannot read checkpoint {ckpt_path} ({reason})")
        try:
            super()._parse_ckpt_path()
            flags = self._model_flags()
            if flags and ckpt_path and Path(ckpt_path).is_file():  # only then did Lightning replace the model's args
                model = self.config[subcommand].model
                flags.setdefault("class_path", model.class_path)  # the flags refine the model chosen so far
                self.config = self.parser.parse_object({subcommand: {"model": flags}}, self.config)
        except ArgumentError as err:
            raise self._config_error(err) from None

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._weights is not None:
            from moezoo import hub

            self.model.configure_model()  # layers built from the linked sizes, then the weights into them
            hub.load_weights(self.model, Path(self._weights) / hub.WEIGHTS_NAME)

    def before_instantiate_classes(self) -> None:
        """Rejects batch sizes and worker counts a DataLoader would reject, by their keys, before building anything."""
        if self._launch_argv is not None:  # parsed already, so LightningCLI no longer sees both args and sys.argv
            sys.argv = list(self._launch_argv)
        data = self._get(self.config, "data")
        init_args = data.get("init_args") if data is not None else None
        for key, value in (init_args.items() if init_args is not None else ()):
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if key.rsplit(".", 1)[-1].endswith("batch_size") and value < 1:
                raise MoezooError(f"data.init_args.{key}: must be a positive integer, got {value}")
            if key.rsplit(".", 1)[-1].endswith("num_workers") and value < 0:
                raise MoezooError(f"data.init_args.{key}: must be 0 (load in the main process) or more, got {value}")

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = self._readable_last_checkpoint()
        return kwargs

    def _readable_last_checkpoint(self) -> str:
        """``last``, or the newest readable checkpoint of the run when the last one is damaged (a run killed while
        writing it, a full disk): a resumed run then loses epochs, not the run."""
        folders = sorted({Path(c.dirpath) for c in self.trainer.checkpoint_callbacks
                          if isinstance(c, ModelCheckpoint) and c.dirpath and Path(c.dirpath).is_dir()})
        newest_first = sorted((p for folder in folders for p in folder.glob("*.ckpt")),
                              key=lambda p: p.stat().st_mtime, reverse=True)
        lasts = [p for p in newest_first if re.fullmatch(rf"{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-\d+)?", p.stem)]
        if not lasts or (reason := unreadable_checkpoint(lasts[0])) is None:
            return "last"  # Lightning's own resolution (with none, it warns and starts afresh)
        damaged = [lasts[0]]
        for path in newest_first:
            if path == lasts[0]:
                continue
            if unreadable_checkpoint(path) is None:
                also = f" (also damaged: {', '.join(p.name for p in damaged[1:])})" if damaged[1:] else ""
                _warn(f"checkpoint {lasts[0]} is damaged ({reason}); resuming from {path}, the newest readable "
                      f"checkpoint{also}")
                return str(path)
            damaged.append(path)
        where = ", ".join(str(f) for f in folders)
        raise MoezooError(f"ckpt_path last: no readable checkpoint in {where}: "
                          f"{', '.join(p.name for p in damaged)} damaged ({lasts[0].name}: {reason})")

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        root = Path(trainer_config.get("default_root_dir") or ".")
        # the model's metric (the data may have decided it through a link, e.g. ROC-AUC for two-class graphs)
        monitor, mode = self.model.monitor, self.model.monitor_mode
        checkpointing = trainer_config.get("enable_checkpointing") is not False  # --trainer.enable_checkpointing
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            # ModelCheckpoint's save_last only writes when a best checkpoint is written: a second, unmonitored
            # callback writes last.ckpt after every epoch. The best one stays first (trainer.checkpoint_callback).
            callbacks.append(ModelCheckpoint(
                dirpath=root / "checkpoints", filename="best-{epoch:03d}", monitor=monitor, mode=mode,
                save_top_k=1,
            ))
            callbacks.append(ModelCheckpoint(
                dirpath=root / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False,
            ))
        callbacks += [ExpertLoadHeatmap(), MetricsJson(run_info=self._run_info)]
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter())
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})

    def after_fit(self):
        if self.datamodule is None or not is_overridden("test_dataloader", self.datamodule):
            return
        if not getattr(self.datamodule, "has_test", True):
            return
        if getattr(self.trainer, "interrupted", False):
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        # A weight-averaging callback (EMA, SWA) still holding its fit-time average would reload the checkpoint's
        # trained weights (``current_model_state``) over its averaged ``state_dict``: the test would score weights the
        # validation never chose. Without it the test scores the averaged weights, as ``moezoo test`` does.
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, WeightAveraging)]
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
