"""``train.precision`` and ``train.compile`` (pipeline/train/precision.py) on the CPU: the dtype
the image encoder computes in during a recipe step, closeness to fp32, the text-feature cache
across precisions, refused values, and the compiled encoder's checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import TrainConfig, load_config
from pipeline.train.precision import autocast_for, prepare_model
from pipeline.train.recipe import Recipe, RunSpec, build_run_model
from pipeline.typed import ConfigError
from tests.micro import micro_model

CLASSES = ("happiness", "sadness", "anger")
T, B, S = 4, 4, 32  # frames per clip, clips per batch, the micro model's image size
CPU = torch.device("cpu")

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 per value); through the micro encoder,
# temporal model and cosine logits the error measured ~1e-2 of the largest logit. 4e-2 leaves
# room without letting an unrelated result (a different model, fp16 overflow) pass.
BF16_RTOL = 4e-2


def _spec(precision: str) -> RunSpec:
    train = TrainConfig(epochs=1, optimizer="adamw", milestones=[], precision=precision, seed=5)
    return RunSpec(
        model=micro_model(num_frames=T, text_source="class_names"),
        train=train,
        class_names=CLASSES,
        descriptions=None,
        run_name="precision",
    )


@pytest.fixture(scope="module")
def built():
    """One micro model (train.seed's weights); each test takes a deep copy."""
    return build_run_model(_spec("fp32"))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (B, T, 3, S, S), dtype=torch.uint8, generator=g)
    return video, torch.arange(B) % len(CLASSES)


def _encoder_dtypes(built, precision: str, batch) -> tuple[set, float]:
    """Output dtypes of every Linear/Conv inside the image encoder during one recipe step, and the loss."""
    model = copy.deepcopy(built)
    seen: set = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        for m in model.image_encoder.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    row = Recipe(_spec(precision), model, device=CPU).train_epoch([batch])
    for h in hooks:
        h.remove()
    return seen, row["train_loss"]


def test_bf16_runs_the_image_encoder_in_bfloat16_and_stays_close_to_fp32(built, batch):
    bf16, loss_bf16 = _encoder_dtypes(built, "bf16", batch)
    fp32, loss_fp32 = _encoder_dtypes(built, "fp32", batch)
    assert bf16 == {torch.bfloat16}
    assert fp32 == {torch.float32}
    # Same weights (same seed), same batch: the loss of the step within bf16's tolerance.
    assert loss_bf16 == pytest.approx(loss_fp32, rel=BF16_RTOL)
    assert loss_bf16 != loss_fp32  # it did compute in another precision


def test_fp16_falls_back_to_fp32_off_the_gpu(built, batch):
    fp16, _ = _encoder_dtypes(built, "fp16", batch)
    assert fp16 == {torch.float32}


def test_logits_close_to_fp32_and_the_text_cache_does_not_cross_precisions(built, batch):
    video, _ = batch
    model = copy.deepcopy(built).eval()
    with torch.no_grad():
        with autocast_for(CPU, "bf16"):
            low = model(video)
        # Evaluation caches the class text features: a bf16 copy must not be reused in fp32.
        full = model(video)
        fresh = copy.deepcopy(built).eval()(video)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(full, fresh, rtol=1e-5, atol=1e-5)
    scale = fresh.abs().max().item()
    assert (low.float() - fresh).abs().max().item() <= BF16_RTOL * scale
    assert not torch.equal(low.float(), fresh)


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.precision=fp64", "train.precision"), ("train.compile=maybe", "train.compile")],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(f"{key}: ")


def test_compile_defaults_off_and_is_read_from_the_config():
    assert TrainConfig().compile is False and TrainConfig().precision == "fp32"
    assert load_config(None, ["train.compile=true", "train.precision=bf16"]).train.compile is True


@pytest.mark.slow
def test_compiled_encoder_computes_the_same_and_keeps_checkpoint_keys(built, batch):
    video, _ = batch
    eager = copy.deepcopy(built).eval()
    compiled = prepare_model(copy.deepcopy(built).eval(), CPU, compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        pixels = video.flatten(0, 1).float() / 255
        ran = compiled.image_encoder(pixels)
        torch.testing.assert_close(ran, eager.image_encoder(pixels), rtol=1e-4, atol=1e-4)
    # It really ran through the compiler: dynamo recorded a frame for the encoder.
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1
    # A checkpoint of the compiled model loads into a plain one.
    plain = build_run_model(_spec("fp32"))
    plain.load_state_dict(compiled.state_dict())  # strict: every key matches
