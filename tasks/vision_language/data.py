"""Vision-language data: VQA questions (easy-VQA by default, or VQA v2 files) and COCO-style captions.

``VQAData`` batches are dicts: ``image`` [B, 3, S, S] in [-1, 1], ``text`` [B, L] word ids (0: padding),
``scores`` [B, A] the soft VQA targets over the answer vocabulary, ``answer`` [B] the top answer's id (-1: not in
the vocabulary). The embedded default is easy-VQA (the PyPI package ``easy-vqa`` ships its 4,000 train / 1,000
test 64x64 images and 38,575 / 9,673 questions, 13 answers): ``val_fraction`` of the train *images* (with all their
questions) are held out as val with ``seed``, so val images are unseen. VQA v2: ``train_questions`` +
``train_annotations`` + ``train_images`` (and the same for test; test is optional); the answer vocabulary is the
``num_answers`` most frequent training answers.

``CaptionData`` batches: ``image``, ``text`` (a caption's word ids) and ``image_id`` [B]; one sample per caption.
COCO captions JSON (``images`` + ``annotations``) and an image folder per split; val held out from train by image
when not given. The word vocabulary is built from the training text; vocabulary, answers, the words read per text
and the image size are linked to the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from .records import (
    Caption,
    Question,
    answer_scores,
    answer_vocabulary,
    coco_captions,
    easy_vqa_questions,
    vqa_v2_questions,
)
from .text import build_vocabulary, encode, longest

MAX_TEXT_LEN = 32  # at most this many words of a question or caption are read (longer texts are cut)
PRELOAD_IMAGES = 20_000  # a split of at most this many images is decoded once into memory; larger ones per item


def read_image(path: Path, size: int) -> torch.Tensor:
    """An image file as uint8 [3, size, size] (RGB, resized bicubically), or a one-line MoezooError naming it."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MoezooError(f"cannot read image {path}: {' '.join(str(err).split())[:160]}") from None
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [..., 3, S, S] -> float in [-1, 1] (what the model reads)."""
    return images.float() / 127.5 - 1.0


class ImageStore:
    """The images of a split by path: decoded once into memory when there are at most ``PRELOAD_IMAGES``,
    else read per item."""

    def __init__(self, paths, size: int):
        self.paths, self.size = list(dict.fromkeys(paths)), size
        self.index = {p: i for i, p in enumerate(self.paths)}
        self.cache = torch.stack([read_image(p, size) for p in self.paths]) \
            if len(self.paths) <= PRELOAD_IMAGES else None

    def __getitem__(self, path: Path) -> torch.Tensor:
        return self.cache[self.index[path]] if self.cache is not None else read_image(path, self.size)


class QuestionDataset(Dataset):
    def __init__(self, questions: list[Question], images: ImageStore, vocabulary: list[str], answers: list[str],
                 max_text_len: int):
        self.questions, self.images = questions, images
        self.text = encode([q.question for q in questions], vocabulary, max_text_len)
        index = {a: i for i, a in enumerate(answers)}
        self.scores = torch.zeros(len(questions), len(answers))
        for row, q in enumerate(questions):
            for a, s in answer_scores(q.answers, index).items():
                self.scores[row, a] = s
        self.answer = torch.where(self.scores.sum(1) > 0, self.scores.argmax(1), -1)

    def __len__(self):
        return len(self.questions)

    def __getitem__(self, i):
        return {"image": to_model_input(self.images[self.questions[i].image]), "text": self.text[i],
                "scores": self.scores[i], "answer": self.answer[i]}


class CaptionDataset(Dataset):
    def __init__(self, captions: list[Caption], images: ImageStore, vocabulary: list[str], max_text_len: int):
        self.captions, self.images = captions, images
        self.text = encode([c.caption for c in captions], vocabulary, max_text_len)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        c = self.captions[i]
        return {"image": to_model_input(self.images[c.image]), "text": self.text[i],
                "image_id": torch.tensor(c.image_id)}


def _check_positive_int(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MoezooError(f"data.{key}: must be a positive integer, got {value!r}")


def hold_out_by_image(records: list, fraction: float, seed: int, key: str = "data.val_fraction"):
    """(train, val): ``fraction`` of the distinct images (at least one) with all their records go to val."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise MoezooError(f"{key}: must be a number between 0 and 1 (exclusive), got {fraction!r}")
    images = sorted({str(r.image) for r in records})
    count = max(1, int(round(fraction * len(images))))
    if count >= len(images):
        raise MoezooError(f"data: {len(images)} training image{'s' * (len(images) != 1)} leave none to train on "
                          f"after holding out {key.split('.')[-1]}={fraction}; give a val split")
    held = set(np.asarray(images)[np.random.default_rng(seed).permutation(len(images))[:count]].tolist())
    return [r for r in records if str(r.image) not in held], [r for r in records if str(r.image) in held]


class _TextData(SplitDataModule):
    """What both data modules share: the vocabulary and text length fitted on the training text, image size,
    batching and the val hold-out."""

    def __init__(self, image_size: int, max_text_len: int | None, min_word_count: int, val_fraction: float,
                 batch_size: int, num_workers: int, seed: int):
        super().__init__()
        for key, value in (("image_size", image_size), ("min_word_count", min_word_count),
                           ("batch_size", batch_size)):
            _check_positive_int(key, value)
        if max_text_len is not None:
            _check_positive_int("max_text_len", max_text_len)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise MoezooError(f"data.num_workers: must be an integer >= 0, got {num_workers!r}")
        self.image_size, self._max_text_len, self.min_word_count = image_size, max_text_len, min_word_count
        self.val_fraction, self.batch_size, self.num_workers, self.seed = val_fraction, batch_size, num_workers, seed
        self._records: dict[str, list] | None = None

    def read_records(self) -> dict[str, list]:
        raise NotImplementedError

    def text_of(self, record) -> str:
        raise NotImplementedError

    def records(self) -> dict[str, list]:
        """{"train", "val"[, "test"]} -> records, read once (val held out of train when not given)."""
        if self._records is None:
            records = self.read_records()
            if "val" not in records:
                records["train"], records["val"] = hold_out_by_image(records["train"], self.val_fraction, self.seed)
            self._records = {name: records[name] for name in ("train", "val", "test") if name in records}
        return self._records

    @property
    def vocabulary(self) -> list[str]:
        return build_vocabulary((self.text_of(r) for r in self.records()["train"]), self.min_word_count)

    @property
    def max_text_len(self) -> int:
        if self._max_text_len is not None:
            return self._max_text_len
        return min(MAX_TEXT_LEN, longest(self.text_of(r) for r in self.records()["train"]))


class VQAData(_TextData):
    """Visual question answering: easy-VQA (no file given) or VQA v2 files (see the module docstring).

    Args:
        train_questions, train_annotations, train_images: VQA v2 questions JSON, annotations JSON, image folder.
        test_questions, test_annotations, test_images: the same for a test split (optional).
        num_answers: the answer vocabulary's size for VQA v2 (the most frequent training answers; easy-VQA: all).
        image_size: the side images are resized to. max_text_len: words read per question (None: the longest
            training question, at most 32). min_word_count: training count for a word to enter the vocabulary.
        val_fraction, seed: the share of train images held out as val, and its seed.
    """

    model_links = {"vocabulary": "vocabulary", "answers": "answers", "max_text_len": "max_text_len",
                   "image_size": "image_size"}

    def __init__(self, train_questions: Path | None = None, train_annotations: Path | None = None,
                 train_images: Path | None = None, test_questions: Path | None = None,
                 test_annotations: Path | None = None, test_images: Path | None = None, *, num_answers: int = 1000,
                 image_size: int = 64, max_text_len: int | None = None, min_word_count: int = 1,
                 val_fraction: float = 0.1, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__(image_size, max_text_len, min_word_count, val_fraction, batch_size, num_workers, seed)
        _check_positive_int("num_answers", num_answers)
        self.files = {"train": (train_questions, train_annotations, train_images),
                      "test": (test_questions, test_annotations, test_images)}
        self.num_answers = num_answers

    def read_records(self) -> dict[str, list]:
        train = self.files["train"]
        if all(f is None for f in train):
            if any(f is not None for f in self.files["test"]):
                raise MoezooError("data.test_questions: a VQA v2 test split needs the VQA v2 train split "
                                  "(data.train_questions, data.train_annotations, data.train_images)")
            return {"train": easy_vqa_questions("train"), "test": easy_vqa_questions("test")}
        records = {}
        for split, (questions, annotated, images) in self.files.items():
            if all(f is None for f in (questions, annotated, images)):
                continue
            for name, value in (("questions", questions), ("annotations", annotated), ("images", images)):
                if value is None:
                    raise MoezooError(f"data.{split}_{name}: a VQA v2 {split} split needs questions, annotations "
                                      f"and images; {split}_{name} is missing")
            records[split] = vqa_v2_questions(Path(questions).expanduser(), Path(images).expanduser(),
                                              Path(annotated).expanduser())
        return records

    def text_of(self, record: Question) -> str:
        return record.question

    @property
    def is_easy_vqa(self) -> bool:
        return all(f is None for f in self.files["train"])

    @property
    def answers(self) -> list[str]:
        train = self.records()["train"]
        size = len({a for q in train for a in q.answers}) if self.is_easy_vqa else self.num_answers
        return answer_vocabulary(train, size)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        records, vocabulary, answers, length = self.records(), self.vocabulary, self.answers, self.max_text_len
        self.splits = {name: QuestionDataset(qs, ImageStore([q.image for q in qs], self.image_size), vocabulary,
                                             answers, length) for name, qs in records.items()}


class CaptionData(_TextData):
    """Image-text retrieval on COCO-captions files (``images`` + ``annotations`` with ``caption``).

    Args:
        train_captions, train_images: the training captions JSON and image folder (required).
        val_captions, val_images, test_captions, test_images: optional splits (val: held out of train by image).
        image_size, max_text_len, min_word_count, val_fraction, batch_size, num_workers, seed: as ``VQAData``.
    """

    model_links = {"vocabulary": "vocabulary", "max_text_len": "max_text_len", "image_size": "image_size"}

    def __init__(self, train_captions: Path | None = None, train_images: Path | None = None,
                 val_captions: Path | None = None, val_images: Path | None = None, test_captions: Path | None = None,
                 test_images: Path | None = None, *, image_size: int = 64, max_text_len: int | None = None,
                 min_word_count: int = 1, val_fraction: float = 0.1, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0):
        super().__init__(image_size, max_text_len, min_word_count, val_fraction, batch_size, num_workers, seed)
        self.files = {"train": (train_captions, train_images), "val": (val_captions, val_images),
                      "test": (test_captions, test_images)}

    def read_records(self) -> dict[str, list]:
        if self.files["train"][0] is None:
            raise MoezooError("data.train_captions: image-text retrieval needs a COCO captions JSON "
                              "(data.train_captions) and its image folder (data.train_images)")
        records = {}
        for split, (captions, images) in self.files.items():
            if captions is None and images is None:
                continue
            if captions is None or images is None:
                missing = "captions" if captions is None else "images"
                raise MoezooError(f"data.{split}_{missing}: the {split} split needs both captions and images")
            records[split] = coco_captions(Path(captions).expanduser(), Path(images).expanduser())
        return records

    def text_of(self, record: Caption) -> str:
        return record.caption

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        records, vocabulary, length = self.records(), self.vocabulary, self.max_text_len
        self.splits = {name: CaptionDataset(cs, ImageStore([c.image for c in cs], self.image_size), vocabulary,
                                            length) for name, cs in records.items()}
