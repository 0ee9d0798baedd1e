import pytest
import torch

from pipeline.config import TrainConfig, load_config
from pipeline.train.optim import build_optimizer, build_scheduler, lr_factor
from pipeline.typed import ConfigError


def _lrs(cfg: TrainConfig) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [p], "lr": 0.5}], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(cfg.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_matches_torch_multisteplr():
    cfg = TrainConfig(epochs=8, milestones=[3, 6], lr_gamma=0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6], gamma=0.1)
    ref = []
    for _ in range(8):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sched.step()
    assert _lrs(cfg) == pytest.approx(ref)
    assert isinstance(build_optimizer([{"params": [p]}], cfg), torch.optim.SGD)


def test_warmup_then_cosine_with_adamw():
    cfg = TrainConfig(epochs=6, optimizer="adamw", lr_schedule="cosine", warmup_epochs=2)
    lrs = _lrs(cfg)
    assert lrs[:3] == pytest.approx([0.5 / 3, 0.5 * 2 / 3, 0.5])  # linear warm-up, then the base lr
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # cosine decay after the warm-up
    assert lrs[-1] > 0
    assert lr_factor(2, cfg) == 1.0
    p = torch.nn.Parameter(torch.zeros(1))
    assert isinstance(build_optimizer([{"params": [p]}], cfg), torch.optim.AdamW)


def test_bad_optimizer_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        load_config(None, ["train.epochs=3", "train.warmup_epochs=3"])
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config(None, ["train.optimizer=adam"])
