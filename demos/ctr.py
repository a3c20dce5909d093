"""CTR demo: a form of feature values (the data's own columns and vocabularies) -> per-task probabilities, and the
weight each gate gives each expert.

The form is the training data's: one dropdown per categorical column of its vocabulary's raw values (the values
before encoding), one number per numeric column (raw, as in the file), and the domain; a filled-in form is encoded
by the data module's own encoders (``CTRData.encode_rows``: a value outside the vocabulary -> the reserved index 0,
numbers standardised with the training split's statistics), so the model reads exactly what training gave it. The
encoders travel with the model: ``CTRData.state_dict()`` is in every checkpoint of ``moezoo fit`` and in the hub
folder's ``data.json`` (``moezoo export``). For the embedded generator the generator is rebuilt, so its test rows
can be loaded into the form; a user's file is not needed (nor read): the form starts on typical values.

The gates come from the core: the row's forward runs inside ``routing_labels(model, {})``, so every routing module
counts its gate mass (``load_by_label``'s ``"*"`` table), and the experts that several tasks' gates share (MMoE's
``net.experts``, each PLE level's, HoME's ``net.task_experts``) count it by task too (the gates' ``pool``): for one
row, that ``task`` table is [tasks, experts], each row the task gate's weights. Every other gate (PLE's shared
gates, HoME's meta and global gates, AdaptDHM's clusters) shows its own ``"*"`` row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from moezoo.errors import MoezooError
from moezoo.moe import load_by_label, routing_labels

from .skeleton import DemoModel, figure_image, guarded, header

MISSING = "(missing)"  # a test row's missing categorical value: the data reads it as the reserved index 0
FAR = 6.0  # a number this many training standard deviations from the training mean is accepted, with a note
MAX_CHOICES = 5000  # hashed fields have no vocabulary: their dropdowns offer (at most) this many test-split values


def _natural(value: str):
    """Sort key: numbers by value, then everything else as text."""
    try:
        return 0, float(value), value
    except ValueError:
        return 1, 0.0, value


@dataclass
class Fields:
    """The form of a CTR model: the data module it was trained on, its columns, and the raw rows of its test split."""

    data: object  # a CTRData, set up or with its encoders loaded (load_state_dict)
    spec: dict  # the data's columns: categorical, numeric, domain, transform
    test: pd.DataFrame | None  # the raw test rows, in the order of the data module's test split (None: unknown)

    @property
    def categorical(self) -> list[str]:
        return list(self.spec["categorical"])

    @property
    def numeric(self) -> list[str]:
        return list(self.spec["numeric"])

    @property
    def domain(self) -> str | None:
        return self.spec["domain"]

    @property
    def columns(self) -> list[str]:
        """The form's fields in order: categorical, numeric, then the domain column (when the data has one)."""
        return self.categorical + self.numeric + ([self.domain] if self.domain else [])

    def choices(self, column: str) -> list[str]:
        """The raw values of a categorical column's vocabulary (or, hashed, the values of the test split)."""
        vocab = self.data.vocab.get(column)
        if vocab is None and self.test is None:
            return []
        if vocab is None:
            values = self.data._strings(self.test[column])
            vocab = values[values != "\0missing"].unique()[:MAX_CHOICES]
        return sorted(vocab, key=_natural)

    def typical_row(self) -> dict:
        """Values to start a form with when no test row is known: each field's first vocabulary value (or missing),
        each number its training mean (the scale of the file: before log1p), the first domain."""
        values = {}
        for column in self.categorical:
            choices = self.choices(column)
            values[column] = choices[0] if choices else MISSING
        for column in self.numeric:
            stats = self.data.numeric_stats[column]
            if self.spec["transform"] == "bucketize":
                edges = np.asarray(stats[0])
                values[column] = float(edges[len(edges) // 2]) if edges.size else 0.0
            else:
                values[column] = float(np.expm1(stats[0]) if self.spec["transform"] == "log" else stats[0])
        if self.domain:
            values[self.domain] = self.data.domain_names[0]
        return values

    def row(self, index: int) -> dict:
        """Test row ``index`` as the form's raw values (a missing categorical value as ``MISSING``)."""
        raw = self.test.iloc[index]
        values = {}
        for column in self.categorical:
            text = self.data._strings(self.test[column].iloc[index:index + 1]).iloc[0]
            values[column] = MISSING if text == "\0missing" else text
        for column in self.numeric:
            number = pd.to_numeric(pd.Series([raw[column]]), errors="coerce").iloc[0]
            values[column] = None if pd.isna(number) else float(number)
        if self.domain:
            values[self.domain] = self.data._strings(self.test[self.domain].iloc[index:index + 1]).iloc[0]
        return values

    def labels(self, index: int) -> dict[str, int]:
        """The true labels of test row ``index``, per task."""
        row = self.data.splits["test"].tensors["labels"][index]
        return {task: int(row[t]) for t, task in enumerate(self.data.task_names)}


def model_fields(model) -> tuple[list[int], int, list[str], list[str]]:
    """(cardinalities, numeric fields, tasks, domains) of a built CTRTask: what its data must have."""
    features = model.features
    return ([table.num_embeddings for table in features.embeddings], features.num_numeric, list(model.tasks),
            list(model.domains))


def _sizes(fields) -> str:
    cardinalities, numeric, tasks, domains = fields
    return (f"cardinalities {cardinalities}, {numeric} numeric, tasks {', '.join(tasks)}, domains "
            f"{', '.join(domains[:6])}{', ...' if len(domains) > 6 else ''}")


def load_fields(model, data=None) -> Fields:
    """The form of ``model``, checked to have the model's fields, tasks and domains.

    With ``data`` (a CTRData), that data set up, with the raw rows of its test split. Else from the encoders that
    came with the model (``model.hub_data_state``: a hub folder's ``data.json`` or the checkpoint's data state):
    for the embedded generator's, the generator rebuilt (its test rows too, once its encoders are checked to be
    those); for a user's file, the encoders alone (no test rows: the form starts on typical values). A model that
    came with none (a folder exported before ``data.json`` existed) falls back to the generator's defaults."""
    from moezoo.tasks.ctr import CTRData

    if not hasattr(model, "features") or not hasattr(model, "tasks"):
        raise MoezooError(f"demo: {type(model).__name__} is not a built CTRTask")
    state = getattr(model, "hub_data_state", None)
    want = model_fields(model)
    if data is None and state is not None and state.get("source") != "generator":
        data, test, source = CTRData(), None, "its data.json"
        data.load_state_dict(state)
    else:
        data = CTRData() if data is None else data
        data.setup()
        test, source = data.raw_test_rows(), "the embedded generator" if data.path is None else str(data.path)
    have = ([*data.cardinalities], len(data.numeric_names), list(data.task_names), list(data.domain_names))
    other_vocabularies = test is not None and state is not None and state.get("vocab") != data.state_dict()["vocab"]
    if have != want or other_vocabularies:
        raise MoezooError(
            f"demo: the model's fields ({_sizes(want)}) are not those of {source} ({_sizes(have)})"
            f"{'' if have != want else ', nor its vocabularies'}: "
            "the form needs the vocabularies of the data the model was trained on; a hub folder carries them in "
            "data.json when exported (`moezoo export`) from a checkpoint of `moezoo fit`, and `--ckpt_path` reads "
            "them from the checkpoint")
    return Fields(data, data.spec, test)


def _category(fields: Fields, column: str, value, notes: list[str]):
    """A categorical field's raw value for the encoder (None: missing); an unknown value adds a note."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MoezooError(f"field {column} is empty: pick one of its values")
    if isinstance(value, (list, dict)):
        raise MoezooError(f"field {column} takes one value, not {type(value).__name__} {value!r}")
    text = str(value)
    if text == MISSING:
        notes.append(f"{column} is missing: the reserved index 0")
        return None
    vocab = fields.data.vocab.get(column)
    if vocab is not None and text not in vocab:
        if text.strip() in vocab:
            return text.strip()
        notes.append(f"{column} = {text!r} is not in its vocabulary: the reserved index 0 (unseen values)")
    return text


def _number(fields: Fields, column: str, value, notes: list[str]) -> float:
    """A numeric field's raw value; a value far from the training data adds a note."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MoezooError(f"field {column} is empty: give a number")
    if isinstance(value, bool):
        raise MoezooError(f"field {column} is not a number ({value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MoezooError(f"field {column} is not a number ({value!r})") from None
    if not math.isfinite(number):
        raise MoezooError(f"field {column} is not a finite number ({value!r})")
    if fields.spec["transform"] != "bucketize":
        mean, std = fields.data.numeric_stats[column]
        scaled = fields.data._numeric(pd.Series([number]), column, fields.spec["transform"], "the form")[0]
        z = (scaled - mean) / std
        if abs(z) > FAR:
            notes.append(f"{column} = {number:g} is {abs(z):.0f} standard deviations {'above' if z > 0 else 'below'} "
                         "the training mean: the model extrapolates")
    return number


def encode(fields: Fields, values: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The form's raw ``values`` (column -> value) as a batch of one row, encoded by the data module, and notes on
    the values it read in its own way (unseen categories, far-out numbers). Bad values are a MoezooError."""
    notes: list[str] = []
    row = {}
    for column in fields.categorical:
        row[column] = _category(fields, column, values.get(column), notes)
    for column in fields.numeric:
        row[column] = _number(fields, column, values.get(column), notes)
    if fields.domain:
        domain = values.get(fields.domain)
        if domain is None or not str(domain).strip():
            raise MoezooError(f"field {fields.domain} is empty: pick a domain")
        if str(domain) not in fields.data.domain_names:
            raise MoezooError(f"{fields.domain} {str(domain)!r} is not one of the data's domains "
                              f"({', '.join(fields.data.domain_names[:10])})")
        row[fields.domain] = str(domain)
    frame = pd.DataFrame({column: pd.Series([value], dtype=object if column not in fields.numeric else float)
                          for column, value in row.items()})
    return fields.data.encode_rows(frame), notes


def gate_tables(model, tables: dict) -> dict[str, dict[str, list[float]]]:
    """Per routing module, its weight per expert for the one row of the forward that ``tables`` (``load_by_label``)
    counted: the ``task`` table of the experts several tasks' gates share (a row per task), and the ``"*"`` row of
    every other gate; a task gate counted into such a pool is not repeated."""
    modules = dict(model.named_modules())
    tasks = list(model.tasks)
    gates = {}
    for name, table in tables.items():
        if "task" in table:
            counts = table["task"]["counts"]
            gates[name] = {tasks[t]: counts[t].tolist() for t in range(min(len(tasks), counts.shape[0]))
                           if counts[t].sum() > 0}
            continue
        module = modules.get(name)
        if getattr(module, "pool", None) is not None and "task" in getattr(module, "pool_labels", {}):
            continue  # a task gate: its row is in its experts' task table
        gates[name] = {"weight": table["*"]["counts"][0].tolist()}
    return gates


def predict(model, fields: Fields, values: dict) -> dict:
    """The form's row -> ``probs`` (task -> probability), ``gates`` (``gate_tables``), the encoded ``batch`` and
    ``notes``."""
    batch, notes = encode(fields, values)
    load_by_label(model, reset=True)  # start from empty tables, whatever ran before
    with torch.no_grad(), routing_labels(model, {}):
        probs = torch.sigmoid(model(batch))[0]
    gates = gate_tables(model, load_by_label(model, reset=True))
    return {"probs": {task: float(p) for task, p in zip(model.tasks, probs)}, "gates": gates, "batch": batch,
            "notes": notes}


def gate_figure(gates: dict, domain: str | None):
    """One bar chart per gate table: the weight of each expert, a bar per task (or the gate's single row)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 0.4 + 2.1 * len(gates)), dpi=100, layout="constrained")
    axes = figure.subplots(len(gates), 1, squeeze=False)[:, 0]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for ax, (name, rows) in zip(axes, gates.items()):
        num_experts = len(next(iter(rows.values())))
        width = 0.8 / len(rows)
        for r, (label, weights) in enumerate(rows.items()):
            ax.bar(np.arange(num_experts) + (r - (len(rows) - 1) / 2) * width, weights, width, label=label,
                   color=colours[r % len(colours)])
        ax.set_xticks(range(num_experts), [f"e{e}" for e in range(num_experts)], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("weight", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        title = name
        if set(rows) != {"weight"}:
            title += ": each task's gate over these experts" + (f" ({domain})" if domain else "")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_title(title, fontsize=9)
    figure.suptitle("gate weight per expert", fontsize=10)
    return figure_image(figure)


def _elem(column: str) -> str:
    return "field-" + re.sub(r"[^A-Za-z0-9_-]", "-", column)


def probability_text(p: float) -> str:
    """3 decimals, or 2 significant digits below 0.01 (a purchase rate of 0.0003 is not 0.000)."""
    return f"{p:.3f}" if p >= 0.01 else f"{p:.2g}"


def _same(a, b) -> bool:
    """Whether a form value is still the loaded row's (numbers by value, anything else as text)."""
    if isinstance(b, float) or isinstance(a, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def build(shown: DemoModel):
    import gradio as gr

    model = shown.model
    fields = load_fields(model)
    tasks = list(model.tasks)
    columns = fields.columns
    has_rows = fields.test is not None
    first = fields.row(0) if has_rows else fields.typical_row()

    def loaded_row(index: float):
        if not has_rows:
            raise MoezooError("no test rows: the demo has this model's encoders (data.json), not its data")
        if index is None:
            raise MoezooError("give the index of a test row")
        index = int(index) % len(fields.test)
        values = fields.row(index)
        labels = fields.labels(index)
        where = f" ({values[fields.domain]})" if fields.domain else ""
        truth = ", ".join(f"{task} {label}" for task, label in labels.items())
        status = f"Test row {index} of {len(fields.test)}{where}: true labels {truth}. Press **Predict**."
        return (*[values[c] for c in columns], {"index": index, "values": values, "labels": labels}, status)

    def answer(*args):
        *form, loaded = args
        values = dict(zip(columns, form))
        result = predict(model, fields, values)
        probs = result["probs"]
        changed = None
        if loaded:
            changed = [c for c in columns if not _same(values[c], loaded["values"][c])]
        truth = loaded["labels"] if loaded and not changed else {}
        table = pd.DataFrame({"task": tasks, "probability": [float(f"{probs[t]:.4g}") for t in tasks],
                              "test row label": [str(truth[t]) if truth else "" for t in tasks]})
        status = ", ".join(f"{task} {probability_text(probs[task])}" for task in tasks) + "."
        if loaded:
            labels = ", ".join(f"{task} {label}" for task, label in loaded["labels"].items())
            status += (f" Test row {loaded['index']}: true labels {labels}." if not changed else
                       f" Test row {loaded['index']} with {', '.join(changed)} changed (its labels: {labels}).")
        if result["notes"]:
            status += " Note: " + "; ".join(result["notes"]) + "."
        numbers = {name: {row: [round(w, 4) for w in weights] for row, weights in rows.items()}
                   for name, rows in result["gates"].items()}
        domain = values[fields.domain] if fields.domain else None
        return table, gate_figure(result["gates"], domain), numbers, status

    what = (f"Set the feature values of one impression (the training data's columns: {len(fields.categorical)} "
            f"categorical, {len(fields.numeric)} numeric{', the domain' if fields.domain else ''})"
            f"{', or load a row of the test split' if has_rows else ''}, then **Predict**: the probability of each "
            f"task ({', '.join(tasks)}) and the weight each gate gives each expert. A value outside a field's "
            "vocabulary is read as the data reads unseen values (the reserved index 0).")
    with gr.Blocks(title="moezoo: CTR") as app:
        gr.Markdown(header("Multi-task CTR model", shown, what))
        loaded = gr.State({"index": 0, "values": first, "labels": fields.labels(0)} if has_rows else None)
        with gr.Row():
            with gr.Column(scale=3):
                inputs = []
                for start in range(0, len(fields.categorical), 4):
                    with gr.Row():
                        for column in fields.categorical[start:start + 4]:
                            inputs.append(gr.Dropdown(fields.choices(column), value=first[column], label=column,
                                                      allow_custom_value=True, filterable=True,
                                                      elem_id=_elem(column), min_width=120))
                with gr.Row():
                    for column in fields.numeric:
                        inputs.append(gr.Number(value=first[column], label=column, elem_id=_elem(column),
                                                min_width=120))
                    if fields.domain:
                        inputs.append(gr.Dropdown(list(fields.data.domain_names), value=first[fields.domain],
                                                  label=fields.domain, elem_id="domain", min_width=120))
                with gr.Row():
                    index = gr.Number(label="test row index", value=0, precision=0, elem_id="row-index",
                                      visible=has_rows, min_width=120)
                    pick = gr.Button("A test row", elem_id="test-row", visible=has_rows)
                    run = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column(scale=2):
                status = gr.Markdown("Test row 0 is in the form: press **Predict**." if has_rows else
                                     "Typical values are in the form (each field's first value, each number its "
                                     "training mean): set them and press **Predict**.", elem_id="status")
                probs = gr.Dataframe(label="probability per task", headers=["task", "probability", "test row label"],
                                     datatype=["str", "number", "str"], interactive=False, elem_id="probs")
        with gr.Row():
            gates = gr.Image(label="gate weight per expert", elem_id="gates", interactive=False, format="png",
                             scale=3)
            table = gr.JSON(label="gate weights: per gate, a row per task (or the gate's own), a weight per expert",
                            elem_id="gate-table", scale=2, max_height=420)
        outputs = [probs, gates, table, status]
        run.click(guarded(answer, len(outputs)), [*inputs, loaded], outputs, api_name="predict")
        pick.click(guarded(loaded_row, len(inputs) + 2), index, [*inputs, loaded, status], api_name="test_row")
    return app
