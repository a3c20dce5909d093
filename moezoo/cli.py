"""The ``moezoo`` command: LightningCLI for fit/validate/test/predict with ``--task NAME``, plus ``moezoo tasks``.

``--task NAME`` puts the packaged ``configs/NAME.yaml`` first, so the user's own ``--config`` files and flags
override it; every LightningCLI flag keeps working.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from moezoo.errors import MoezooError

STAGES = ("fit", "validate", "test", "predict")
USAGE = """usage: moezoo {fit,validate,test,predict} --task NAME [LightningCLI flags ...]
       moezoo tasks
       moezoo export --ckpt_path CKPT --to DIR [--task NAME]
       moezoo prepare --task NAME --data.path FILE [--data.* ...] --to DIR
       moezoo weights | moezoo download NAME
       moezoo demo --task NAME [--weights NAME|DIR | --ckpt_path CKPT] [--port N] [--share false]

  fit|validate|test|predict   LightningCLI subcommands; --task NAME loads the registered config NAME
                              (`moezoo fit --task NAME --help` shows every flag)
  tasks                       list the registered task variants
  export                      a checkpoint of `moezoo fit` as a hub folder (config.json, model.safetensors,
                              README.md model card) that `<TaskClass>.from_pretrained(DIR)` loads
  prepare                     convert a data file too large for memory once (shards and fitted encoders in DIR;
                              then train with --data.path DIR and the same --data options); for data modules with
                              a prepare(to) method (the CTR family)
  weights                     list the registered pretrained weights (moezoo/weights.yaml, $MOEZOO_WEIGHTS)
  download NAME               fetch weights into the Hugging Face cache, check every sha256, print the folder
  --weights NAME              (fit|validate|test|predict) start from registered weights (or a hub folder)
  demo                        the family's Gradio app on the task's registered weights (or --weights/--ckpt_path):
                              the model's answer and its routing, at http://127.0.0.1:7860
"""


def _take_option(argv: list[str], option: str, what: str) -> tuple[str | None, list[str]]:
    """The value of ``--option V`` / ``--option=V`` (the last one given) and the other arguments."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == option:
            if i + 1 >= len(argv):
                raise MoezooError(f"{option} needs {what}")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(f"{option}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _split_task(argv: list[str]) -> tuple[str | None, list[str]]:
    return _take_option(argv, "--task", "a name (see `moezoo tasks`)")


def _weights_folder(name: str, task: str | None) -> tuple[Path, dict, str | None]:
    """``--weights NAME`` (registered, downloaded and checked) or ``--weights DIR`` (a hub folder): the folder, its
    model config and its task variant; weights of another task than ``--task`` are refused by name."""
    from moezoo import hub
    from moezoo.weights import weights_folder

    folder = weights_folder(name)
    config = hub.read_config(folder / hub.CONFIG_NAME)
    trained_as = config["moezoo"].get("task")
    if task is not None and trained_as is not None and task != trained_as:
        raise MoezooError(f"--weights {name}: these are weights of {trained_as}, not of --task {task}")
    return folder, hub.complete_config(config["model"]), trained_as


def _run_lightning(stage: str, argv: list[str]) -> None:
    from moezoo.registry import resolve_task

    task, rest = _split_task(argv)
    weights, rest = _take_option(rest, "--weights", "a name (see `moezoo weights`) or a hub folder")
    model = []
    if weights is not None:  # the weights' own model config comes after the task's config, before the user's flags
        folder, model_config, trained_as = _weights_folder(weights, task)
        task = task or trained_as
        model = ["--model", json.dumps(model_config)]
    config = [] if task is None else ["--config", str(resolve_task(task).config)]
    from moezoo.training.cli import MoezooCLI  # heavy imports only when training

    command = shlex.join(["moezoo", stage, *argv])  # as typed: recorded in the run's metrics.json
    rest_argv = list(argv)
    argv, sys.argv = sys.argv, sys.argv[:1]  # the arguments go through `args`; LightningCLI warns when both are set
    try:
        MoezooCLI(args=[stage, *config, *model, *rest], run_info={"task": task, "command": command},
                  weights=folder if weights is not None else None, launch_argv=[argv[0], stage, *rest_argv])
    except ValueError as err:  # a class rejected its arguments while LightningCLI instantiated it
        cause = err.__cause__
        while cause is not None and not isinstance(cause, MoezooError):
            cause = cause.__cause__
        if cause is not None:  # e.g. a data module's error while its sizes were read for the model
            raise cause from None
        reason = _instantiation_error(str(err))
        if reason is None:
            raise
        raise MoezooError(reason) from None
    finally:
        sys.argv = argv


def _instantiation_error(message: str) -> str | None:
    """The user-facing reason inside jsonargparse's "Does not validate against any of the Union subtypes" error:
    the first alternative's reason, with the class that rejected its arguments when the reason names it."""
    if not message.startswith("Does not validate against any of the Union subtypes"):
        return None
    from moezoo.training.cli import _union_alternatives  # the parse-error reader's own walk over the alternatives

    items, _ = _union_alternatives(message.splitlines())
    reasons = [item for item in items if not item.startswith("Expected a <class 'NoneType'>")]
    if not reasons:
        return None
    head, _, rest = reasons[0].partition("\n")
    if head.startswith("Problem with given class_path") and rest.strip() and head.count("'") >= 2:
        return f"{head.split(chr(39))[1].rsplit('.', 1)[-1]} rejected its arguments: {' '.join(rest.split())}"
    return " ".join(reasons[0].split())


class _Arguments(argparse.ArgumentParser):
    """argparse whose errors are a MoezooError (one line, exit 2 through main)."""

    def error(self, message: str):
        raise MoezooError(f"{self.prog}: {message}")


def _export(argv: list[str]) -> None:
    parser = _Arguments(prog="export", description="a checkpoint of `moezoo fit` as a hub folder")
    parser.add_argument("--ckpt_path", required=True, help="the Lightning checkpoint (e.g. checkpoints/best-*.ckpt)")
    parser.add_argument("--to", required=True, help="the folder to write (config.json, model.safetensors, README.md)")
    parser.add_argument("--task", default=None, help="the task variant (default: the one the run recorded)")
    parser.add_argument("--data", default=None, help="the model card's data and licence paragraph")
    parser.add_argument("--license", default="mit", help="the weights' licence (a Hub licence id; default mit)")
    parser.add_argument("--dtype", default=None, choices=["float16", "bfloat16"],
                        help="store the floating-point weights in this dtype (half the download; loading casts them "
                             "back to the model's float32)")
    args = parser.parse_args(argv)
    if args.task is not None:
        from moezoo.registry import resolve_task

        resolve_task(args.task)  # an unknown name lists the valid ones
    from moezoo.hub import export_checkpoint

    out = export_checkpoint(args.ckpt_path, args.to, task=args.task, data=args.data, license=args.license,
                            dtype=args.dtype)
    print(out)


def _prepare(argv: list[str]) -> None:
    """``moezoo prepare``: the task's data module from its config and the ``--data.*`` flags, then ``prepare(to)``."""
    task, rest = _split_task(argv)
    to, rest = _take_option(rest, "--to", "the directory to write")
    if task is None or to is None:
        raise MoezooError("prepare: give --task NAME, --data.path FILE and --to DIR (and the --data options "
                          "training will use)")
    unknown = [a for a in rest if a.startswith("--") and not a.startswith("--data")]
    if unknown:
        raise MoezooError(f"prepare: only --task, --to and --data.* options are read, not {unknown[0]}")
    import yaml
    from jsonargparse import ArgumentParser
    from lightning import LightningDataModule

    from moezoo.registry import resolve_task
    from moezoo.training.cli import config_error

    config = yaml.safe_load(resolve_task(task).config.read_text()) or {}
    parser = ArgumentParser(prog="moezoo prepare", exit_on_error=False, parser_mode="omegaconf")
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        parsed = parser.parse_args(["--data", json.dumps(config.get("data") or {}), *rest])
        data = parser.instantiate_classes(parsed).data
    except argparse.ArgumentError as err:
        raise MoezooError(" ".join(config_error(str(err), parser, "prepare").split())) from None
    except ValueError as err:  # the class rejected its arguments
        cause = err.__cause__
        while cause is not None and not isinstance(cause, MoezooError):
            cause = cause.__cause__
        raise (cause or MoezooError(_instantiation_error(str(err)) or " ".join(str(err).split()))) from None
    if not callable(getattr(data, "prepare", None)):
        raise MoezooError(f"prepare: the data module of {task} ({type(data).__name__}) reads its data as it is; "
                          "it has no prepare(to)")
    marker = data.prepare(Path(to))
    rows = ", ".join(f"{split} {count:,}" for split, count in marker.get("rows", {}).items())
    print(f"moezoo prepare: {to} ({rows} rows); train with --data.path {to} and the same --data options")


def _download(argv: list[str]) -> None:
    parser = _Arguments(prog="download", description="fetch registered weights and check their sha256")
    parser.add_argument("name", help="a name from `moezoo weights`")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    args = parser.parse_args(argv)
    from moezoo.weights import download

    print(download(args.name, force_download=args.force))


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _demo(argv: list[str]) -> None:
    parser = _Arguments(prog="demo", description="the Gradio demo of a task family")
    parser.add_argument("--task", default=None, help="the task variant (default: the one the weights record)")
    parser.add_argument("--weights", default=None, help="registered weights (`moezoo weights`) or a hub folder")
    parser.add_argument("--ckpt_path", default=None, help="a checkpoint of `moezoo fit`")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                        "machine only)")
    parser.add_argument("--port", type=int, default=None, help="the port (default: the first free from 7860)")
    parser.add_argument("--share", type=_flag, default=False, help="a public gradio.live link (default false)")
    args = parser.parse_args(argv)
    from moezoo.demos import build_demo, launch

    app, shown = build_demo(args.task, args.weights, args.ckpt_path)
    print(f"moezoo demo: {shown.task} from {shown.source}", flush=True)
    launch(app, host=args.host, port=args.port, share=args.share)


def _print_tasks() -> None:
    from moezoo.registry import list_tasks

    tasks = list_tasks()
    width = max((len(n) for n in tasks), default=0)
    for name, variant in tasks.items():
        print(f"{name:<{width}}  {variant.description}")


def _message(err: MoezooError) -> str:
    """The error's own line: a DataLoader worker re-raises it with the worker's traceback in front of it."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.rstrip().splitlines()[-1].removeprefix(f"{MoezooError.__module__}.{MoezooError.__name__}: ")
    return text


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return
        command, rest = argv[0], argv[1:]
        if command == "tasks":
            _print_tasks()
        elif command == "export":
            _export(rest)
        elif command == "prepare":
            _prepare(rest)
        elif command == "weights":
            from moezoo.weights import print_weights

            print_weights()
        elif command == "download":
            _download(rest)
        elif command == "demo":
            _demo(rest)
        elif command in STAGES:
            _run_lightning(command, rest)
        else:
            commands = (*STAGES, "tasks", "export", "prepare", "weights", "download", "demo")
            raise MoezooError(f"unknown command {command!r}; valid: {', '.join(commands)}")
    except MoezooError as err:
        print(f"{Path(sys.argv[0]).name or 'moezoo'}: error: {_message(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
