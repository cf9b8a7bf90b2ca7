"""The model zoo: forward == head(features), shapes per METHOD.md §3.5, normalisation inside the
model, build errors, reproducible (re-)initialisation. ResNet-18 only on tiny batches."""

from __future__ import annotations

import pytest
import torch

from mixunlearn.datasets import DATASETS
from mixunlearn.models import MODELS, Normalize, build_model, fresh_copy, model_names

# name, dataset info, (C, H, W) of the MixBlock map, embedding size, family
CASES = [
    ("digits_cnn", DATASETS["digits"], (32, 4, 4), 128, "digits"),
    ("cnn2", DATASETS["fashion_mnist"], (32, 7, 7), 256, "cnn"),
    ("resnet18", DATASETS["cifar10"], (256, 8, 8), 512, "resnet"),
]


def _batch(info, n=3, seed=0):
    return torch.rand(n, info.channels, info.size, info.size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, info, fmap, emb, family", CASES, ids=[c[0] for c in CASES])
def test_shapes_and_forward_is_head_of_features(name, info, fmap, emb, family):
    model = build_model(name, info, seed=0).eval()
    x = _batch(info)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        fm = model.mix_feature_map(x)
        assert torch.allclose(logits, model.head(feats), atol=1e-6)
        # MixUnlearn's agnostic batches take the map and the logits from one trunk pass: exactly forward
        assert torch.equal(model.logits_from_map(fm), logits)
    assert logits.shape == (3, 10)
    assert feats.shape == (3, emb)
    assert fm.shape == (3, *fmap)
    assert fm.shape[-1] == 4 if name == "digits_cnn" else fm.shape[-1] * 4 == info.size
    assert model.family == family and model.num_classes == 10


def test_digits_map_side_is_4():
    # METHOD.md §3.5: the 8x8 digits use the 4x4 block (not the 2x2 the 1/4 rule would give).
    m = build_model("digits_cnn", DATASETS["digits"], seed=0)
    assert m.mix_feature_map(_batch(DATASETS["digits"])).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name, info", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_normalisation_is_inside_the_model(name, info):
    model = build_model(name, info, seed=0).eval()
    norm = model.normalize
    assert isinstance(norm, Normalize)
    assert norm.mean.flatten().tolist() == pytest.approx(list(info.mean))
    assert norm.std.flatten().tolist() == pytest.approx(list(info.std))
    # The buffers travel with the weights (state dict), so a saved model carries its normalisation.
    assert "normalize.mean" in model.state_dict() and "normalize.std" in model.state_dict()
    x = _batch(info, n=2)
    expected = (x - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    # Changing the normalisation constants changes the output: the model does normalise its input.
    with torch.no_grad():
        before = model(x)
        norm.mean.add_(0.3)
        assert not torch.allclose(before, model(x))


def test_cnn2_follows_laf_layout():
    m = build_model("cnn2", DATASETS["mnist"], seed=0)
    assert m.fc1.in_features == 32 * 7 * 7 and m.fc1.out_features == 256
    linears = [mod for mod in m.head.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(256, 128), (128, 10)]
    # The head is linear (no activation inside): head(a + b) = head(a) + head(b) - head(0).
    a, b = torch.randn(2, 256), torch.randn(2, 256)
    zero = torch.zeros(2, 256)
    with torch.no_grad():
        assert torch.allclose(m.head(a + b), m.head(a) + m.head(b) - m.head(zero), atol=1e-5)


def test_resnet18_cifar_stem():
    m = build_model("resnet18", DATASETS["cifar10"], seed=0)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(mod, torch.nn.MaxPool2d) for mod in m.modules())
    assert 11_000_000 < sum(p.numel() for p in m.parameters()) < 11_300_000


def test_build_model_errors_list_known_names():
    with pytest.raises(ValueError) as err:
        build_model("vgg16")
    for name in model_names():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="use model 'resnet18'"):
        build_model("cnn2", DATASETS["cifar10"])
    assert set(model_names()) == set(MODELS) == {"digits_cnn", "cnn2", "resnet18"}


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    info = DATASETS["digits"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_model("digits_cnn", info, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model("digits_cnn", info, seed=7)
    c = build_model("digits_cnn", info, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_channels_and_classes_follow_the_dataset():
    svhn = DATASETS["svhn"]
    m = build_model("resnet18", svhn, seed=0)
    assert m.conv1.in_channels == 3 and m.num_classes == svhn.n_classes
    m1 = build_model("cnn2", DATASETS["mnist"], seed=0)
    assert m1.conv1[0].in_channels == 1


def test_fresh_copy_reinitialises_reproducibly():
    info = DATASETS["digits"]
    model = build_model("digits_cnn", info, seed=0)
    # Make the model "trained": change weights and BN statistics.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(_batch(info, n=8))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = fresh_copy(model, 5), fresh_copy(model, 5), fresh_copy(model, 6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # reproducible per seed
    weights = [k for k in sa if k.endswith("weight") and "normalize" not in k]
    assert all(not torch.equal(sa[k], trained[k]) for k in weights)  # every layer re-initialised
    assert any(not torch.equal(sa[k], sc[k]) for k in weights)  # another seed, other weights
    bn = [k for k in sa if k.endswith("running_mean")]
    assert bn and all(float(sa[k].abs().max()) == 0.0 for k in bn)  # BN statistics reset
    assert torch.equal(sa["normalize.mean"], trained["normalize.mean"])  # normalisation kept
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)  # source untouched
    assert type(a) is type(model) and a is not model
