"""Mobility demo: a trajectory (visits with times) -> its map, the top-5 next locations, and the experts each visit
used in every MoE layer.

A trajectory is typed one visit per line, ``<location id> <day> <HH:MM>`` (e.g. ``12 Mon 08:05``), ids as the model
numbers them (1 .. N); **Example** draws one from the model itself: a city's usual first location (the counts the
model kept in training), then at a commuter's hours the next visit drawn from its own top-5. The features of each
visit (category, coordinates, visit pattern) come from the tables the model kept in training, the time gaps and jump
distances from the times and coordinates, as the data module computes them. The map plots the places the model knows
around the trajectory (degrees), the trajectory in order, and the 5 most likely next places with their
probabilities.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from moezoo.errors import MoezooError

from .skeleton import DemoModel, figure_image, guarded, header

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LINE = re.compile(r"^\s*(\d+)\s+([A-Za-z]{3})\s+(\d{1,2}):(\d{2})\s*$")
ROUTINE = ((0, 8, 0), (0, 12, 15), (0, 13, 10), (0, 18, 0), (0, 20, 30), (1, 8, 5), (1, 12, 20), (1, 17, 50))


def parse_trajectory(text: str, num_locations: int, max_len: int) -> tuple[list[int], list[float]]:
    """Location ids and times (hours since Monday 00:00, increasing) of the typed trajectory."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise MoezooError("no trajectory: type one visit per line, '<location id> <day> <HH:MM>', or press Example")
    if len(lines) > max_len:
        raise MoezooError(f"{len(lines)} visits; the model reads up to {max_len}")
    locations, hours = [], []
    for number, line in enumerate(lines, 1):
        match = LINE.match(line)
        if match is None:
            raise MoezooError(f"line {number} {line.strip()!r}: expected '<location id> <day> <HH:MM>', e.g. "
                              "'12 Mon 08:05'")
        location, day, hour, minute = int(match[1]), match[2].capitalize(), int(match[3]), int(match[4])
        if not 1 <= location <= num_locations:
            raise MoezooError(f"line {number}: location {location} is not one of the model's 1..{num_locations}")
        if day not in DAYS:
            raise MoezooError(f"line {number}: day {match[2]!r} is not one of {', '.join(DAYS)}")
        if hour > 23 or minute > 59:
            raise MoezooError(f"line {number}: {hour:02d}:{minute:02d} is not a time of day")
        t = DAYS.index(day) * 24 + hour + minute / 60
        if hours and t < hours[-1]:
            raise MoezooError(f"line {number}: {day} {hour:02d}:{minute:02d} is before the visit above it (one week, "
                              "in order)")
        locations.append(location)
        hours.append(t)
    return locations, hours


def trajectory_batch(model, city: int, gyration: int, entropy: int, locations: list[int],
                     hours: list[float]) -> dict[str, torch.Tensor]:
    """The one-window batch the data module would make of this trajectory (features from the model's tables)."""
    from moezoo.tasks.mobility.sequences import (
        DISTANCE_EDGES_KM,
        GAP_EDGES_H,
        NUM_DISTANCE_BINS,
        haversine_km,
    )

    ids = torch.tensor([locations])
    latlon = model.location_latlon[ids[0]].numpy().astype(float)
    gaps = np.diff(np.asarray(hours, dtype=float))
    gap_bins = [0] + (1 + np.searchsorted(GAP_EDGES_H, gaps, side="right")).tolist()
    jumps = haversine_km(latlon[:-1, 0], latlon[:-1, 1], latlon[1:, 0], latlon[1:, 1])
    distance_bins = [0] + [NUM_DISTANCE_BINS - 1 if np.isnan(j) else int(1 + np.searchsorted(DISTANCE_EDGES_KM, j,
                                                                                              side="right"))
                           for j in jumps]
    n = len(locations)
    return {"locations": ids, "categories": model.location_categories[ids],
            "hours": torch.tensor([[int(h) % 168 for h in hours]]), "gap_bins": torch.tensor([gap_bins]),
            "distance_bins": torch.tensor([distance_bins]), "coords": model.location_coords[ids],
            "patterns": model.location_patterns[ids], "latlon": model.location_latlon[ids],
            "targets": torch.zeros(1, n, dtype=torch.long), "mask": torch.zeros(1, n, dtype=torch.bool),
            "city": torch.tensor([city]), "user": torch.tensor([-2]), "gyration_bin": torch.tensor([gyration]),
            "entropy_bin": torch.tensor([entropy])}


def predict(model, batch: dict[str, torch.Tensor]) -> dict:
    """The next-location probabilities after the last visit [N + 1], and per MoE layer each visit's experts."""
    from moezoo.moe import MoE
    from moezoo.tasks.mobility import MarkovModel

    if isinstance(model, MarkovModel):
        scores = model.scores([-2], [int(batch["locations"][0, -1])])[0]
        probs = torch.softmax(torch.where(torch.isinf(scores), scores, scores.log1p()), -1)
        return {"prob": probs, "experts": {}}
    chosen, hooks = {}, []
    for name, layer in model.named_modules():
        if isinstance(layer, MoE):
            def keep(module, args, routing, name=name):
                per_token = [[] for _ in range(routing.num_tokens)]
                for t, e in zip(routing.token_index.tolist(), routing.expert_index.tolist()):
                    per_token[t].append(e)
                chosen[name] = per_token
            hooks.append(layer.router.register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = model(batch)[0, -1]
    finally:
        for hook in hooks:
            hook.remove()
    return {"prob": torch.softmax(logits.float(), -1), "experts": chosen}


def example_trajectory(model, city: int, seed: float) -> str:
    """A trajectory drawn from the model itself (module docstring), as text."""
    generator = torch.Generator().manual_seed(int(seed))
    counts = model.first_locations[city]
    if counts.sum() <= 0:
        raise MoezooError(f"the model kept no first locations of city {city} (it was not trained on it)")
    locations = [int(torch.multinomial(counts.float(), 1, generator=generator))]
    hours = [ROUTINE[0][0] * 24 + ROUTINE[0][1] + ROUTINE[0][2] / 60]
    for day, hour, minute in ROUTINE[1: min(len(ROUTINE), model.hparams.get("max_len", 32))]:
        batch = trajectory_batch(model, city, 1, 1, locations, hours)
        probs = predict(model, batch)["prob"]
        top = probs.topk(5).indices
        locations.append(int(top[int(torch.randint(0, 5, (1,), generator=generator))]))
        hours.append(day * 24 + hour + minute / 60)
    return "\n".join(f"{loc} {DAYS[int(h // 24)]} {int(h % 24):02d}:{round(h % 1 * 60):02d}"
                     for loc, h in zip(locations, hours))


def map_figure(model, locations: list[int], top: list[tuple[int, float]]):
    """The known places around the trajectory, the trajectory in order and the top-5 next places."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 5.2), dpi=100, layout="constrained")
    ax = figure.subplots()
    latlon = model.location_latlon.numpy()
    path = latlon[locations]
    if np.isnan(path).all():
        ax.text(0.5, 0.5, "these locations have no coordinates", ha="center", transform=ax.transAxes)
        return figure_image(figure)
    shown = np.concatenate([path, latlon[[loc for loc, _ in top]]])
    low, high = np.nanmin(shown, 0), np.nanmax(shown, 0)
    margin = np.maximum((high - low) * 0.15, 0.005)
    near = np.all((latlon >= low - margin) & (latlon <= high + margin), 1)
    ax.scatter(latlon[near, 1], latlon[near, 0], s=6, c="0.8", label="known places")
    ax.plot(path[:, 1], path[:, 0], "-o", c="tab:blue", lw=1.2, ms=4, label="trajectory")
    for i, (lat, lon) in enumerate(path):
        ax.annotate(str(i + 1), (lon, lat), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for rank, (loc, p) in enumerate(top):
        lat, lon = latlon[loc]
        ax.scatter([lon], [lat], marker="*", s=140, c="tab:red" if rank == 0 else "tab:orange", zorder=3)
        ax.annotate(f"#{rank + 1} {loc} ({p:.0%})", (lon, lat), fontsize=7, xytext=(4, -9), textcoords="offset points")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title("trajectory and the 5 most likely next places", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return figure_image(figure)


def build(shown: DemoModel):
    import gradio as gr

    model = shown.model
    cities = list(getattr(model, "city_names", None) or ["city0"])
    categories = list(model.hparams.get("category_names") or [])
    num_locations, max_len = model.num_locations, int(model.hparams.get("max_len", 32))

    def answer(city_name, gyration, entropy, text):
        if city_name not in cities:
            raise MoezooError(f"city {city_name!r} is not one of {', '.join(cities)}")
        locations, hours = parse_trajectory(text, num_locations, max_len)
        batch = trajectory_batch(model, cities.index(city_name), int(gyration), int(entropy), locations, hours)
        result = predict(model, batch)
        probs = result["prob"]
        top = [(int(i), float(probs[i])) for i in probs.topk(min(5, num_locations)).indices]

        def category(loc):
            c = int(model.location_categories[loc]) if hasattr(model, "location_categories") else 0
            return categories[c - 1] if 0 < c <= len(categories) else ""

        label = {f"{loc} {category(loc)}".strip(): p for loc, p in top}
        visits = []
        for i, (loc, h) in enumerate(zip(locations, hours)):
            row = {"visit": i + 1, "location": loc, "category": category(loc),
                   "time": f"{DAYS[int(h // 24)]} {int(h % 24):02d}:{round(h % 1 * 60):02d}"}
            for layer, per_token in result["experts"].items():
                row[layer] = per_token[i]
            visits.append(row)
        status = (f"Next place: **{top[0][0]}** {category(top[0][0])} ({top[0][1]:.1%}) after {len(locations)} "
                  f"visits in {city_name}.")
        return label, map_figure(model, locations, top), visits, status

    def example(city_name, seed):
        if city_name not in cities:
            raise MoezooError(f"city {city_name!r} is not one of {', '.join(cities)}")
        if not hasattr(model, "first_locations"):
            raise MoezooError("this model keeps no first locations: type a trajectory")
        return example_trajectory(model, cities.index(city_name), seed), "an example drawn from the model: **Predict**"

    with gr.Blocks(title="moezoo: next-location prediction") as app:
        gr.Markdown(header("Next-location prediction", shown,
                           "Type a trajectory, one visit per line as `<location id> <day> <HH:MM>` (or press "
                           "**Example**), then **Predict**: the map of the trajectory and of the 5 most likely next "
                           "places, and the experts every visit used in each MoE layer."))
        with gr.Row():
            with gr.Column():
                city = gr.Dropdown(cities, value=cities[0], label="city", elem_id="city")
                with gr.Row():
                    gyration = gr.Slider(0, 3, value=1, step=1, label="user's gyration quartile", elem_id="gyration")
                    entropy = gr.Slider(0, 3, value=1, step=1, label="user's entropy quartile", elem_id="entropy")
                text = gr.Textbox(label="trajectory", lines=8, placeholder="12 Mon 08:05\n40 Mon 12:30",
                                  elem_id="trajectory")
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0, elem_id="seed")
                    make = gr.Button("Example", elem_id="example")
                run = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                label = gr.Label(label="top-5 next places", num_top_classes=5, elem_id="top5")
        picture = gr.Image(label="map", elem_id="map", interactive=False, format="png")
        table = gr.JSON(label="per visit: location, category, time and its experts in each MoE layer",
                        elem_id="visits")
        outputs = [label, picture, table, status]
        run.click(guarded(answer, len(outputs)), [city, gyration, entropy, text], outputs, api_name="predict")
        make.click(guarded(example, 2), [city, seed], [text, status], api_name="example")
    return app
