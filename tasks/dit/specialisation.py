"""Expert specialisation of a MoE DiT: the load of every expert by timestep and by class, and how much of the expert
choice the class (or the timestep) explains.

For each of ``bins`` timesteps (the centres of equal slices of the noise scale) the held-out images are noised as in
training (rectified flow: x = (1 - sigma) x0 + sigma eps at timestep 1000 sigma; DDPM: ``scheduler.add_noise``) and
passed once through the model with their labels (no label dropout). A forward hook on every router counts the
assignments per (timestep bin, expert) and per (class, expert). The summary number is the normalised mutual
information between the class of a token's image and the expert it was routed to,

    NMI(C; E) = 2 I(C; E) / (H(C) + H(E)),   from the joint counts n[c, e] (natural logs),

0 when routing ignores the class, 1 when the class decides the expert (ProMoE's claim: its prototypes route by
semantics, so its NMI should exceed the linear routers'). The same for the timestep bin. The unconditional expert of
ProMoE gets no tokens here (no label is dropped), so it does not dilute the numbers.
"""

from __future__ import annotations

import torch

from moezoo.moe import moe_layers
from moezoo.training import pyplot


def normalized_mutual_information(joint: torch.Tensor) -> float:
    """2 I(X; Y) / (H(X) + H(Y)) of the joint count table ``joint`` [X, Y]; 0 when either marginal is constant."""
    p = joint.double() / joint.sum().clamp_min(1)
    px, py = p.sum(1), p.sum(0)
    h_x = -(px[px > 0] * px[px > 0].log()).sum()
    h_y = -(py[py > 0] * py[py > 0].log()).sum()
    outer = px[:, None] * py[None, :]
    nz = p > 0
    mutual = (p[nz] * (p[nz] / outer[nz]).log()).sum()
    denominator = h_x + h_y
    return float(2 * mutual / denominator) if denominator > 0 else 0.0


@torch.no_grad()
def expert_load_by_timestep_and_class(model, images: torch.Tensor, labels: torch.Tensor, *, objective: str,
                                      scheduler=None, bins: int = 10, batch_size: int = 256,
                                      seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per MoE layer of ``model`` (a MoEDiT): ``by_timestep`` [bins, E] and ``by_class`` [classes, E] counts of
    assignments, over ``images`` [N, C, H, W] (model space: latents when the model runs on latents) and ``labels``."""
    layers = dict(moe_layers(model))
    if not layers:
        return {}
    num_classes, patches = model.config.num_classes, model.num_patches
    tables = {name: {"by_timestep": torch.zeros(bins, layer.router.num_experts, dtype=torch.long),
                     "by_class": torch.zeros(num_classes, layer.router.num_experts, dtype=torch.long)}
              for name, layer in layers.items()}
    current: dict[str, torch.Tensor] = {}

    def hook(name):
        def count(module, args, routing):
            sample = routing.token_index.cpu() // patches
            experts = routing.expert_index.cpu()
            table = tables[name]
            table["by_class"].index_put_((current["labels"][sample], experts), torch.ones_like(experts),
                                         accumulate=True)
            table["by_timestep"][current["bin"]] += torch.bincount(experts, minlength=table["by_timestep"].shape[1])

        return count

    handles = [layer.router.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    try:
        for b in range(bins):
            fraction = (b + 0.5) / bins  # the bin's centre on the noise scale
            current["bin"] = b
            for x0, y in zip(images.split(batch_size), labels.split(batch_size)):
                noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                if objective == "rectified_flow":
                    noisy, t = (1 - fraction) * x0 + fraction * noise, torch.full((len(y),), 1000.0 * fraction)
                else:
                    steps = scheduler.config.num_train_timesteps
                    t = torch.full((len(y),), int(fraction * steps), dtype=torch.long)
                    noisy = scheduler.add_noise(x0, noise, t)
                current["labels"] = y.cpu()
                model(noisy, t.to(x0.device), y)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return tables


def plot_load_by(tables: dict[str, dict[str, torch.Tensor]], key: str, path, ylabel: str, row_labels) -> None:
    """One heatmap per MoE layer (side by side): rows = ``row_labels`` (timestep bins or classes), columns = experts,
    each row the fraction of that row's assignments per expert."""
    plt = pyplot()
    names = list(tables)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 0.3 * len(row_labels) + 2), squeeze=False)
    for ax, name in zip(axes[0], names):
        counts = tables[name][key].float()
        share = counts / counts.sum(1, keepdim=True).clamp_min(1)
        image = ax.imshow(share.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{name}\nNMI {normalized_mutual_information(tables[name][key]):.3f}", fontsize=8)
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(row_labels)), labels=row_labels, fontsize=6)
    axes[0][0].set_ylabel(ylabel)
    fig.colorbar(image, ax=axes[0].tolist(), label="fraction of the row's assignments")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
