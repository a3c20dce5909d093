"""VisionLanguageModel: VQA (answer classification from [CLS]) or image-text retrieval (InfoNCE) on the early-fusion
transformer (``network``), with a dense, modality-agnostic MoE, MoMa or MoE-LLaVA (upcycled) FFN.

VQA: one sequence [CLS] + patches + question words; logits = Linear(state of [CLS]) over the answer vocabulary; the
loss is the cross-entropy against the soft VQA targets (min(#humans / 3, 1), normalised; one-hot for easy-VQA);
metrics ``acc`` (the top answer right) and ``vqa_acc`` (the soft score of the predicted answer).
Retrieval: the image alone and the caption alone through the same transformer (each token still routed by its
modality), mean-pooled over each side's real tokens, projected and L2-normalised; symmetric InfoNCE at a learned
temperature (CLIP); Recall@1/5/10 image->text and text->image over the whole evaluation split.

The routing is counted by each token's modality through the core's label mechanism
(``<stage>/routing/<layer>/modality=image/e<i>``, NMI ``<stage>/routing/modality_nmi``); ``flops_per_sample`` (one
forward, ``torch.utils.flop_counter.FlopCounterMode``) is logged at test.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics import MeanMetric

from moezoo.errors import MoezooError
from moezoo.moe import MoE, MoEArgs, upcycle
from moezoo.training import TaskModule

from .network import IMAGE, MODALITIES, PAD, STEMS, EarlyFusionTransformer
from .text import encode

HEADS = ("vqa", "retrieval")
ROUTERS = ("expert_choice", "top_k")


def recall_at(similarity: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Recall@k of the rows of ``similarity`` [Q, G] against a boolean [Q, G] table of the right items: the share of
    queries with a right item among their k most similar."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    hit = positives.gather(1, top)
    return {k: hit[:, :k].any(1).float().mean().item() for k in ks}


class VisionLanguageModel(TaskModule):
    """Early-fusion image-text model.

    Args:
        head: ``vqa`` or ``retrieval``.
        vocabulary, answers, max_text_len: the word vocabulary, the answer vocabulary and the words read per text
            (linked from the data module; saved with the model, so a demo encodes as training did).
        image_size, patch_size, dim, depth, num_heads, mlp_ratio, dropout: the transformer.
        stem: the patch tokens' stem, ``conv`` (a small convolution stem) or ``patch`` (timm's PatchEmbed).
        moe_every: an MoE FFN in every ``moe_every``-th block (0: dense).
        num_experts, router, k, capacity_factor, score, balance_loss_weight: the MoE layers (``router``:
            ``expert_choice`` as MoMa, or ``top_k`` as MoE-LLaVA; ``k`` and a capacity for top-k).
        modality_experts: experts per modality, image first (MoMa: [2, 2]); None routes all tokens in one group
            (the modality-agnostic MoE). Must sum to ``num_experts``.
        init_from: a trained dense model (a ``.ckpt`` of ``vl/dense`` or its ``save_pretrained`` folder) whose FFNs
            are upcycled into the MoE layers' experts at the start of fit (MoE-LLaVA's MoE-tuning; the rest of the
            model is loaded as it is). Read only when fit starts from scratch: testing or loading the trained
            model does not need the file.
        upcycle: fit must start from ``init_from`` (the registered MoE-LLaVA variant): a fit from scratch without it
            is refused rather than silently training the MoE from a random init.
        embed_dim: the retrieval projection's width.
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, head: str = "vqa", vocabulary: list[str] | None = None, answers: list[str] | None = None,
                 max_text_len: int = 16, image_size: int = 64, patch_size: int = 16,
                 stem: str = "conv", dim: int = 128, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0, moe_every: int = 0,
                 num_experts: int = 4, router: str = "expert_choice", k: int = 2,
                 capacity_factor: float | None = 1.0, score: str = "sigmoid", balance_loss_weight: float = 0.0,
                 modality_experts: list[int] | None = None, init_from: str | None = None, upcycle: bool = False,
                 embed_dim: int = 128,
                 lr: float = 1e-3, weight_decay: float = 0.05, warmup_epochs: float = 0.5, cosine: bool = True):
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, cosine=cosine)
        if stem not in STEMS:
            raise MoezooError(f"model.init_args.stem: {stem!r} is not one of {', '.join(STEMS)}")
        if stem == "conv" and patch_size % 4:
            raise MoezooError(f"model.init_args.patch_size: a conv stem needs a multiple of 4, got {patch_size}")
        if head not in HEADS:
            raise MoezooError(f"model.init_args.head: {head!r} is not one of {', '.join(HEADS)}")
        if router not in ROUTERS:
            raise MoezooError(f"model.init_args.router: {router!r} is not one of {', '.join(ROUTERS)}")
        if not vocabulary or len(vocabulary) < 3:
            raise MoezooError("model.init_args.vocabulary: needs the data's word vocabulary (linked from the data "
                              "module; at least one word after [pad] and [unk])")
        if head == "vqa" and not answers:
            raise MoezooError("model.init_args.answers: a VQA head needs the answer vocabulary (linked from the data)")
        if dim % num_heads:
            raise MoezooError(f"model.init_args.dim: {dim} must be divisible by num_heads ({num_heads})")
        if image_size % patch_size:
            raise MoezooError(f"model.init_args.image_size: {image_size} must be a multiple of patch_size "
                              f"({patch_size})")
        if modality_experts is not None and (len(modality_experts) != len(MODALITIES) or min(modality_experts) < 1
                                             or sum(modality_experts) != num_experts):
            raise MoezooError(f"model.init_args.modality_experts: {modality_experts} must give {len(MODALITIES)} "
                              f"positive counts (image, text) summing to num_experts ({num_experts})")
        if moe_every and router == "top_k" and not 1 <= k <= num_experts:
            raise MoezooError(f"model.init_args.k: {k} must be between 1 and num_experts ({num_experts})")
        if init_from is not None and not moe_every:
            raise MoezooError("model.init_args.init_from: upcycling needs MoE layers (moe_every > 0)")
        self.save_hyperparameters()
        self.vocabulary, self.answers = list(vocabulary), list(answers or [])
        self.routing_label_names = {"modality": list(MODALITIES)}
        self.network = EarlyFusionTransformer(
            vocab_size=len(vocabulary), max_text_len=max_text_len, image_size=image_size, patch_size=patch_size,
            dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, moe=self.moe_args(),
            moe_every=moe_every, modality_groups=modality_experts is not None, dropout=dropout, stem=stem)
        if head == "vqa":
            self.classifier = nn.Linear(dim, len(self.answers))
        else:
            self.image_proj, self.text_proj = nn.Linear(dim, embed_dim), nn.Linear(dim, embed_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.metrics = nn.ModuleDict({f"{stage}_{m}": MeanMetric() for stage in ("val", "test")
                                      for m in ("acc", "vqa_acc")})
        self._retrieval: list = []  # (image embeddings, text embeddings, image ids) of the evaluation epoch
        self._flops: float | None = None

    def moe_args(self) -> MoEArgs | None:
        h = self.hparams
        if not h.moe_every:
            return None
        groups = [list(range(h.num_experts))]
        if h.modality_experts is not None:
            image = h.modality_experts[IMAGE]
            groups = [list(range(image)), list(range(image, h.num_experts))]
        return MoEArgs(num_experts=h.num_experts, router=h.router, k=h.k, capacity_factor=h.capacity_factor,
                       score=h.score, balance_loss_weight=h.balance_loss_weight, expert_groups=groups)

    # -- MoE-LLaVA: upcycle a trained dense model at the start of fit ---------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._trainer is None or self.trainer.ckpt_path:
            return
        if self.hparams.init_from:
            self.upcycle_from(self.hparams.init_from)
        elif self.hparams.upcycle:
            raise MoezooError("model.init_args.init_from: MoE-tuning upcycles a trained dense model; train "
                              "`moezoo fit --task vl/dense` first, then pass --model.init_from "
                              "<its checkpoints/best-*.ckpt or an exported folder>")

    def upcycle_from(self, source: str) -> list[str]:
        """Load the dense model ``source`` and make this model its upcycled copy: every weight but the routers' from
        it, each MoE layer's experts copies of the dense FFN it replaces. Returns the upcycled layers' names."""
        dense = load_dense(source)
        mine, theirs = self.hparams, dense.hparams
        for key in ("head", "vocabulary", "answers", "max_text_len", "image_size", "patch_size", "stem", "dim", "depth",
                    "num_heads", "mlp_ratio"):
            if mine[key] != theirs[key]:
                shown = theirs[key] if not isinstance(theirs[key], list) else f"{len(theirs[key])} entries"
                raise MoezooError(f"model.init_args.init_from: {source} has {key}={shown}, this model another; "
                                  "upcycle a dense model trained on the same data and size")
        network = dense.network
        names = upcycle(network, self.moe_args(), every=self.hparams.moe_every)
        missing, unexpected = self.network.load_state_dict(network.state_dict(), strict=False)
        if missing or unexpected:
            raise MoezooError(f"model.init_args.init_from: {source} does not fit this model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        head = self.classifier if self.hparams.head == "vqa" else None
        if head is not None:
            head.load_state_dict(dense.classifier.state_dict())
        else:
            for name in ("image_proj", "text_proj"):
                getattr(self, name).load_state_dict(getattr(dense, name).state_dict())
            self.logit_scale.data.copy_(dense.logit_scale.data)
        return names

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """VQA answer logits [B, A] of images [B, 3, H, W] and question word ids [B, L]."""
        states, _ = self.network(image, text)
        return self.classifier(states[:, 0])

    def embed(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        """The L2-normalised retrieval embedding [B, embed_dim] of images or of captions (one side at a time)."""
        states, modality = self.network(image=image, text=text)
        real = (modality != PAD).unsqueeze(-1).to(states.dtype)
        real[:, 0] = 0  # [CLS] is not pooled: the mean is over the image's patches or the caption's words
        pooled = (states * real).sum(1) / real.sum(1).clamp_min(1)
        proj = self.image_proj if image is not None else self.text_proj
        return F.normalize(proj(pooled).float(), dim=-1)

    def encode_questions(self, questions: list[str]) -> torch.Tensor:
        return encode(questions, self.vocabulary, self.hparams.max_text_len)

    @torch.no_grad()
    def answer(self, image: torch.Tensor, questions: list[str]) -> tuple[list[str], torch.Tensor]:
        """The top answer to each question about each image [B, 3, H, W] (preprocessed as the data does) and the
        answer probabilities [B, A]."""
        was = self.training
        self.eval()
        try:
            logits = self(image, self.encode_questions(questions).to(image.device))
        finally:
            self.train(was)
        probs = logits.float().softmax(-1)
        return [self.answers[i] for i in probs.argmax(-1).tolist()], probs

    @torch.no_grad()
    def token_experts(self, image: torch.Tensor, question: str) -> dict:
        """Which expert took each token of one image [1, 3, H, W] and question, per MoE layer (eval mode).

        Returns {"words": the question's words as read (unknown words as [unk]), "grid": (rows, cols) of the
        patches, "layers": {layer name: {"patches": long [rows * cols], "words": long [words], "cls": int}}}, where
        each entry is the expert of highest gate weight for that token and -1 where no expert took it (expert
        choice may leave a token to the residual alone)."""
        from .text import UNK, words

        text = self.encode_questions([question]).to(image.device)
        seen = {}
        hooks = [layer.router.register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, out)) for name, layer in
            ((n, m) for n, m in self.network.named_modules() if isinstance(m, MoE))]
        was = self.training
        self.eval()
        try:
            self(image, text)
        finally:
            self.train(was)
            for hook in hooks:
                hook.remove()
        length = int((text[0] > 0).sum())
        patches = self.network.num_patches
        layers = {}
        for name, routing in seen.items():
            best = torch.full((routing.num_tokens,), -1.0, device=routing.weight.device)
            best = best.scatter_reduce(0, routing.token_index, routing.weight.float(), reduce="amax")
            top = routing.weight.float() >= best[routing.token_index]
            expert = torch.full((routing.num_tokens,), -1, dtype=torch.long, device=best.device)
            expert[routing.token_index[top]] = routing.expert_index[top]
            expert = expert.cpu()
            layers[name] = {"cls": int(expert[0]), "patches": expert[1 : 1 + patches],
                            "words": expert[1 + patches : 1 + patches + length]}
        index = {w: i for i, w in enumerate(self.vocabulary)}
        shown = [w if w in index else UNK for w in words(question)][:length]
        side = self.hparams.image_size // self.hparams.patch_size
        return {"words": shown, "grid": (side, side), "layers": layers}

    # -- steps ----------------------------------------------------------------------------------------------------
    def routing_labels(self, batch, stage):
        """Count each MoE layer's routing by the modality of each token (padding words take no expert)."""
        if self.hparams.head != "vqa":
            return None  # two forwards per batch (image, then text): each is labelled in ``_retrieval_step``
        text = batch["text"]
        modality = self.network.token_modality(text.shape[0], True, text, text.device)
        return {"modality": modality.clamp_min(0).reshape(-1)}  # padding takes no expert: any id counts nothing

    def task_step(self, batch, stage: str) -> torch.Tensor:
        if stage == "test" and self._flops is None:
            self._flops = self.count_flops(batch)
        if self.hparams.head == "retrieval":
            return self._retrieval_step(batch, stage)
        logits = self(batch["image"], batch["text"])
        target = batch["scores"]
        mass = target.sum(-1, keepdim=True)
        loss = -(target / mass.clamp_min(1e-9) * logits.float().log_softmax(-1)).sum(-1)
        loss = loss[mass.squeeze(-1) > 0].mean() if bool((mass > 0).any()) else logits.sum() * 0
        size = logits.shape[0]
        self.log(f"{stage}/task_loss" if stage == "train" else f"{stage}/loss", loss, on_step=stage == "train",
                 on_epoch=True, batch_size=size)
        if stage != "train":
            pred = logits.argmax(-1)
            self.metrics[f"{stage}_acc"].update((pred == batch["answer"]).float())
            self.metrics[f"{stage}_vqa_acc"].update(target.gather(1, pred[:, None]).squeeze(1))
        return loss

    def _retrieval_step(self, batch, stage: str) -> torch.Tensor:
        if stage == "train":
            image_emb, text_emb = self.embed(image=batch["image"]), self.embed(text=batch["text"])
        else:
            from moezoo.moe import routing_labels

            image, text = batch["image"], batch["text"]
            sides = {"image": self.network.token_modality(image.shape[0], True, None, image.device),
                     "text": self.network.token_modality(text.shape[0], False, text, text.device)}
            with routing_labels(self, {"modality": sides["image"].reshape(-1)}):
                image_emb = self.embed(image=image)
            with routing_labels(self, {"modality": sides["text"].clamp_min(0).reshape(-1)}):
                text_emb = self.embed(text=text)
        logits = self.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
        # captions of the same image are all right answers: the targets spread over them
        same = (batch["image_id"][:, None] == batch["image_id"][None, :]).float()
        loss = 0.5 * (-(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
                      - (same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean())
        self.log(f"{stage}/task_loss" if stage == "train" else f"{stage}/loss", loss, on_step=stage == "train",
                 on_epoch=True, batch_size=logits.shape[0])
        if stage != "train":
            self._retrieval.append((image_emb.detach(), text_emb.detach(), batch["image_id"].detach()))
        return loss

    def _log_epoch(self, stage: str) -> None:
        if self.hparams.head == "retrieval":
            if self._retrieval:
                image_emb, text_emb, ids = (torch.cat(x) for x in zip(*self._retrieval))
                # the gallery of images: one per image id (its first caption's row)
                first = {}
                for row, i in enumerate(ids.tolist()):
                    first.setdefault(i, row)
                rows = torch.tensor(list(first.values()), device=ids.device)
                gallery, gallery_ids = image_emb[rows], ids[rows]
                similarity = text_emb @ gallery.t()  # [captions, images]
                right = ids[:, None] == gallery_ids[None, :]
                t2i, i2t = recall_at(similarity, right), recall_at(similarity.t(), right.t())
                for k in t2i:
                    self.log(f"{stage}/t2i_r{k}", t2i[k])
                    self.log(f"{stage}/i2t_r{k}", i2t[k])
                self.log(f"{stage}/acc", (t2i[1] + i2t[1]) / 2, prog_bar=True)  # the monitor: mean R@1
            self._retrieval = []
        else:
            for name in ("acc", "vqa_acc"):
                meter = self.metrics[f"{stage}_{name}"]
                if meter.update_count:
                    self.log(f"{stage}/{name}", meter.compute(), prog_bar=name == "acc")
                    meter.reset()
        if stage == "test" and self._flops is not None:
            self.log("test/flops_per_sample", float(self._flops))

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self._log_epoch("val")

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._flops = None

    def on_test_epoch_end(self):
        super().on_test_epoch_end()
        self._log_epoch("test")

    @torch.no_grad()
    def count_flops(self, batch) -> float:
        """FLOPs of one forward per sample of ``batch`` (``FlopCounterMode``; the experts' grouped GEMMs counted
        by moezoo's formula): the active compute the variants are matched on."""
        image, text = batch["image"][:1], batch["text"][:1]
        with FlopCounterMode(display=False) as counter:
            if self.hparams.head == "vqa":
                self(image, text)
            else:
                self.embed(image=image), self.embed(text=text)
        return float(counter.get_total_flops())

    def moe_layers(self) -> list[MoE]:
        return self.network.moe_layers()


def load_dense(source: str) -> VisionLanguageModel:
    """A trained vision-language model from a Lightning ``.ckpt`` or a ``save_pretrained`` folder, or a one-line
    MoezooError."""
    path = Path(source).expanduser()
    if not path.exists():
        raise MoezooError(f"model.init_args.init_from: no such file or directory: {path}")
    try:
        if path.is_dir():
            model = VisionLanguageModel.from_pretrained(str(path))
        else:
            model = VisionLanguageModel.load_from_checkpoint(str(path), map_location="cpu", weights_only=False)
    except MoezooError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line naming it
        raise MoezooError(f"model.init_args.init_from: cannot load {path}: {' '.join(str(err).split())[:200]}") \
            from None
    if model.hparams.moe_every:
        raise MoezooError(f"model.init_args.init_from: {path} is not a dense model (it has MoE layers every "
                          f"{model.hparams.moe_every} blocks); upcycle a vl/dense checkpoint")
    return model
