"""Building the CLIP backbone with open_clip: architectures are data, weights come from a tag or a file.

Architectures are open_clip model configs; this project adds small ones in ``model_configs/``
(``dferclip-tiny`` for the demo, ``dferclip-micro`` for unit tests), registered on first use.
Weights: an open_clip pretrained tag (the paper: ``ViT-B-32`` + ``openai``; this project's own
``dferclip-rn-micro`` + ``synth``, shipped in ``weights/``), a local file, or none (random init). OpenAI's CLIP weights were trained with QuickGELU; open_clip only *warns*
when the architecture does not match, which silently degrades every feature — so the
activation is taken from the tag's own metadata unless the user says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import UserError

__all__ = ["Backbone", "load_clip", "list_architectures", "shipped_weights", "WEIGHTS_DIR", "cli"]

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
# Weights this project ships (``dferclip pretrain``): ``<file>.pt`` + its manifest ``<file>.json``.
WEIGHTS_DIR = Path(__file__).parent / "weights"
_registered = False


def shipped_weights() -> list[dict]:
    """The manifests of the shipped weights, each with ``path`` (the weights file) added."""
    out = []
    for manifest in sorted(WEIGHTS_DIR.glob("*.json")):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        out.append({**data, "path": str(manifest.with_name(data["file"]))})
    return out


def _register_shipped_weights() -> None:
    """Make every shipped weights file an open_clip pretrained tag of its architecture.

    open_clip has no public call for adding a tag, but a tag's entry in its registry may name a
    local ``file`` instead of a URL (``open_clip.pretrained.download_pretrained`` returns it as
    is), so ``create_model("dferclip-rn-micro", pretrained="synth")`` — and ``model.pretrained``,
    ``dferclip models --tags`` — treat it like any downloadable tag, and it never touches the
    network. The weights were trained with CLIP's mean/std and GELU (not QuickGELU).
    """
    import open_clip
    from open_clip import pretrained as registry

    for entry in shipped_weights():
        tags = registry._PRETRAINED.setdefault(entry["architecture"], {})
        tags[entry["tag"]] = {
            "file": entry["path"],
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
            "quick_gelu": False,
        }


def _register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _register_shipped_weights()
        _registered = True


def list_architectures() -> list[str]:
    """open_clip's architectures plus this project's tiny ones."""
    import open_clip

    _register_configs()
    return open_clip.list_models()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning(active: bool):
    """open_clip warns on every random init; here it is asked for (tests, the demo, or a
    checkpoint about to overwrite the weights), so the warning would only mislead."""
    if not active:
        yield
        return
    root, flt = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


@dataclass
class Backbone:
    model: torch.nn.Module  # an open_clip.CLIP
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quick_gelu: bool


def _resolve_quick_gelu(name: str, pretrained: str | None, weights: str | None, quick_gelu: bool | None) -> bool:
    if quick_gelu is not None:
        return quick_gelu
    if name.endswith("-quickgelu"):
        return False  # the architecture config already enables it
    if pretrained and not weights:
        import open_clip

        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    return False


def load_clip(
    name: str,
    pretrained: str | None = None,
    weights: str | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> Backbone:
    """Build an open_clip CLIP model in fp32 on the CPU.

    ``weights`` (a local file) wins over ``pretrained`` (a tag, downloaded once into open_clip's
    cache); with neither, the model is randomly initialised. ``quick_gelu=None`` infers the
    activation from the tag (OpenAI tags: QuickGELU); for a local copy of OpenAI weights pass
    ``quick_gelu=True`` (config key ``model.quick_gelu``).
    """
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        raise UserError(f"model.clip_model: unknown architecture {name!r}; `dferclip models` lists them")
    if weights:
        if not Path(weights).is_file():
            raise UserError(f"model.weights: file not found: {weights}")
        source: str | None = weights
    elif pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UserError(
                f"model.pretrained: {name} has no pretrained tag {pretrained!r} (known: {', '.join(tags) or 'none'})"
            )
        source = pretrained
    else:
        source = None
    use_quick_gelu = _resolve_quick_gelu(name, pretrained, weights, quick_gelu)
    logger.debug(
        f"CLIP {name}: weights from {source}"
        if source
        else f"CLIP {name}: random initialisation (no pretrained tag or weights file)"
    )
    try:
        with _quiet_random_init_warning(source is None):
            model = open_clip.create_model(
                name, pretrained=source, force_quick_gelu=use_quick_gelu, cache_dir=cache_dir, weights_only=True
            )
    except Exception as exc:  # network errors surface as many different types
        if source is None or weights:
            raise
        raise UserError(
            f"could not load pretrained weights {name}/{pretrained} ({type(exc).__name__}: {exc}). "
            "Offline? Download them once where there is internet (they are cached under "
            "~/.cache/huggingface or open_clip's cache) or set model.weights to a local file."
        ) from exc
    model.eval()
    if not hasattr(model, "token_embedding") or getattr(model, "text_pool_type", "argmax") != "argmax":
        raise UserError(f"model.clip_model: {name} has no OpenAI-style text tower (EOT pooling); pick a CLIP ViT")
    vis = model.visual
    size = vis.image_size if isinstance(vis.image_size, int) else vis.image_size[0]
    mean = tuple(getattr(vis, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(vis, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return Backbone(model, open_clip.get_tokenizer(name), int(size), mean, std, use_quick_gelu)


def cli(argv: list[str] | None = None) -> int:
    """`dferclip models`: list architectures (and pretrained tags with --tags)."""
    from pipeline.cli import command_parser

    parser = command_parser("dferclip models", cli.__doc__)
    parser.add_argument("--tags", action="store_true", help="also list each architecture's pretrained tags")
    parser.add_argument("--filter", default="", help="substring to filter names")
    args = parser.parse_args(argv)
    import open_clip

    # The listing is the command's output: stdout.
    for name in list_architectures():
        if args.filter.lower() not in name.lower():
            continue
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) if args.tags else ""
        print(f"{name}{'  ' + tags if tags else ''}")
    sys.stdout.flush()
    return 0
