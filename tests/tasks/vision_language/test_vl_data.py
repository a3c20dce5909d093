"""Vision-language data modules: easy-VQA's held-out val by image, VQA v2 and COCO-captions files written here in
their formats (through the data modules and a retrieval fit through the CLI), and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from moezoo.cli import main
from moezoo.errors import MoezooError
from moezoo.tasks.vision_language import CaptionData, VQAData

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)


def _vqa_v2(root, images=6, per_image=2):
    folder = root / "train2014"
    folder.mkdir(parents=True)
    questions, annotations = [], []
    words = ["what color is the cat", "how many dogs are there", "is it sunny"]
    for i in range(images):
        _image(folder / f"COCO_train2014_{i + 1:012d}.jpg", i)
        for j in range(per_image):
            qid = (i + 1) * 10 + j
            questions.append({"image_id": i + 1, "question": f"{words[(i + j) % 3]}?", "question_id": qid})
            answers = ["Two"] * 4 + ["three"] * 2 + ["yes"] * 4 if j else ["red"] * 9 + ["the red"]
            annotations.append({"question_id": qid, "image_id": i + 1, "multiple_choice_answer": answers[0],
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k, a in enumerate(answers)]})
    (root / "questions.json").write_text(json.dumps({"questions": questions, "task_type": "Open-Ended"}))
    (root / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root / "questions.json", root / "annotations.json", folder


def test_easy_vqa_holds_out_whole_train_images_as_val():
    data = VQAData(seed=0)
    records = data.records()
    sizes = {name: len(r) for name, r in records.items()}
    assert sizes["train"] + sizes["val"] == 38575 and sizes["test"] == 9673
    train_images = {q.image for q in records["train"]}
    val_images = {q.image for q in records["val"]}
    assert not train_images & val_images and len(val_images) == 400  # 10% of the 4,000 train images
    assert len(data.answers) == 13 and data.max_text_len == 9
    assert data.vocabulary[:2] == ["[pad]", "[unk]"]


def test_vqa_v2_files_give_soft_targets_over_the_most_frequent_answers(tmp_path):
    questions, annotations, images = _vqa_v2(tmp_path)
    data = VQAData(questions, annotations, images, num_answers=3, image_size=32, val_fraction=0.2, batch_size=4)
    data.setup()
    assert data.answers == ["red", "2", "yes"]  # normalised ("Two" -> "2", "the red" -> "red"), by count
    assert set(data.splits) == {"train", "val"}
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["text"].shape == (4, data.max_text_len)
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    two_answer = data.splits["train"].scores[1]  # 4 x "2", 2 x "three" (not in the vocabulary), 4 x "yes"
    assert two_answer.tolist() == [0.0, 1.0, 1.0]
    one_answer = data.splits["train"].scores[0]
    assert one_answer.tolist() == [1.0, 0.0, 0.0]


def test_vqa_v2_bad_input_is_one_line_naming_the_id_and_file(tmp_path):
    questions, annotations, images = _vqa_v2(tmp_path)
    (images / "COCO_train2014_000000000003.jpg").unlink()
    with pytest.raises(MoezooError, match="question 30: no image for image_id 3"):
        VQAData(questions, annotations, images).setup()
    with pytest.raises(MoezooError, match="train_annotations is missing"):
        VQAData(questions, None, images).setup()


def _coco(root, images=8, per_image=2):
    folder = root / "val2014"
    folder.mkdir(parents=True)
    entries, captions = [], []
    colours = ["red", "green", "blue", "black"]
    for i in range(images):
        name = f"COCO_val2014_{i:012d}.jpg"
        _image(folder / name, 100 + i)
        entries.append({"id": i, "file_name": name})
        for j in range(per_image):
            captions.append({"id": i * 10 + j, "image_id": i, "caption": f"A {colours[i % 4]} thing number {i} ."})
    path = root / "captions.json"
    path.write_text(json.dumps({"images": entries, "annotations": captions}))
    return path, folder


def test_coco_captions_train_a_retrieval_head_through_the_cli_with_recall(tmp_path):
    captions, images = _coco(tmp_path)
    data = CaptionData(captions, images, image_size=32, val_fraction=0.25)
    data.setup()
    assert len(data.splits["train"]) == 12 and len(data.splits["val"]) == 4  # 2 of 8 images, with their captions
    root = tmp_path / "run"
    main(["fit", "--task", "vl/moma", "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
          "--model.init_args.head", "retrieval", "--model.init_args.dim", "32", "--model.init_args.num_heads", "2",
          "--model.init_args.depth", "2", "--data", "moezoo.tasks.vision_language.CaptionData",
          "--data.train_captions", str(captions), "--data.train_images", str(images), "--data.test_captions",
          str(captions), "--data.test_images", str(images), "--data.image_size", "32", "--data.val_fraction", "0.25",
          "--data.batch_size", "4", "--trainer.enable_progress_bar", "false"])
    fit = json.loads((root / "metrics.json").read_text())
    for direction in ("t2i", "i2t"):
        assert 0 <= fit[f"test/{direction}_r1"] <= fit[f"test/{direction}_r5"] <= fit[f"test/{direction}_r10"] <= 1
    assert fit["test/t2i_r10"] == 1  # a gallery of 8 images: every caption finds its image among the top 10
    assert fit["test/routing/modality_nmi"] > 0.5  # MoMa: image tokens on image experts, words on text experts


def test_coco_captions_bad_input_is_one_line_naming_the_annotation(tmp_path):
    captions, images = _coco(tmp_path)
    data = json.loads(captions.read_text())
    data["annotations"][3]["caption"] = "   "
    captions.write_text(json.dumps(data))
    with pytest.raises(MoezooError, match="annotation 11: empty caption"):
        CaptionData(captions, images).setup()
    with pytest.raises(MoezooError, match="needs a COCO captions JSON"):
        CaptionData().setup()
