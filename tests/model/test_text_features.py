"""When the class text features are encoded again and when a cached copy is reused
(DferClip.text_features): the cache must never hand out features of other context vectors,
another autocast dtype, or a graph that training already freed; and a class with several texts
is the normalised mean of its texts' normalised embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import build_model
from pipeline.model.dferclip import class_texts
from tests.micro import micro_model

CLASSES = ["happiness", "sadness", "anger"]
DESCRIPTIONS = {
    "happiness": ["cheeks raised and lip corners pulled up", "a wide smile", "eyes narrowed by the cheeks"],
    "sadness": ["inner brows raised, lip corners pulled down"],
    "anger": ["brows lowered and drawn together", "lips pressed together"],
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(micro_model(), CLASSES, DESCRIPTIONS)


def test_training_steps_encode_the_text_anew(model):
    # With gradients on, every call builds its own graph: a reused copy would be a graph the
    # previous step's backward already freed (and a stale one after the optimizer step).
    model.train()
    opt = torch.optim.SGD([model.prompt_learner.ctx], lr=1.0)
    first = model.text_features()
    first.sum().backward()
    opt.step()
    second = model.text_features()
    second.sum().backward()  # fails on a freed graph if the first result were handed out again
    assert second is not first and not torch.allclose(first.detach(), second.detach())
    assert second.requires_grad and model._text_cache is None  # nothing cached under grad


def test_new_context_vectors_are_encoded_anew(model):
    model.eval()
    pl = model.prompt_learner
    with torch.no_grad():
        before = model.text_features()
        old = pl.ctx  # kept alive: the new tensor cannot reuse its memory
        new = nn.Parameter(old.detach() + 0.05)
        while new._version < old._version:  # the same in-place version count as the old one:
            new.add_(0.0)  # only the tensor itself tells them apart
        assert new._version == old._version
        pl.ctx = new
        after = model.text_features()
        pl.ctx = old
    assert not torch.allclose(before, after)


def test_autocast_gets_its_own_copy(model):
    model.eval()
    with torch.no_grad():
        plain = model.text_features()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.text_features()
        again = model.text_features()
    assert (plain.dtype, mixed.dtype, again.dtype) == (torch.float32, torch.bfloat16, torch.float32)
    torch.testing.assert_close(mixed.float(), plain, atol=2e-2, rtol=0)


def test_a_class_is_the_normalised_mean_of_its_texts(model):
    model.eval()
    pl, te = model.prompt_learner, model.text_encoder
    with torch.no_grad():
        rows = F.normalize(te(pl(te.token_embedding), pl.eot_index), dim=-1)  # one row per text
        feats = model.text_features()
    # rows in class order: happiness 0..2, sadness 3, anger 4..5
    assert pl.row_class.tolist() == [0, 0, 0, 1, 2, 2]
    means = [rows[0:3].mean(0), rows[3], rows[4:6].mean(0)]
    expected = torch.stack([m / m.norm() for m in means])
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))


def test_text_source_errors_are_exact():
    with pytest.raises(ValueError, match=r"^text_source=descriptions needs a description set$"):
        class_texts("descriptions", CLASSES, None)
    with pytest.raises(ValueError, match=r"^unknown text source 'captions'$"):
        class_texts("captions", CLASSES, None)
    # a class missing and a class with an empty list are both named, in class order
    with pytest.raises(ValueError, match=r"^the description set has no descriptions for: sadness, anger$"):
        class_texts("descriptions", CLASSES, {"happiness": ["a wide smile"], "sadness": []})
    texts = class_texts("descriptions", CLASSES, DESCRIPTIONS)
    assert texts == [DESCRIPTIONS[c] for c in CLASSES] and texts[0] is not DESCRIPTIONS["happiness"]  # copies
