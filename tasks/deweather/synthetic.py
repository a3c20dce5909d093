"""The embedded default of the deweathering family: rain, snow and haze synthesised on real photographs (synthetic).

No installed package ships weather/clean image pairs, so with no data the family trains on clean photographs bundled
in scikit-image, degraded here by one of three weathers: the hidden tasks the experts may specialise on. Every
parameter below is drawn uniformly from the range given, from a numpy Generator, so a sample is fixed by its seed.

Photographs, split by photograph so that test measures restoration of unseen scenes:

- train: astronaut, stereo_motorcycle (left and right views), immunohistochemistry, camera (grey, repeated to three
  channels), hubble_deep_field; random ``crop_size`` crops, flipped horizontally half the time;
- val: coffee; test: chelsea and rocket; each resized (antialiased) so that its long side is ``eval_size``,
  centre-cropped to a multiple of 8 on each side, and degraded by every weather with ``variants`` seeds.

Weathers, on a clean image J in [0, 1]:

- rain: drops (a pixel is one with probability ``density`` in [0.002, 0.008], of brightness in [0.6, 1]) smeared by
  a line kernel of ``length`` in [7, 21] px (odd) at ``angle`` in [-30, 30] degrees from vertical (positive: the lower
  end to the right), slightly blurred across (sigma 0.5 px) and of peak 1, into streaks S clipped to [0, 1];
  I = clip(J + a S, 0, 1) with ``intensity`` a in [0.5, 0.9].
- snow: three layers of flakes, Gaussian dots of peak 1 and sigma 0.6, 1.2 and 2.4 px at densities (flakes per
  pixel) in [0.004, 0.012], [0.0008, 0.003] and [0.0001, 0.0005], each layer of opacity in [0.7, 1]; their union
  m = 1 - prod_i (1 - m_i) is motion-blurred along a line of ``blur`` 1, 3 or 5 px at ``angle`` in [-45, 45] degrees
  (falling snow), and flakes of ``brightness`` b in [0.85, 1] are composited with a lighten blend
  I = J (1 - m) + m max(J, b), so snow never darkens a pixel (a flake before a white sky is not seen).
- haze: the atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d) (Koschmieder; RESIDE ITS's ranges),
  ``beta`` in [0.6, 1.8] and grey ``airlight`` A in [0.7, 1]; the depth d is a vertical ramp (far at the top) plus
  smooth noise (a 4 x 4 grid of normal values, cubic-interpolated, of weight ``depth_noise`` in [0.2, 0.6]),
  normalised to [0, 1]. The motorcycle's real disparity is not used: a train crop carries no depth.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import ndimage, signal
from torch.utils.data import Dataset

from moezoo.errors import MoezooError

WEATHERS = ("rain", "snow", "haze")
PHOTOS = {
    "train": ("astronaut", "motorcycle_left", "motorcycle_right", "immunohistochemistry", "camera",
              "hubble_deep_field"),
    "val": ("coffee",),
    "test": ("chelsea", "rocket"),
}
_SALT = {"val": 1, "test": 2}  # eval seeds are [seed, index, salt]: never a train seed [seed, index]
_FLAKES = ((0.6, (0.004, 0.012)), (1.2, (0.0008, 0.003)), (2.4, (0.0001, 0.0005)))  # (sigma px, density range)


@functools.cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    else:
        image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image.astype(np.float32) / 255.0
    image.setflags(write=False)  # shared by every caller through the cache
    return image


def load_photos(split: str) -> list[np.ndarray]:
    """The clean photographs of ``split`` (train / val / test), each float32 [H, W, 3] in [0, 1], read-only."""
    if split not in PHOTOS:
        raise MoezooError(f"synthetic weather: split {split!r} is not one of {', '.join(PHOTOS)}")
    return [_photo(name) for name in PHOTOS[split]]


def line_kernel(length: int, angle: float) -> np.ndarray:
    """A [length, length] kernel of ones on the centred line at ``angle`` degrees from vertical, zeros elsewhere."""
    kernel = np.zeros((length, length), np.float32)
    centre, theta = (length - 1) / 2, np.deg2rad(angle)
    t = np.linspace(-centre, centre, 4 * length)
    kernel[np.rint(centre + t * np.cos(theta)).astype(int), np.rint(centre + t * np.sin(theta)).astype(int)] = 1.0
    return kernel


def rain(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Rain streaks added to ``clean`` [H, W, 3]: (rainy image, its parameters); see the module docstring."""
    params = {"density": rng.uniform(0.002, 0.008), "length": int(rng.choice(np.arange(7, 22, 2))),
              "angle": rng.uniform(-30.0, 30.0), "intensity": rng.uniform(0.5, 0.9)}
    shape = clean.shape[:2]
    drops = (rng.random(shape) < params["density"]) * rng.uniform(0.6, 1.0, shape)
    kernel = ndimage.gaussian_filter(line_kernel(params["length"], params["angle"]), 0.5)
    streaks = np.clip(signal.fftconvolve(drops, kernel / kernel.max(), mode="same"), 0.0, 1.0)
    return np.clip(clean + params["intensity"] * streaks[..., None], 0.0, 1.0).astype(np.float32), params


@functools.cache
def _dot_peak(sigma: float) -> float:
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return float(ndimage.gaussian_filter(delta, sigma)[16, 16])


def snow(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Snow flakes of three sizes composited on ``clean`` [H, W, 3]: (snowy image, its parameters)."""
    shape, params, clear = clean.shape[:2], {}, np.ones(clean.shape[:2])
    for name, (sigma, density) in zip(("small", "medium", "large"), _FLAKES):
        params[f"density_{name}"] = rng.uniform(*density)
        flakes = ndimage.gaussian_filter((rng.random(shape) < params[f"density_{name}"]).astype(np.float64), sigma)
        clear *= 1.0 - rng.uniform(0.7, 1.0) * np.clip(flakes / _dot_peak(sigma), 0.0, 1.0)
    params.update(blur=int(rng.choice([1, 3, 5])), angle=rng.uniform(-45.0, 45.0), brightness=rng.uniform(0.85, 1.0))
    kernel = line_kernel(params["blur"], params["angle"])
    mask = np.clip(signal.fftconvolve(1.0 - clear, kernel / kernel.sum(), mode="same"), 0.0, 1.0)[..., None]
    snowy = clean * (1.0 - mask) + mask * np.maximum(clean, params["brightness"])
    return snowy.astype(np.float32), params


def haze_depth(height: int, width: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """A depth map [height, width] in [0, 1]: far (1) at the top, near at the bottom, with smooth noise."""
    ramp = np.linspace(1.0, 0.0, height)[:, None] * np.ones((1, width))
    smooth = ndimage.zoom(rng.standard_normal((4, 4)), (height / 4, width / 4), order=3)
    depth = ramp + noise * smooth
    return (depth - depth.min()) / max(depth.max() - depth.min(), 1e-12)


def haze(clean: np.ndarray, depth: np.ndarray, beta: float, airlight) -> np.ndarray:
    """The atmospheric scattering model: I = J t + A (1 - t), t = exp(-beta depth), for J = ``clean`` [H, W, 3],
    ``depth`` [H, W] and the airlight A (a scalar or an RGB triple)."""
    t = np.exp(-beta * np.asarray(depth, np.float64))[..., None]
    return (clean * t + np.asarray(airlight) * (1.0 - t)).astype(np.float32)


def degrade(clean: np.ndarray, weather: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """``clean`` [H, W, 3] float32 in [0, 1] under ``weather``: (degraded image like it, the parameters drawn)."""
    if weather == "rain":
        return rain(clean, rng)
    if weather == "snow":
        return snow(clean, rng)
    if weather == "haze":
        params = {"beta": rng.uniform(0.6, 1.8), "airlight": rng.uniform(0.7, 1.0),
                  "depth_noise": rng.uniform(0.2, 0.6)}
        depth = haze_depth(clean.shape[0], clean.shape[1], rng, params["depth_noise"])
        return haze(clean, depth, params["beta"], params["airlight"]), params
    raise MoezooError(f"synthetic weather: {weather!r} is not one of {', '.join(WEATHERS)}")


def eval_image(photo: np.ndarray, eval_size: int) -> np.ndarray:
    """``photo`` resized (antialiased) to a long side of ``eval_size``, centre-cropped to multiples of 8."""
    from skimage.transform import resize

    scale = eval_size / max(photo.shape[:2])
    size = [max(8, round(side * scale)) for side in photo.shape[:2]]
    image = np.clip(resize(photo, size, order=1, anti_aliasing=True), 0.0, 1.0).astype(np.float32)
    (h, w), (top, left) = [s // 8 * 8 for s in size], [(s - s // 8 * 8) // 2 for s in size]
    return np.ascontiguousarray(image[top:top + h, left:left + w])


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


class SyntheticWeather(Dataset):
    """Photographs under synthesised weather: item i is (degraded [3, H, W], clean [3, H, W], weather id).

    train: ``num_samples`` (default 2000) random ``crop_size`` crops, made when asked, item i fixed by
    (``seed``, i) and its weather ``weathers[i % len(weathers)]`` (balanced). val / test: every held-out photograph at
    ``eval_size`` under every weather with ``variants`` seeds, made once here. The weather id indexes ``weathers``.
    """

    def __init__(self, split: str, *, num_samples: int | None = None, crop_size: int = 64, eval_size: int = 128,
                 variants: int = 2, seed: int = 0, weathers: tuple[str, ...] = WEATHERS):
        unknown = [w for w in weathers if w not in WEATHERS]
        if unknown or not weathers:
            raise MoezooError(f"synthetic weather: weathers {list(weathers)} must be a non-empty subset of "
                              f"{', '.join(WEATHERS)}")
        self.split, self.crop_size, self.seed, self.weathers = split, crop_size, seed, tuple(weathers)
        self.photos = load_photos(split)
        self.items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        if split == "train":
            side, name = min((min(p.shape[:2]), n) for p, n in zip(self.photos, PHOTOS["train"]))
            if crop_size > side:
                raise MoezooError(f"data.crop_size={crop_size} is larger than the smallest train photograph "
                                  f"({name}, short side {side} px); use at most {side}")
            self.num_samples = 2000 if num_samples is None else num_samples
            return
        if eval_size < 8:
            raise MoezooError(f"data.eval_size={eval_size}: must be at least 8 (eval images are cut to multiples of 8)")
        self.items = []
        for photo in self.photos:
            clean = eval_image(photo, eval_size)
            for weather_id, weather in enumerate(self.weathers):
                for _ in range(variants):
                    rng = np.random.default_rng([seed, len(self.items), _SALT[split]])
                    degraded, _ = degrade(clean, weather, rng)
                    self.items.append((_chw(degraded), _chw(clean), torch.tensor(weather_id)))

    def __len__(self) -> int:
        return self.num_samples if self.items is None else len(self.items)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        if self.items is not None:
            return self.items[index]
        rng = np.random.default_rng([self.seed, index])
        photo = self.photos[rng.integers(len(self.photos))]
        size = self.crop_size
        top, left = rng.integers(photo.shape[0] - size + 1), rng.integers(photo.shape[1] - size + 1)
        clean = photo[top:top + size, left:left + size]
        if rng.random() < 0.5:
            clean = clean[:, ::-1]
        clean = np.ascontiguousarray(clean)
        weather_id = index % len(self.weathers)
        degraded, _ = degrade(clean, self.weathers[weather_id], rng)
        return _chw(degraded), _chw(clean), torch.tensor(weather_id)
