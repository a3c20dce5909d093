"""The ``moezoo`` command: LightningCLI for fit/validate/test/predict with ``--task NAME``, plus ``moezoo tasks``.

``--task NAME`` puts the packaged ``configs/NAME.yaml`` first, so the user's own ``--config`` files and flags
override it; every LightningCLI flag keeps working.
"""

from __future__ import annotations

import sys
from pathlib import Path

from moezoo.errors import MoezooError

STAGES = ("fit", "validate", "test", "predict")
USAGE = """usage: moezoo {fit,validate,test,predict} --task NAME [LightningCLI flags ...]
       moezoo tasks

  fit|validate|test|predict   LightningCLI subcommands; --task NAME loads the registered config NAME
                              (`moezoo fit --task NAME --help` shows every flag)
  tasks                       list the registered task variants
"""


def _split_task(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, task, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--task":
            if i + 1 >= len(argv):
                raise MoezooError("--task needs a name (see `moezoo tasks`)")
            task, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return task, rest


def _run_lightning(stage: str, argv: list[str]) -> None:
    from moezoo.registry import resolve_task

    task, rest = _split_task(argv)
    config = [] if task is None else ["--config", str(resolve_task(task).config)]
    from moezoo.training.cli import MoezooCLI  # heavy imports only when training

    argv, sys.argv = sys.argv, sys.argv[:1]  # the arguments go through `args`; LightningCLI warns when both are set
    try:
        MoezooCLI(args=[stage, *config, *rest])
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
    """The user-facing reason inside jsonargparse's "Does not validate against any of the Union subtypes" error."""
    if not message.startswith("Does not validate against any of the Union subtypes"):
        return None
    reasons = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return reasons[0] if reasons else None


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
        elif command in STAGES:
            _run_lightning(command, rest)
        else:
            raise MoezooError(f"unknown command {command!r}; valid: {', '.join((*STAGES, 'tasks'))}")
    except MoezooError as err:
        print(f"{Path(sys.argv[0]).name or 'moezoo'}: error: {_message(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
