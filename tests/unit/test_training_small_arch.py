"""The ``small`` architecture folds its stem exactly (the export contract) and pools both
average and max into its classifier (what the OOD head reads as features)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("arch,width", [("small", 32), ("small24", 24), ("small16", 16)])
def test_small_folds_exactly_and_feeds_avg_and_max_pooled_features(arch: str, width: int) -> None:
    from nscmonitor.training.model import build_model, fold_stem, gradcam_layer

    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    assert model.backbone.conv1.out_channels == width and model.backbone.fc.in_features == 8 * width
    x = torch.rand(3, 1, 40, 40)
    assert torch.allclose(fold_stem(model)(x), model(x), atol=1e-5)
    assert gradcam_layer(model) is model.backbone.features
    seen = []
    model.backbone.fc.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    model(x)
    maps = model.backbone.features(torch.relu(model.backbone.bn1(model.backbone.conv1(
        ((x - model.mean) / model.std).expand(-1, 3, -1, -1)))))
    assert seen[0].shape == (3, 2 * maps.shape[1])
    assert torch.allclose(seen[0][:, maps.shape[1]:], maps.amax(dim=(2, 3)), atol=1e-6)
