"""The early-fusion model against its definitions on small tensors: the token layout and padding, MoMa's routing
within modalities at each modality's capacity, MoE-LLaVA upcycling (the dense model's output before training),
Recall@k, and the soft VQA targets."""

import math

import pytest
import torch

from moezoo.errors import MoezooError
from moezoo.moe import MoE
from moezoo.tasks.vision_language.model import VisionLanguageModel, recall_at
from moezoo.tasks.vision_language.network import IMAGE, PAD, TEXT

VOCAB = ["[pad]", "[unk]", *[f"w{i}" for i in range(10)]]
ANSWERS = ["yes", "no", "red"]
SMALL = dict(vocabulary=VOCAB, answers=ANSWERS, max_text_len=6, image_size=32, patch_size=8, dim=32, depth=2,
             num_heads=2)


def _batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(2, len(VOCAB), (b, 6), generator=g)
    text[0, 4:] = 0  # padding
    text[1, 2:] = 0
    return torch.randn(b, 3, 32, 32, generator=g), text


def test_the_sequence_is_cls_patches_words_with_modality_ids_and_padding_is_no_key():
    torch.manual_seed(0)
    model = VisionLanguageModel(**SMALL).eval()
    image, text = _batch()
    states, modality = model.network(image, text)
    assert states.shape == (3, 1 + 16 + 6, 32)
    assert modality[:, 0].eq(TEXT).all() and modality[:, 1:17].eq(IMAGE).all()
    assert modality[0, 17:].tolist() == [TEXT] * 4 + [PAD] * 2
    with torch.no_grad():
        before = model(image, text)
        model.network.word_embed.weight[0].add_(3.0)  # the padding id's embedding
        after = model(image, text)
    torch.testing.assert_close(after, before)  # padding never reaches a real token


def _router_outputs(model, image, text):
    seen = []
    hooks = [layer.router.register_forward_hook(lambda m, a, out: seen.append((a[0], out)))
             for layer in model.moe_layers()]
    try:
        model(image, text)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_moma_routes_each_token_within_its_modality_at_that_modalitys_capacity():
    torch.manual_seed(0)
    model = VisionLanguageModel(**SMALL, moe_every=1, modality_experts=[2, 2])
    image, text = _batch()
    _, modality = model.network(image, text)
    for _, routing in _router_outputs(model, image, text):
        token_modality = modality.reshape(-1)[routing.token_index]
        image_expert = routing.expert_index < 2
        assert (token_modality[image_expert] == IMAGE).all() and (token_modality[~image_expert] == TEXT).all()
        for sample in range(3):
            n = modality.shape[1]
            mine = (routing.token_index // n) == sample
            counts = torch.bincount(routing.expert_index[mine], minlength=4).tolist()
            texts = int((modality[sample] == TEXT).sum())  # [CLS] and the real words
            assert counts == [8, 8, math.ceil(texts / 2), math.ceil(texts / 2)]  # 16 patches / 2 image experts


def test_the_agnostic_moe_sees_one_group_and_skips_padding():
    torch.manual_seed(0)
    model = VisionLanguageModel(**SMALL, moe_every=1)
    image, text = _batch()
    _, modality = model.network(image, text)
    for _, routing in _router_outputs(model, image, text):
        assert (modality.reshape(-1)[routing.token_index] != PAD).all()
        real = int((modality != PAD).sum(1)[0])
        assert torch.bincount(routing.expert_index[routing.token_index < modality.shape[1]]).tolist() == \
            [math.ceil(real / 4)] * 4


def test_moe_llava_upcycling_computes_the_dense_model_before_training(tmp_path):
    torch.manual_seed(0)
    dense = VisionLanguageModel(**SMALL).eval()
    dense.save_pretrained(tmp_path / "dense")
    moe = VisionLanguageModel(**SMALL, moe_every=2, router="top_k", k=2, capacity_factor=None, score="softmax",
                              init_from=str(tmp_path / "dense"), upcycle=True).eval()
    names = moe.upcycle_from(str(tmp_path / "dense"))
    assert names == ["encoder.blocks.1.ffn"] and isinstance(moe.network.encoder.blocks[1].ffn, MoE)
    image, text = _batch()
    with torch.no_grad():
        torch.testing.assert_close(moe(image, text), dense(image, text))
    other = VisionLanguageModel(**{**SMALL, "dim": 16}, moe_every=2, router="top_k", score="softmax")
    with pytest.raises(MoezooError, match="has dim=32"):
        other.upcycle_from(str(tmp_path / "dense"))
    with pytest.raises(MoezooError, match="is not a dense model"):
        moe.save_pretrained(tmp_path / "moe")
        other.upcycle_from(str(tmp_path / "moe"))
    with pytest.raises(MoezooError, match="no such file"):
        other.upcycle_from(str(tmp_path / "missing.ckpt"))


def test_recall_at_k_counts_queries_with_a_right_item_among_the_k_most_similar():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    right = torch.eye(3, dtype=torch.bool)
    got = recall_at(similarity, right, ks=(1, 2, 3))
    assert got == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_the_vqa_loss_is_cross_entropy_to_the_normalised_soft_targets_and_vqa_acc_the_predicted_score():
    torch.manual_seed(0)
    model = VisionLanguageModel(**SMALL)
    image, text = _batch()
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1 / 3, 1.0], [0.0, 0.0, 0.0]])
    batch = {"image": image, "text": text, "scores": scores, "answer": torch.tensor([0, 2, -1])}
    loss = model.task_step(batch, "val")
    logp = model(image, text).log_softmax(-1)
    expected = (-logp[0, 0] - (logp[1, 1] / 4 + logp[1, 2] * 3 / 4)) / 2  # the unanswerable question is left out
    torch.testing.assert_close(loss, expected)
    pred = logp.argmax(-1)
    assert model.metrics["val_vqa_acc"].compute().item() == pytest.approx(
        scores.gather(1, pred[:, None]).mean().item())


def test_bad_model_arguments_are_one_line_errors():
    with pytest.raises(MoezooError, match="modality_experts"):
        VisionLanguageModel(**SMALL, moe_every=1, modality_experts=[3, 2])
    with pytest.raises(MoezooError, match="vocabulary"):
        VisionLanguageModel(**{**SMALL, "vocabulary": None})
    with pytest.raises(MoezooError, match="init_from: upcycling needs MoE layers"):
        VisionLanguageModel(**SMALL, init_from="x.ckpt")


def test_token_experts_names_the_expert_of_each_patch_and_word_within_its_modality():
    torch.manual_seed(0)
    model = VisionLanguageModel(**SMALL, moe_every=1, modality_experts=[2, 2])
    image = _batch()[0][:1]
    got = model.token_experts(image, "w1 w2 zebra w3")
    assert got["words"] == ["w1", "w2", "[unk]", "w3"] and got["grid"] == (4, 4)
    assert list(got["layers"]) == ["encoder.blocks.0.ffn", "encoder.blocks.1.ffn"]
    for layer in got["layers"].values():
        assert layer["patches"].shape == (16,) and layer["words"].shape == (4,)
        assert set(layer["patches"].tolist()) <= {-1, 0, 1} and set(layer["words"].tolist()) <= {-1, 2, 3}
        assert (layer["patches"] >= 0).sum() >= 8  # two image experts of capacity 8 each
    assert model.training  # the mode comes back
