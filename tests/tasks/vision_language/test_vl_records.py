"""Tests of the vision-language records: easy-VQA, VQA v2 and COCO-captions readers, their errors, and the VQA
answer normalisation, vocabulary and soft scores, on tiny files written into tmp_path."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from moezoo.errors import MoezooError
from moezoo.tasks.vision_language.records import (
    Caption,
    Question,
    answer_scores,
    answer_vocabulary,
    coco_captions,
    easy_vqa_questions,
    normalize_answer,
    vqa_v2_questions,
)


def _image(path: Path) -> Path:
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _answers(*answers: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


TEN = ("Two", "2", "two.", "3", "three", "2", "the 2", "4", "2!", "3")


@pytest.fixture
def vqa(tmp_path):
    """A COCO image folder (the three naming schemes, plus files that are not images) and VQA v2 JSONs."""
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "COCO_train2014_000000000009.jpg")
    _image(images / "000000000025.jpg")
    _image(images / "7.png")
    _image(images / "30.jpeg")
    (images / "notes.txt").write_text("not an image")
    _image(images / "cover.jpg")  # no trailing integer: not indexed
    questions = [
        {"image_id": 9, "question": "How many dogs?", "question_id": 90},
        {"image_id": 25, "question": " Is it red? ", "question_id": 250},
        {"image_id": 7, "question": "What is it?", "question_id": 70},
        {"image_id": 30, "question": "Where?", "question_id": 300},
    ]
    annotations = [
        {"question_id": 250, "image_id": 25, "answers": _answers("Yes!", "yes", "no"), "multiple_choice_answer": "yes"},
        {"question_id": 90, "image_id": 9, "answers": _answers(*TEN), "multiple_choice_answer": "2"},
        {"question_id": 70, "image_id": 7, "answers": _answers("the dog."), "multiple_choice_answer": "dog"},
        {"question_id": 300, "image_id": 30, "answers": _answers("3.5", "1,000"), "multiple_choice_answer": "3.5"},
    ]
    q = _json(tmp_path / "questions.json", {"info": {}, "questions": questions})
    a = _json(tmp_path / "annotations.json", {"info": {}, "annotations": annotations})
    return q, images, a, questions, annotations


def _raises(match_parts: list[str]):
    """pytest.raises(MoezooError) whose message holds every part, in order (paths escaped)."""
    return pytest.raises(MoezooError, match=".*".join(re.escape(str(p)) for p in match_parts))


# -- VQA v2 -----------------------------------------------------------------------------------------------------
def test_vqa_v2_records(vqa):
    q, images, a, _, _ = vqa
    records = vqa_v2_questions(q, images, a)
    assert [r.question_id for r in records] == [90, 250, 70, 300]  # the questions file's order
    assert all(isinstance(r, Question) for r in records)
    assert [r.image for r in records] == [
        images / "COCO_train2014_000000000009.jpg", images / "000000000025.jpg", images / "7.png", images / "30.jpeg"
    ]
    assert records[0].question == "How many dogs?" and records[1].question == "Is it red?"
    assert records[0].answers == ("2", "2", "2", "3", "3", "2", "2", "4", "2", "3")
    assert records[1].answers == ("yes", "yes", "no")
    assert records[2].answers == ("dog",)
    assert records[3].answers == ("3.5", "1000")


def test_vqa_v2_without_annotations(vqa):
    q, images, _, _, _ = vqa
    records = vqa_v2_questions(q, images)
    assert [r.answers for r in records] == [()] * 4
    assert records[2].image.name == "7.png"


def test_vqa_v2_file_errors(vqa, tmp_path):
    q, images, a, _, _ = vqa
    missing = tmp_path / "nope.json"
    with _raises([missing]):
        vqa_v2_questions(missing, images)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with _raises([bad, "not JSON"]):
        vqa_v2_questions(bad, images)
    with _raises([bad, "not JSON"]):
        vqa_v2_questions(q, images, bad)
    no_key = _json(tmp_path / "no_key.json", {"annotations": []})
    with _raises([no_key, "'questions'"]):
        vqa_v2_questions(no_key, images)
    with _raises([q, "'annotations'"]):
        vqa_v2_questions(q, images, q)
    with _raises([tmp_path / "no_images"]):
        vqa_v2_questions(q, tmp_path / "no_images")


def test_vqa_v2_missing_fields(vqa, tmp_path):
    q, images, a, questions, annotations = vqa
    f = _json(tmp_path / "q1.json", {"questions": [{"image_id": 9, "question": "Why?"}]})
    with _raises([f, "question #0", "'question_id'"]):
        vqa_v2_questions(f, images)
    f = _json(tmp_path / "q2.json", {"questions": [{"question_id": 5, "question": "Why?"}]})
    with _raises([f, "question 5", "'image_id'"]):
        vqa_v2_questions(f, images)
    f = _json(tmp_path / "q3.json", {"questions": [{"question_id": 5, "image_id": 9}]})
    with _raises([f, "question 5", "'question'"]):
        vqa_v2_questions(f, images)
    f = _json(tmp_path / "a1.json", {"annotations": [{k: v for k, v in annotations[0].items() if k != "answers"}]})
    with _raises([f, "question 250", "'answers'"]):
        vqa_v2_questions(q, images, f)
    broken = [dict(annotations[0], answers=[{"answer_id": 1}])] + annotations[1:]
    f = _json(tmp_path / "a2.json", {"annotations": broken})
    with _raises([f, "question 250", "'answer'"]):
        vqa_v2_questions(q, images, f)


def test_vqa_v2_content_errors(vqa, tmp_path):
    q, images, a, questions, annotations = vqa
    no_image = {"image_id": 9999, "question": "?", "question_id": 123}
    f = _json(tmp_path / "q_img.json", {"questions": questions + [no_image]})
    with _raises([f, "question 123: no image for image_id 9999 in", images]):
        vqa_v2_questions(f, images)
    empty = {"image_id": 9, "question": "  ", "question_id": 5}
    f = _json(tmp_path / "q_empty.json", {"questions": questions + [empty]})
    with _raises([f, "question 5", "empty"]):
        vqa_v2_questions(f, images)
    extra = annotations + [{"question_id": 777, "image_id": 9, "answers": _answers("yes")}]
    f = _json(tmp_path / "a_extra.json", {"annotations": extra})
    with _raises([f, "question 777", q]):
        vqa_v2_questions(q, images, f)
    f = _json(tmp_path / "a_missing.json", {"annotations": annotations[:-1]})
    with _raises([f, "question 300", q]):
        vqa_v2_questions(q, images, f)
    other_image = [dict(annotations[0], image_id=9)] + annotations[1:]
    f = _json(tmp_path / "a_image.json", {"annotations": other_image})
    with _raises([f, "question 250", "9", "25", q]):
        vqa_v2_questions(q, images, f)
    no_answers = [dict(annotations[0], answers=[])] + annotations[1:]
    f = _json(tmp_path / "a_none.json", {"annotations": no_answers})
    with _raises([f, "question 250", "no answers"]):
        vqa_v2_questions(q, images, f)


# -- COCO captions ----------------------------------------------------------------------------------------------
@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "val2014"
    images.mkdir()
    _image(images / "COCO_val2014_000000000042.jpg")
    _image(images / "000000000043.jpg")
    data = {
        "info": {},
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 4, "height": 4},
            {"id": 43, "file_name": "000000000043.jpg", "width": 4, "height": 4},
        ],
        "annotations": [
            {"id": 7, "image_id": 43, "caption": "  A red square.\n"},
            {"id": 3, "image_id": 42, "caption": "A small red image"},
            {"id": 5, "image_id": 43, "caption": "Red."},
        ],
    }
    return tmp_path, images, data


def test_coco_captions_records(coco):
    tmp_path, images, data = coco
    records = coco_captions(_json(tmp_path / "captions.json", data), images)
    assert records == [
        Caption(7, 43, images / "000000000043.jpg", "A red square."),
        Caption(3, 42, images / "COCO_val2014_000000000042.jpg", "A small red image"),
        Caption(5, 43, images / "000000000043.jpg", "Red."),
    ]


def test_coco_captions_errors(coco):
    tmp_path, images, data = coco
    missing = tmp_path / "nope.json"
    with _raises([missing]):
        coco_captions(missing, images)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2", encoding="utf-8")
    with _raises([bad, "not JSON"]):
        coco_captions(bad, images)
    f = _json(tmp_path / "no_images.json", {"annotations": data["annotations"]})
    with _raises([f, "'images'"]):
        coco_captions(f, images)
    f = _json(tmp_path / "no_ann.json", {"images": data["images"]})
    with _raises([f, "'annotations'"]):
        coco_captions(f, images)
    f = _json(tmp_path / "no_caption.json", dict(data, annotations=[{"id": 7, "image_id": 43}]))
    with _raises([f, "annotation 7", "'caption'"]):
        coco_captions(f, images)
    f = _json(tmp_path / "empty.json", dict(data, annotations=data["annotations"] + [{"id": 8, "image_id": 42,
                                                                                          "caption": " \t "}]))
    with _raises([f, "annotation 8: empty caption"]):
        coco_captions(f, images)
    f = _json(tmp_path / "unknown.json", dict(data, annotations=[{"id": 9, "image_id": 44, "caption": "x"}]))
    with _raises([f, "annotation 9", "image_id 44"]):
        coco_captions(f, images)
    gone = data["images"] + [{"id": 44, "file_name": "000000000044.jpg"}]
    f = _json(tmp_path / "gone.json", dict(data, images=gone, annotations=[{"id": 10, "image_id": 44, "caption": "x"}]))
    with _raises([f, "annotation 10", images / "000000000044.jpg"]):
        coco_captions(f, images)
    twice = data["images"] + [{"id": 42, "file_name": "000000000043.jpg"}]
    f = _json(tmp_path / "twice.json", dict(data, images=twice))
    with _raises([f, "42"]):
        coco_captions(f, images)


# -- answers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Two", "2"),
        ("the dog.", "dog"),
        ("yes!", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("  A   Red  Car ", "red car"),
        ("dont", "don't"),
        ("ten.", "10"),
        ("black/white", "black white"),
        ("Isn't it?", "isn't it"),
    ],
)
def test_normalize_answer(answer, expected):
    assert normalize_answer(answer) == expected


def test_answer_vocabulary():
    qs = [
        Question(1, Path("a.png"), "q", ("yes", "yes", "no", "2")),
        Question(2, Path("b.png"), "q", ("no", "2", "red")),
        Question(3, Path("c.png"), "q", ("blue", "yes")),
    ]
    assert answer_vocabulary(qs, 3) == ["yes", "2", "no"]  # 3 yes; 2 and no tie at 2, by the string
    assert answer_vocabulary(qs, 100) == ["yes", "2", "no", "blue", "red"]
    assert answer_vocabulary(qs, 1) == ["yes"]
    with pytest.raises(MoezooError):
        answer_vocabulary(qs, 0)


def test_answer_scores():
    vocabulary = {"2": 0, "3": 1, "4": 2, "yes": 3}
    scores = answer_scores(("2", "2", "2", "2", "3", "3", "4", "5", "5", "5"), vocabulary)
    assert scores.keys() == {0, 1, 2}  # "5" is not in the vocabulary
    assert scores[0] == 1.0 and scores[1] == pytest.approx(0.6667, abs=1e-4) and scores[2] == pytest.approx(1 / 3)
    assert answer_scores(("yes",), vocabulary) == {3: 1.0}
    assert answer_scores(("no",), vocabulary) == {}
    assert answer_scores((), vocabulary) == {}


# -- easy-VQA ---------------------------------------------------------------------------------------------------
def test_easy_vqa_train():
    records = easy_vqa_questions("train")
    assert len(records) == 38575
    assert [r.question_id for r in records[:3]] == [0, 1, 2]
    assert len({a for r in records for a in r.answers}) == 13
    assert all(len(r.answers) == 1 for r in records)
    assert all(image.is_file() for image in {r.image for r in records})


def test_easy_vqa_bad_split():
    with pytest.raises(MoezooError, match="'val'"):
        easy_vqa_questions("val")
