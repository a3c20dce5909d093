"""Question and caption records read from the field's formats: easy-VQA (the ``easy_vqa`` package), VQA v2
(questions JSON + annotations JSON + an image folder) and COCO captions (``images`` + ``annotations`` JSON), with
the official VQA answer normalisation, the answer vocabulary and the soft VQA scores min(#humans / 3, 1).

Every problem with a file is a one-line MoezooError naming the file and the id.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from moezoo.errors import MoezooError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Question:
    question_id: int
    image: Path
    question: str
    answers: tuple[str, ...]  # normalised human answers (10 in VQA v2, 1 in easy-VQA, () without annotations)


@dataclass(frozen=True)
class Caption:
    caption_id: int
    image_id: int
    image: Path
    caption: str


# -- the official answer normalisation (VQA's vqaEval.py: processPunctuation, processDigitArticle) --------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itll": "it'll", "ive": "i've", "lets": "let's",
    "shes": "she's", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "theyre": "they're",
    "wasnt": "wasn't", "werent": "weren't", "whats": "what's", "wont": "won't", "wouldnt": "wouldn't",
    "youre": "you're", "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(answer: str) -> str:
    """An answer as the official VQA evaluation compares it: lower case; punctuation removed (a comma between
    digits dropped, a period kept only inside a number); number words as digits; articles dropped; common
    contractions given their apostrophe; single spaces."""
    text = " ".join(str(answer).replace("\n", " ").replace("\t", " ").strip().lower().split())
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_NUMBER.search(text) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def answer_vocabulary(questions: list[Question], size: int) -> list[str]:
    """The ``size`` most frequent answers over every human answer of every question (ties: by the answer)."""
    if size < 1:
        raise MoezooError(f"data.num_answers: must be at least 1, got {size}")
    counts = Counter(a for q in questions for a in q.answers)
    return sorted(counts, key=lambda a: (-counts[a], a))[:size]


def answer_scores(answers: tuple[str, ...], vocabulary: dict[str, int]) -> dict[int, float]:
    """The soft VQA score min(#humans that gave it / 3, 1) of each vocabulary answer among ``answers`` (1.0 for
    the one answer of a single-answer question)."""
    if len(answers) == 1:
        return {vocabulary[answers[0]]: 1.0} if answers[0] in vocabulary else {}
    counts = Counter(answers)
    return {vocabulary[a]: min(c / 3, 1.0) for a, c in counts.items() if a in vocabulary}


# -- easy-VQA ---------------------------------------------------------------------------------------------------
def easy_vqa_questions(split: str) -> list[Question]:
    """The easy-VQA questions of ``split`` (train or test) from the installed ``easy_vqa`` package."""
    if split not in ("train", "test"):
        raise MoezooError(f"easy-VQA has splits train and test, not {split!r}")
    try:
        import easy_vqa
    except ImportError:
        raise MoezooError("the easy-VQA default needs the easy-vqa package: pip install easy-vqa") from None
    texts, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    paths = getattr(easy_vqa, f"get_{split}_image_paths")()
    records = []
    for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        if image_id not in paths:
            raise MoezooError(f"easy-VQA {split} question {i}: no image {image_id} in the easy_vqa package")
        records.append(Question(i, Path(paths[image_id]), text, (normalize_answer(answer),)))
    return records


# -- VQA v2 -----------------------------------------------------------------------------------------------------
def _read_json(path: Path):
    if not path.is_file():
        raise MoezooError(f"no such file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MoezooError(f"{path} is not JSON: {' '.join(str(err).split())[:120]}") from None


def _entries(data, key: str, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise MoezooError(f"{path}: expected a JSON object with a list {key!r}")
    return data[key]


def _field(entry, key: str, path: Path, what: str, kind=None):
    if not isinstance(entry, dict) or key not in entry:
        raise MoezooError(f"{path}: {what} has no {key!r}")
    value = entry[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MoezooError(f"{path}: {what} has {key}={value!r}, not an integer")
    if kind is str and not isinstance(value, str):
        raise MoezooError(f"{path}: {what} has {key}={value!r}, not a string")
    return value


def index_images(folder: Path) -> dict[int, Path]:
    """The images of a COCO folder by image id: the trailing integer of each .jpg/.jpeg/.png stem
    (COCO_train2014_000000000009.jpg, 000000000009.jpg, 9.png)."""
    if not folder.is_dir():
        raise MoezooError(f"no such image folder: {folder}")
    found = {}
    for path in sorted(folder.iterdir()):
        match = re.search(r"(\d+)$", path.stem)
        if path.suffix.lower() in IMAGE_SUFFIXES and match:
            image_id = int(match.group(1))
            if image_id in found:
                raise MoezooError(f"{folder}: two images for image_id {image_id}: {found[image_id].name} and "
                                  f"{path.name}")
            found[image_id] = path
    return found


def vqa_v2_questions(questions: Path, images: Path, annotations: Path | None = None) -> list[Question]:
    """The VQA v2 questions of one split, in the questions file's order, with their normalised human answers."""
    questions, images = Path(questions), Path(images)
    entries = _entries(_read_json(questions), "questions", questions)
    by_image = index_images(images)
    read, ids = [], set()
    for n, entry in enumerate(entries):
        qid = _field(entry, "question_id", questions, f"question #{n}", int)
        image_id = _field(entry, "image_id", questions, f"question {qid}", int)
        text = _field(entry, "question", questions, f"question {qid}", str)
        if not text.strip():
            raise MoezooError(f"{questions}: question {qid} is empty")
        if qid in ids:
            raise MoezooError(f"{questions}: question_id {qid} is listed twice")
        if image_id not in by_image:
            raise MoezooError(f"{questions}: question {qid}: no image for image_id {image_id} in {images}")
        read.append((qid, image_id, text.strip()))
        ids.add(qid)
    answers: dict[int, tuple[str, ...]] = {}
    if annotations is not None:
        annotations = Path(annotations)
        image_of = {qid: image_id for qid, image_id, _ in read}
        for n, entry in enumerate(_entries(_read_json(annotations), "annotations", annotations)):
            qid = _field(entry, "question_id", annotations, f"annotation #{n}", int)
            if qid not in image_of:
                raise MoezooError(f"{annotations}: annotation of question {qid}, which is not in {questions}")
            image_id = _field(entry, "image_id", annotations, f"annotation of question {qid}", int)
            if image_id != image_of[qid]:
                raise MoezooError(f"{annotations}: question {qid} is about image {image_id} here but "
                                  f"{image_of[qid]} in {questions}")
            given = _field(entry, "answers", annotations, f"annotation of question {qid}")
            if not isinstance(given, list) or not given:
                raise MoezooError(f"{annotations}: question {qid} has no answers")
            answers[qid] = tuple(normalize_answer(_field(a, "answer", annotations, f"an answer to question {qid}",
                                                         str)) for a in given)
        missing = [qid for qid, _, _ in read if qid not in answers]
        if missing:
            raise MoezooError(f"{annotations}: no annotation for question {missing[0]} of {questions} "
                              f"({len(missing)} questions unannotated)")
    return [Question(qid, by_image[image_id], text, answers.get(qid, ())) for qid, image_id, text in read]


# -- COCO captions ----------------------------------------------------------------------------------------------
def coco_captions(annotations: Path, images: Path) -> list[Caption]:
    """The captions of a COCO captions JSON, in its order, each with its image file under ``images``."""
    annotations, images = Path(annotations), Path(images)
    data = _read_json(annotations)
    files = {}
    for n, entry in enumerate(_entries(data, "images", annotations)):
        image_id = _field(entry, "id", annotations, f"image #{n}", int)
        name = _field(entry, "file_name", annotations, f"image {image_id}", str)
        if image_id in files:
            raise MoezooError(f"{annotations}: image id {image_id} is listed twice")
        files[image_id] = images / name
    captions = []
    for n, entry in enumerate(_entries(data, "annotations", annotations)):
        cid = _field(entry, "id", annotations, f"annotation #{n}", int)
        image_id = _field(entry, "image_id", annotations, f"annotation {cid}", int)
        text = _field(entry, "caption", annotations, f"annotation {cid}", str).strip()
        if not text:
            raise MoezooError(f"{annotations}: annotation {cid}: empty caption")
        if image_id not in files:
            raise MoezooError(f"{annotations}: annotation {cid}: image_id {image_id} is not in its images")
        if not files[image_id].is_file():
            raise MoezooError(f"{annotations}: annotation {cid}: no image file {files[image_id]}")
        captions.append(Caption(cid, image_id, files[image_id], text))
    return captions
