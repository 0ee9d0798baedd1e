"""Checkpoints saved by the published DFER-CLIP training script -> this project's checkpoint.

The authors' ``main.py`` saves ``{"epoch", "state_dict", "best_acc", "optimizer", "recorder"}``
with ``torch.save``: ``state_dict`` is a ``torch.nn.DataParallel`` state dict (keys
``module.<name>``) of their ``GenerateModel`` and ``recorder`` an instance of ``RecorderMeter``, a
class of that script (pickled as ``__main__.RecorderMeter``) holding numpy arrays of the loss and
accuracy curves. Such a file is read with ``torch.load(weights_only=True)``: the recorder's class
and the numpy globals its arrays need are mapped to :class:`_Inert`, which builds nothing and runs
nothing; any other global (a pickled callable) is refused.

What the state dict holds, and where it goes in :class:`pipeline.model.dferclip.DferClip`:

- ``image_encoder.*``: the fine-tuned CLIP image encoder (OpenAI's names, which open_clip keeps).
- ``temporal_net.*``: the temporal Transformer (``temporal_transformer.layers.<i>.0`` attention
  behind residual and pre-norm wrappers: ``fn.norm``, ``fn.fn.to_qkv``, ``fn.fn.to_out.0``;
  ``.1`` the feed-forward: ``fn.fn.net.0`` and ``net.3``).
- ``prompt_learner.ctx``: the context vectors, (classes, n_ctx, width) class-specific or
  (n_ctx, width) shared.
- ``text_encoder.*``: the frozen text tower; ``clip_model_.*``: the whole CLIP model again, of
  which only ``token_embedding`` is new.
- ``prompt_learner.token_prefix`` / ``token_suffix``: the token embeddings of each class prompt
  ``[SOS] X X .. X <text> [EOS] pad..`` without the placeholders. Each row is a copy of a row of
  the token embedding table, so the class texts' exact token ids are read back by matching.

The published forward, reproduced by the converted model's config: frames scaled to [0, 1]
without CLIP's mean/std (``input_normalization: none``), QuickGELU in the CLIP towers, logits
``cos / 0.01`` (``logit_scale: 100``), the class text placed after the context (``end``, the
script's default; ``class_token_position`` cannot be read from the weights), and 8 temporal
attention heads (the script's fixed value; only their total width is in the weights).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig
from pipeline.datasets import CLASSES_7, CLASSES_11
from pipeline.errors import UserError
from pipeline.model.build import build_model
from pipeline.model.dferclip import PAPER_LOGIT_SCALE, DferClip
from pipeline.names import to_name

__all__ = ["OfficialCheckpoint", "read_official", "convert_official", "expected_texts", "PUBLISHED_TEMPORAL_HEADS"]

PUBLISHED_TEMPORAL_HEADS = 8  # Temporal_Transformer_Cls(heads=8, dim_head=64) in the published model
_KEYS = ("epoch", "state_dict", "best_acc", "optimizer", "recorder")


class _Inert:
    """Stand-in for the recorder's class and the numpy globals its arrays are rebuilt with:
    accepts any arguments and any state, keeps none of it, and has no behaviour to trigger."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


# Full names the unpickler may meet in a published checkpoint's recorder: the class itself
# (``__main__`` when main.py ran as a script, ``main`` when it was imported) and what numpy 1.x
# and 2.x pickle an ndarray and its dtype as.
_STAND_INS = [
    (_Inert, name)
    for name in (
        "__main__.RecorderMeter",
        "main.RecorderMeter",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.Float32DType",
        "numpy.dtypes.Float64DType",
    )
]


@dataclass
class OfficialCheckpoint:
    """A published checkpoint's model weights (``module.`` stripped) and what it says of itself."""

    state_dict: dict[str, torch.Tensor]
    epoch: int | None
    best_acc: float | None
    source: str
    sha256: str


def read_official(path: str | Path) -> OfficialCheckpoint:
    """Load a checkpoint saved by the published ``main.py`` without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — the unpickler's refusals come as several types
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)|unrecognized function (.+?)(?: which|$)|but got (<class '[^']+'>)", text)
        what = next((g for g in found.groups() if g), None) if found else None
        detail = f"it pickles {what}, which is not data" if what else f"{type(exc).__name__}: {text.splitlines()[0]}"
        raise UserError(
            f"{path}: refused to load as a published DFER-CLIP checkpoint ({detail}); only tensors, plain "
            "containers and the training script's RecorderMeter are accepted, so no pickled code runs"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise UserError(
            f"{path}: not a checkpoint of the published training script (expected a dict with "
            f"{', '.join(_KEYS)}; got {keys})"
        )
    state = {}
    for key, value in payload["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value.float() if value.is_floating_point() else value
    if "prompt_learner.ctx" not in state or "temporal_net.cls_token" not in state:
        raise UserError(
            f"{path}: its state_dict is not a DFER-CLIP GenerateModel's (no prompt_learner.ctx / temporal_net.cls_token)"
        )
    return OfficialCheckpoint(
        state,
        int(payload["epoch"]) if isinstance(payload.get("epoch"), int) else None,
        _scalar(payload.get("best_acc")),
        str(path),
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )


def _scalar(value: Any) -> float | None:
    """``best_acc`` as saved: a one-element tensor (the script's running accuracy) or a number."""
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


# --- architecture --------------------------------------------------------------------------


def _count(state: dict, prefix: str) -> int:
    """Number of numbered children ``<prefix><i>.`` in ``state``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _candidate_architectures(state: dict) -> list[str]:
    """open_clip architectures whose config gives the checkpoint's text tower and image encoder shapes."""
    import open_clip

    from pipeline.model.backbone import list_architectures

    text = {
        "context_length": state["text_encoder.positional_embedding"].shape[0],
        "width": state["clip_model_.token_embedding.weight"].shape[1],
        "vocab_size": state["clip_model_.token_embedding.weight"].shape[0],
        "layers": _count(state, "text_encoder.transformer.resblocks."),
    }
    embed_dim = state["text_encoder.text_projection"].shape[1]
    conv1 = state["image_encoder.conv1.weight"]
    vit = "image_encoder.class_embedding" in state
    out = []
    for name in list_architectures():
        cfg = open_clip.get_model_config(name) or {}
        t, v = cfg.get("text_cfg", {}), cfg.get("vision_cfg", {})
        if cfg.get("embed_dim") != embed_dim or "hf_model_name" in t or "timm_model_name" in v:
            continue
        if any(t.get(k, {"context_length": 77, "vocab_size": 49408}.get(k)) != n for k, n in text.items()):
            continue
        if vit:
            grid = math.isqrt(state["image_encoder.positional_embedding"].shape[0] - 1)
            ok = (
                isinstance(v.get("layers"), int)
                and v.get("width") == conv1.shape[0]
                and v.get("patch_size") == conv1.shape[-1]
                and v.get("image_size") == grid * conv1.shape[-1]
                and v.get("layers") == _count(state, "image_encoder.transformer.resblocks.")
            )
        else:  # CLIP's ModifiedResNet: stem width is half the config's width
            layers = [_count(state, f"image_encoder.layer{i}.") for i in range(1, 5)]
            ok = isinstance(v.get("layers"), (list, tuple)) and list(v["layers"]) == layers
            ok = ok and v.get("width", 64) == 2 * conv1.shape[0]
        if ok:
            out.append(name)
    # The plain name first: QuickGELU is forced anyway (OpenAI's CLIP, which the script fine-tunes).
    return sorted(out, key=lambda n: (n.endswith("-quickgelu"), n))


# --- state dict mapping ---------------------------------------------------------------------

_TEMPORAL = {
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.0\.fn\.norm\.": r"temporal.layers.\1.0.norm.",
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.0\.fn\.fn\.to_qkv\.": r"temporal.layers.\1.0.qkv.",
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.0\.fn\.fn\.to_out\.0\.": r"temporal.layers.\1.0.out.",
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.1\.fn\.norm\.": r"temporal.layers.\1.1.norm.",
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.0\.": r"temporal.layers.\1.1.fc1.",
    r"temporal_net\.temporal_transformer\.layers\.(\d+)\.1\.fn\.fn\.net\.3\.": r"temporal.layers.\1.1.fc2.",
    r"temporal_net\.cls_token$": "temporal.cls_token",
    r"temporal_net\.pos_embedding$": "temporal.pos_embedding",
}
# Read for the texts, or duplicates of what is mapped (the whole CLIP model is kept again).
_USED_ELSEWHERE = ("prompt_learner.token_prefix", "prompt_learner.token_suffix")


def _project_state(state: dict) -> dict[str, torch.Tensor]:
    """The published model's weights under this project's names; unknown keys are an error."""
    out: dict[str, torch.Tensor] = {"text_encoder.token_embedding.weight": state["clip_model_.token_embedding.weight"]}
    unknown = []
    for key, value in state.items():
        if key.startswith(("image_encoder.", "text_encoder.")) or key == "prompt_learner.ctx":
            out[key] = value
        elif key.startswith("temporal_net."):
            for pattern, repl in _TEMPORAL.items():
                new, n = re.subn("^" + pattern, repl, key)
                if n:
                    out[new] = value
                    break
            else:
                unknown.append(key)
        elif not (key.startswith("clip_model_.") or key in _USED_ELSEWHERE):
            unknown.append(key)
    if unknown:
        raise UserError(f"unknown weights in the published state_dict: {unknown[:5]}")
    return out


# --- class texts ----------------------------------------------------------------------------


def _token_ids(rows: torch.Tensor, table: torch.Tensor, what: str) -> torch.Tensor:
    """(N, W) rows that are copies of token embeddings -> (N,) their token ids (exact matches)."""
    table_sq = table.pow(2).sum(dim=1)  # (V,)
    # Most rows are the padding after EOT (token 0): equal to table row 0, no search needed.
    ids = torch.zeros(rows.shape[0], dtype=torch.long)
    todo = (rows != table[0]).any(dim=1).nonzero().flatten()
    for start in range(0, len(todo), 256):  # 256 x vocab distances at a time
        which = todo[start : start + 256]
        # Nearest row by squared distance (one matmul), then checked to be a copy of it.
        ids[which] = (table_sq - 2 * rows[which] @ table.t()).argmin(dim=1)
    off = (table[ids] - rows).abs().amax(dim=1)
    bad = (off > 1e-6 * (1.0 + rows.abs().amax(dim=1))).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise UserError(
            f"{what} row {i} is not a copy of any token embedding (off by {float(off[i]):.3g} from the nearest): "
            "the prompt buffers and clip_model_.token_embedding do not belong together"
        )
    return ids


def recover_token_ids(state: dict, sot: int, eot: int) -> list[list[int]]:
    """Each class prompt's text token ids (between the context and EOT), read from the buffers."""
    table = state["clip_model_.token_embedding.weight"]
    prefix, suffix = state["prompt_learner.token_prefix"], state["prompt_learner.token_suffix"]
    n_cls, length, width = suffix.shape
    first = _token_ids(prefix[:, 0], table, "prompt_learner.token_prefix")
    if (first != sot).any():
        raise UserError(
            f"prompt_learner.token_prefix: expected the start token ({sot}) in every row, got {first.tolist()}"
        )
    ids = _token_ids(suffix.reshape(-1, width), table, "prompt_learner.token_suffix").view(n_cls, length)
    texts = []
    for c in range(n_cls):
        row = ids[c].tolist()
        if eot not in row:
            raise UserError(f"prompt_learner.token_suffix: class {c}'s prompt has no end token ({eot})")
        texts.append(row[: row.index(eot)])
    return texts


def expected_texts(spec: str, class_names: list[str]) -> list[str]:
    """The class texts named by ``--texts``: ``class-names`` (``<name>.``, the published class-name
    prompts), ``expression-of`` (``an expression of <name>.``), a description-set YAML with one
    description per class, or a text file with one text per line in class order."""
    if spec == "class-names":
        return [f"{name}." for name in class_names]
    if spec == "expression-of":
        return [f"an expression of {name}." for name in class_names]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"--texts: expected class-names, expression-of or a file; {spec!r} is not a file")
    if path.suffix in (".yaml", ".yml"):
        from pipeline.llm.sets import load_description_set

        sets = load_description_set(path, class_names)
        several = [c for c in class_names if len(sets[c]) != 1]
        if several:
            raise UserError(f"--texts {path}: the published model has one text per class; {several} have several")
        return [sets[c][0] for c in class_names]
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(class_names):
        raise UserError(f"--texts {path}: {len(lines)} non-empty lines for {len(class_names)} classes")
    return lines


# --- conversion -----------------------------------------------------------------------------


def _class_names(n_cls: int, classes: list[str] | None) -> list[str]:
    if classes is not None:
        if len(classes) != n_cls:
            raise UserError(f"--classes: {len(classes)} names given, the checkpoint has {n_cls} classes")
        return list(classes)
    by_count = {len(CLASSES_7): CLASSES_7, len(CLASSES_11): CLASSES_11}
    if n_cls not in by_count:
        raise UserError(f"the checkpoint has {n_cls} classes: name them in order with --classes")
    return list(by_count[n_cls])


def convert_official(
    official: OfficialCheckpoint,
    *,
    classes: list[str] | None = None,
    texts: list[str] | str | None = None,
    clip_model: str | None = None,
    class_token_position: str = "end",
    temporal_heads: int = PUBLISHED_TEMPORAL_HEADS,
) -> DferClip:
    """The project model computing the published forward with the checkpoint's weights.

    ``classes`` names the classes in the checkpoint's output order (default: the paper's 7 or
    11 by their number); ``texts`` (a list in class order, or a spec for :func:`expected_texts`),
    when given, must tokenize to the recovered class texts, and are then kept verbatim (else the
    texts are decoded from their token ids).
    """
    import open_clip

    from pipeline.model.backbone import list_architectures

    state = official.state_dict
    ctx = state["prompt_learner.ctx"]
    n_cls = state["prompt_learner.token_prefix"].shape[0]
    names = _class_names(n_cls, classes)
    if isinstance(texts, str):
        texts = expected_texts(texts, names)
    qkv = state.get("temporal_net.temporal_transformer.layers.0.0.fn.fn.to_qkv.weight")
    inner = qkv.shape[0] // 3 if qkv is not None else 64 * temporal_heads
    if inner % temporal_heads:
        raise UserError(f"--temporal-heads {temporal_heads}: does not divide the attention width {inner}")
    fc1 = state.get("temporal_net.temporal_transformer.layers.0.1.fn.fn.net.0.weight")
    list_architectures()  # registers this project's architectures with open_clip
    if clip_model and clip_model not in open_clip.list_models():
        raise UserError(f"--clip-model: unknown architecture {clip_model!r}; `dferclip models` lists them")
    candidates = [clip_model] if clip_model else _candidate_architectures(state)
    if not candidates:
        raise UserError(
            f"{official.source}: no open_clip architecture has its image encoder and text tower shapes; "
            "name one with --clip-model"
        )
    mapped = _project_state(state)
    problems = []
    for arch in candidates:
        cfg = ModelConfig(
            clip_model=arch,
            pretrained=None,
            quick_gelu=True,
            num_frames=state["temporal_net.pos_embedding"].shape[1] - 1,
            temporal_depth=_count(state, "temporal_net.temporal_transformer.layers."),
            temporal_heads=temporal_heads,
            temporal_head_dim=inner // temporal_heads,
            temporal_mlp_dim=fc1.shape[0] if fc1 is not None else 1024,
            n_ctx=ctx.shape[-2],
            class_specific_contexts=ctx.dim() == 3,
            class_token_position=class_token_position,
            text_source="descriptions",
            input_normalization="none",
            logit_scale=PAPER_LOGIT_SCALE,
        )
        tok = open_clip.get_tokenizer(arch)
        ids = recover_token_ids(state, tok.sot_token_id, tok.eot_token_id)
        class_texts = _texts(ids, tok, cfg.n_ctx, names, texts)
        model = build_model(cfg, names, {n: [t] for n, t in zip(names, class_texts)}, load_weights=False)
        try:
            missing, unexpected = model.load_state_dict(mapped, strict=False)
        except RuntimeError as exc:
            problems.append(f"{arch}: {str(exc).splitlines()[0]}")
            continue
        if missing or unexpected:
            problems.append(f"{arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
            continue
        model.eval()
        return model
    raise UserError(f"{official.source}: the weights fit no candidate architecture: {'; '.join(problems)}")


def _texts(ids: list[list[int]], tokenizer, n_ctx: int, names: list[str], expected: list[str] | None) -> list[str]:
    """Class texts whose tokenization (after the context placeholders) gives exactly ``ids``."""

    def tokens_of(text: str) -> list[int]:
        row = tokenizer([" ".join(["X"] * n_ctx) + " " + text])[0].tolist()
        return row[1 + n_ctx : row.index(tokenizer.eot_token_id)]

    if expected is not None:
        if len(expected) != len(ids):
            raise UserError(f"--texts: {len(expected)} texts for {len(ids)} classes")
        for name, text, got in zip(names, expected, ids):
            if tokens_of(text) != got:
                raise UserError(
                    f"--texts: class {name!r} expects {text!r}, but the checkpoint's prompt reads "
                    f"{tokenizer.decode(got).strip()!r}"
                )
        return list(expected)
    out = []
    for name, got in zip(names, ids):
        text = tokenizer.decode(got).strip()
        if tokens_of(text) != got:
            raise UserError(
                f"class {name!r}: the recovered text {text!r} does not tokenize back to the same tokens; "
                "give the texts with --texts"
            )
        out.append(text)
    return out


def import_official(
    checkpoint: str | Path,
    out: str | Path,
    **options: Any,
) -> tuple[DferClip, Path]:
    """Convert ``checkpoint`` and write the project checkpoint ``out``; returns (model, path)."""
    from pipeline.model.checkpoint import save_checkpoint

    official = read_official(checkpoint)
    model = convert_official(official, **options)
    extra = {
        # evaluate names its output folder after the run: here the output file's name.
        "run_name": to_name(Path(out).stem, "imported"),
        "imported": {
            "from": "published DFER-CLIP training script (github.com/zengqunzhao/DFER-CLIP)",
            "source": str(checkpoint),
            "sha256": official.sha256,
            "epoch": official.epoch,
            "best_acc": official.best_acc,
        },
    }
    return model, save_checkpoint(model, out, extra)
