"""Diffusion objectives against their formulas, and the CFG pipeline on diffusers' schedulers."""

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from moezoo.moe import moe_layers, routing_stats
from moezoo.tasks.dit import MoEDiT, MoEDiTPipeline, ddpm_loss, rectified_flow_loss

TINY = dict(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10,
            num_experts=4, moe_every=2, class_dropout_prob=0.0)


class Recorder(torch.nn.Module):
    """Stands in for the model: records its inputs and returns a fixed linear function of them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((x.clone(), torch.as_tensor(t).clone(), y.clone()))

        class Out:
            sample = 0.5 * x

        return Out()


def test_rectified_flow_loss_is_the_velocity_error_at_a_logit_normal_sigma():
    x0, labels = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    model = Recorder()
    loss = rectified_flow_loss(model, x0, labels, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.sigmoid(torch.randn(4, generator=g)).view(-1, 1, 1, 1)
    noisy = (1 - sigma) * x0 + sigma * noise
    (x_seen, t_seen, _), = model.calls
    torch.testing.assert_close(x_seen, noisy)
    torch.testing.assert_close(t_seen, 1000 * sigma.flatten())
    torch.testing.assert_close(loss, ((0.5 * noisy - (noise - x0)) ** 2).mean())


def test_ddpm_loss_is_the_noise_error_at_scheduler_noised_inputs():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])
    model = Recorder()
    loss = ddpm_loss(model, scheduler, x0, labels, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    steps = torch.randint(0, 1000, (3,), generator=g)
    alpha_bar = scheduler.alphas_cumprod[steps].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(model.calls[0][0], noisy)
    torch.testing.assert_close(loss, ((0.5 * noisy - noise) ** 2).mean())


@pytest.mark.parametrize("scheduler", [FlowMatchEulerDiscreteScheduler(), DDPMScheduler(num_train_timesteps=1000)],
                         ids=["rectified-flow", "ddpm"])
def test_pipeline_samples_images_deterministically_and_guidance_doubles_the_batch(scheduler):
    torch.manual_seed(0)
    model = MoEDiT(routing="promoe", **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pipe = MoEDiTPipeline(transformer=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe([1, 2], guidance_scale=1.5, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    (name, _), = moe_layers(model)
    load = routing_stats(model)[name]["load"]
    assert load[-1] == pytest.approx(0.5), "the null-class half of a guided pass goes to the unconditional expert"
    again = pipe([1, 2], guidance_scale=1.5, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(images, again)
    pipe([1, 2], guidance_scale=1.0, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert routing_stats(model)[name]["load"][-1] == 0, "no unconditional pass without guidance"


def test_pipeline_saves_and_loads_with_diffusers(tmp_path):
    torch.manual_seed(0)
    pipe = MoEDiTPipeline(transformer=MoEDiT(routing="expert_choice", **TINY).eval(),
                          scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path)
    loaded = MoEDiTPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.transformer, MoEDiT) and loaded.transformer.config.routing == "expert_choice"
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)


def test_a_few_rectified_flow_steps_lower_the_loss_on_fixed_images():
    torch.manual_seed(0)
    model = MoEDiT(routing="token_choice", **TINY).train()
    x0, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_at(seed):
        return rectified_flow_loss(model, x0, labels, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(loss_at(s) for s in range(4)) / 4
    for step in range(40):
        optimizer.zero_grad()
        loss_at(100 + step).backward()
        optimizer.step()
    with torch.no_grad():
        after = sum(loss_at(s) for s in range(4)) / 4
    assert after < 0.8 * before
