"""`dferclip import-official`: a checkpoint in the published training script's layout -> a project
checkpoint with the same logits.

The "published" model here is written for this test from the structure of the authors' code
(github zengqunzhao/DFER-CLIP: GenerateModel, PromptLearner, TextEncoder, Temporal_Transformer_Cls):
the same attribute names, so its state dict has their keys; their forward (prompt buffers of token
embeddings, the full 77-token text sequence pooled at argmax, einsum attention and the tanh-GELU
formula in the temporal model, frames in [0, 1], ``/ 0.01``); wrapped in DataParallel and saved
with ``torch.save`` in the dict ``main.py`` writes, its recorder an instance of a class of a module
named ``__main__``. Its CLIP is a random ``dferclip-micro`` with QuickGELU, as OpenAI's.
"""

from __future__ import annotations

import io
import math
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model.backbone import load_clip
from pipeline.model.checkpoint import load_checkpoint
from pipeline.model.official import _candidate_architectures, convert_official, expected_texts, read_official

N_CTX = 4
# Own descriptions, in the published descriptor format (one sentence per class, ending in a period).
DESCRIPTIONS = [
    "lifted cheeks, creased outer eye corners, and lip corners drawn up.",
    "inner brows pulled up, a sagging mouth, and heavy eyelids.",
    "a still face, level brows, and closed lips at rest.",
    "brows drawn down and together, glaring eyes, and pressed lips.",
    "brows lifted high, eyes wide open, and a dropped jaw.",
    "a wrinkled nose, a raised upper lip, and lowered brows.",
    "brows raised and pulled together, stretched lips, and tense eyelids.",
]
CLASS_NAME_TEXTS = [f"{c}." for c in CLASSES_7]  # "happiness." ... as the published class-name prompts


# --- the published model's structure, re-implemented ----------------------------------------


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class TanhGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.einsum("bhid,bhjd->bhij", q, k).mul(self.scale).softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), TanhGELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class TemporalTransformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Residual(PreNorm(dim, Attention(dim, heads, dim_head))),
                    Residual(PreNorm(dim, FeedForward(dim, mlp_dim))),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = ff(attn(x))
        return x


class TemporalCls(nn.Module):
    def __init__(self, num_patches, dim, depth, heads, mlp_dim, dim_head):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.temporal_transformer = TemporalTransformer(dim, depth, heads, dim_head, mlp_dim)

    def forward(self, x):
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding[:, : x.shape[1]]
        return self.temporal_transformer(x)[:, 0]


class PublishedPrompts(nn.Module):
    def __init__(self, texts, clip, tokenizer, class_specific, position):
        super().__init__()
        self.position, self.name_lens = position, [len(tokenizer.encode(t)) for t in texts]
        width = clip.ln_final.weight.shape[0]
        shape = (len(texts), N_CTX, width) if class_specific else (N_CTX, width)
        self.ctx = nn.Parameter(torch.randn(shape) * 0.02)
        self.tokenized_prompts = tokenizer([" ".join(["X"] * N_CTX) + " " + t for t in texts])  # not saved
        with torch.no_grad():
            emb = clip.token_embedding(self.tokenized_prompts)
        self.register_buffer("token_prefix", emb[:, :1])
        self.register_buffer("token_suffix", emb[:, 1 + N_CTX :])

    def forward(self):
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        if self.position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        rows = []
        for i, n in enumerate(self.name_lens):  # the class text moved into / before the context
            pre, text, rest, c = self.token_prefix[i], self.token_suffix[i, :n], self.token_suffix[i, n:], ctx[i]
            if self.position == "middle":
                rows.append(torch.cat([pre, c[: N_CTX // 2], text, c[N_CTX // 2 :], rest]))
            else:
                rows.append(torch.cat([pre, text, c, rest]))
        return torch.stack(rows)


class PublishedText(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.mask = clip.attn_mask  # the causal mask OpenAI's blocks carry as a plain attribute

    def forward(self, prompts, tokenized):
        x = self.transformer(prompts + self.positional_embedding, attn_mask=self.mask)  # all 77 tokens
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection


class GenerateModel(nn.Module):
    def __init__(self, texts, class_specific, seed, position="end"):
        super().__init__()
        torch.manual_seed(seed)
        backbone = load_clip("dferclip-micro", quick_gelu=True)
        clip = backbone.model
        self.prompt_learner = PublishedPrompts(texts, clip, backbone.tokenizer, class_specific, position)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.text_encoder = PublishedText(clip)
        self.image_encoder = clip.visual
        self.temporal_net = TemporalCls(num_patches=8, dim=64, depth=1, heads=8, mlp_dim=128, dim_head=8)
        self.clip_model_ = clip
        with torch.no_grad():  # as after fine-tuning: no weight at its initial value
            for p in [*self.image_encoder.parameters(), *self.temporal_net.parameters(), self.prompt_learner.ctx]:
                p.add_(torch.randn_like(p) * 0.02)

    def forward(self, image):
        n, t, c, h, w = image.shape
        feats = self.image_encoder(image.reshape(-1, c, h, w)).reshape(n, t, -1)
        video = self.temporal_net(feats)
        video = video / video.norm(dim=-1, keepdim=True)
        text = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        text = text / text.norm(dim=-1, keepdim=True)
        return video @ text.t() / 0.01


class RecorderMeter:
    """Like the training script's recorder: loss and accuracy curves as numpy arrays."""

    def __init__(self, total_epoch):
        self.total_epoch, self.current_epoch = total_epoch, 3
        self.epoch_losses = np.ones((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.full((total_epoch, 2), 50.0, dtype=np.float32)


def save_published(model: nn.Module, path, monkeypatch, recorder=None) -> None:
    """torch.save of the dict main.py writes; the recorder pickles as __main__.RecorderMeter."""
    monkeypatch.setattr(RecorderMeter, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    wrapped = torch.nn.DataParallel(model)
    optimizer = torch.optim.SGD([{"params": list(model.temporal_net.parameters())}], lr=1e-2, momentum=0.9)
    torch.save(
        {
            "epoch": 7,
            "state_dict": wrapped.state_dict(),
            "best_acc": torch.tensor([71.25]),
            "optimizer": optimizer.state_dict(),
            "recorder": recorder if recorder is not None else RecorderMeter(50),
        },
        path,
    )


@pytest.fixture(scope="module")
def clip_tensor():
    torch.manual_seed(11)
    return torch.rand(2, 8, 3, 32, 32)  # frames in [0, 1], as the published loader gives them


CASES = {
    "descriptions-class-specific": (DESCRIPTIONS, True, "end"),
    "descriptions-shared": (DESCRIPTIONS, False, "end"),
    "class-names-class-specific": (CLASS_NAME_TEXTS, True, "end"),
    "class-names-shared": (CLASS_NAME_TEXTS, False, "end"),
    "descriptions-class-specific-middle": (DESCRIPTIONS, True, "middle"),
    "class-names-shared-front": (CLASS_NAME_TEXTS, False, "front"),
}


@pytest.mark.parametrize(("texts", "class_specific", "position"), CASES.values(), ids=CASES.keys())
def test_imported_model_reproduces_the_published_logits(
    tmp_path, monkeypatch, clip_tensor, texts, class_specific, position
):
    published = GenerateModel(texts, class_specific, seed=len(texts[0]) + class_specific, position=position).eval()
    with torch.no_grad():
        want = published(clip_tensor)
    ckpt = tmp_path / "DFEW-set1-model_best.pth"
    save_published(published, ckpt, monkeypatch)

    official = read_official(ckpt)
    assert (official.epoch, round(official.best_acc, 2)) == (7, 71.25)
    assert not any(k.startswith("module.") for k in official.state_dict)
    # No options for the scripts' "end" layout: everything from the checkpoint itself.
    model = convert_official(official, **({} if position == "end" else {"class_token_position": position}))
    with torch.no_grad():
        got = model(clip_tensor)
    assert got.shape == (2, 7) and want.abs().max() > 1.0  # logits at the published scale, not ~0
    assert torch.linalg.norm(got - want) / torch.linalg.norm(want) <= 1e-5
    spec = model.spec["model"]
    assert spec["input_normalization"] == "none" and spec["logit_scale"] == 100.0 and spec["quick_gelu"] is True
    assert spec["class_specific_contexts"] is class_specific and spec["n_ctx"] == N_CTX
    assert (spec["clip_model"], spec["temporal_heads"], spec["temporal_mlp_dim"]) == ("dferclip-micro", 8, 128)
    assert model.class_names == list(CLASSES_7)
    # The recovered texts tokenize exactly as the originals (decoded, so spacing may differ).
    recovered = [model.spec["descriptions"][c][0] for c in CLASSES_7]
    assert [t.replace(" ", "") for t in recovered] == [t.replace(" ", "") for t in texts]


def test_cli_writes_a_project_checkpoint_with_the_texts_named(tmp_path, monkeypatch, clip_tensor):
    from stages.import_official import cli

    published = GenerateModel(CLASS_NAME_TEXTS, True, seed=3).eval()
    with torch.no_grad():
        want = published(clip_tensor)
    ckpt, out = tmp_path / "FER39K-model_best.pth", tmp_path / "imported" / "model.pt"
    save_published(published, ckpt, monkeypatch)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CLASS_NAME_TEXTS) + "\n")
    assert cli([str(ckpt), "--out", str(out), "--texts", str(texts), "--dataset", "ferv39k"]) == 0
    model, extra = load_checkpoint(out)  # as evaluate and predict load it
    with torch.no_grad():
        got = model(clip_tensor)
    assert torch.linalg.norm(got - want) / torch.linalg.norm(want) <= 1e-5
    assert model.spec["descriptions"]["happiness"] == ["happiness."]  # the named texts, verbatim
    assert extra["imported"]["epoch"] == 7 and len(extra["imported"]["sha256"]) == 64
    assert extra["run_name"] == "model"  # evaluate's output folder is named after it

    # Texts that are not the checkpoint's are refused, naming the class and what was found.
    with pytest.raises(UserError, match=r"class 'happiness' expects 'an expression of happiness\.'.*'happiness \.'"):
        convert_official(read_official(ckpt), texts="expression-of")
    assert expected_texts("class-names", list(CLASSES_7)) == CLASS_NAME_TEXTS
    broken = read_official(ckpt)
    broken.state_dict["prompt_learner.token_suffix"][2, 1] += 1e-3  # class 2, its second text token
    with pytest.raises(UserError, match=r"token_suffix row 145 is not a copy of any token embedding"):
        convert_official(broken)
    with pytest.raises(UserError, match=r"--classes: 2 names given, the checkpoint has 7 classes"):
        convert_official(read_official(ckpt), classes=["a", "b"])
    with pytest.raises(UserError, match=r"fit no candidate architecture: dferclip-rn-micro"):
        convert_official(read_official(ckpt), clip_model="dferclip-rn-micro")


class TemporalOnly(nn.Module):
    """Enough of a model for save_published (the refusal comes before the weights are read)."""

    def __init__(self):
        super().__init__()
        self.temporal_net = TemporalCls(num_patches=2, dim=8, depth=1, heads=1, mlp_dim=8, dim_head=8)


class _Payload:
    """Unpickling this object calls ``open(path, "w")``: a file appears if pickled code runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_callable_is_refused_and_does_not_run(tmp_path, monkeypatch):
    ckpt, marker = tmp_path / "evil.pth", tmp_path / "ran"
    save_published(TemporalOnly(), ckpt, monkeypatch, recorder=_Payload(marker))
    with pytest.raises(UserError, match=r"evil\.pth: refused to load .*io\.open.*no pickled code runs"):
        read_official(ckpt)
    assert not marker.exists()
    # The control: an unrestricted unpickler does run it.
    with open(ckpt, "rb"):
        torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_files_that_are_not_published_checkpoints(tmp_path):
    torch.save({"format": "something", "weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"other\.pth: not a checkpoint of the published training script"):
        read_official(tmp_path / "other.pth")
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2)}}, tmp_path / "cnn.pth")
    with pytest.raises(UserError, match=r"cnn\.pth: its state_dict is not a DFER-CLIP GenerateModel's"):
        read_official(tmp_path / "cnn.pth")
    (tmp_path / "junk.pth").write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(UserError, match=r"junk\.pth: refused to load"):
        read_official(tmp_path / "junk.pth")
    with pytest.raises(UserError, match=r"checkpoint not found"):
        read_official(tmp_path / "missing.pth")


def test_the_released_architecture_is_found_from_the_shapes():
    """The released files are OpenAI's ViT-B/32 fine-tuned: its shapes, written out here (768-wide
    12-layer vision tower on 32-px patches of 224 px, 512-wide 12-layer text tower, 77 tokens,
    49,408-token vocabulary, 512-d embedding), name ViT-B-32 first."""

    def meta(*shape):
        return torch.empty(shape, device="meta")

    state = {
        "image_encoder.conv1.weight": meta(768, 3, 32, 32),
        "image_encoder.class_embedding": meta(768),
        "image_encoder.positional_embedding": meta(7 * 7 + 1, 768),
        "text_encoder.positional_embedding": meta(77, 512),
        "text_encoder.text_projection": meta(512, 512),
        "clip_model_.token_embedding.weight": meta(49408, 512),
    }
    for i in range(12):
        state[f"image_encoder.transformer.resblocks.{i}.ln_1.weight"] = meta(768)
        state[f"text_encoder.transformer.resblocks.{i}.ln_1.weight"] = meta(512)
    assert _candidate_architectures(state)[0] == "ViT-B-32"
    state["image_encoder.positional_embedding"] = meta(14 * 14 + 1, 768)  # 16-px patches: no B/32
    assert "ViT-B-32" not in _candidate_architectures(state)


def test_a_recorder_pickled_by_numpy_1_loads(tmp_path, monkeypatch):
    """The authors trained with numpy 1.x, which pickles arrays through numpy.core.multiarray
    (numpy 2 writes numpy._core): both map to the inert stand-in. Written in torch's legacy
    format, whose pickle names globals as plain text lines, so the name can be swapped in place."""
    monkeypatch.setattr(RecorderMeter, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    buf = io.BytesIO()
    state = {"module.prompt_learner.ctx": torch.ones(2, 3), "module.temporal_net.cls_token": torch.ones(1, 1, 3)}
    torch.save(
        {"epoch": 2, "state_dict": state, "recorder": RecorderMeter(4)}, buf, _use_new_zipfile_serialization=False
    )
    numpy2 = b"cnumpy._core.multiarray\n_reconstruct\n"
    assert buf.getvalue().count(numpy2) == 1
    (tmp_path / "np1.pth").write_bytes(buf.getvalue().replace(numpy2, b"cnumpy.core.multiarray\n_reconstruct\n"))
    official = read_official(tmp_path / "np1.pth")
    assert official.epoch == 2 and torch.equal(official.state_dict["prompt_learner.ctx"], torch.ones(2, 3))
