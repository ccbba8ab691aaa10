"""Int8-aware fine-tuning rounds where the engine's Q/DQ file rounds, trains with BatchNorm
frozen, and gives the plain model back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nscmonitor.training.int8_aware import fake_quant_weight, finetune, simulate_int8
from nscmonitor.training.model import build_model

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["resnet18", "small"])
def test_simulated_rounding_changes_the_output_and_restore_gives_the_plain_model_back(arch):
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    x = torch.rand(4, 1, 32, 32)
    plain = model(x).detach()
    restore = simulate_int8(model)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert "forward" not in vars(stem)  # the stem stays fp32, as in the engine
    rounded = model(x).detach()
    assert not torch.allclose(rounded, plain) and torch.allclose(rounded, plain, rtol=0.2, atol=0.2)
    restore()
    assert all("forward" not in vars(m) for m in model.modules())
    torch.testing.assert_close(model(x).detach(), plain)



@pytest.mark.parametrize("arch", ["resnet18", "small"])
def test_an_output_a_relu_follows_rounds_once_over_the_relus_range(arch):
    """As the CPU file folds a ReLU into its input's rounding: a BatchNorm output that goes
    into a ReLU is rounded after it, on 256 steps over [0, max]; the BatchNorm before a
    residual Add keeps its signed range."""
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    simulate_int8(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=name: seen.__setitem__(k, o.detach()))
             for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    model(torch.rand(4, 1, 32, 32))
    for h in hooks:
        h.remove()
    relu_fed = [k for k in seen if ".features." in k or ".layer" in k and k.endswith(".bn1")]
    assert len(relu_fed) >= 4
    for k in relu_fed:
        y = seen[k]
        step = float(y.max()) / 255
        assert float(y.min()) >= 0.0, k
        assert torch.allclose(y / step, torch.round(y / step), atol=2e-3), k
    if arch == "resnet18":
        last = seen["backbone.layer1.0.bn2"]  # feeds the residual Add
        assert float(last.min()) < 0.0

def test_weights_round_per_output_channel_to_int8_steps():
    w = torch.tensor([[1.0, 0.5, -0.26], [100.0, 3.0, -50.0]]).reshape(2, 3, 1, 1)
    q = fake_quant_weight(w)
    for row, qrow in zip(w, q):
        step = row.abs().max() / 127
        assert torch.allclose(qrow / step, torch.round(qrow / step), atol=1e-4)  # on its own channel's grid
        assert (qrow - row).abs().max() <= step / 2 + 1e-6
    assert q[0, 2].item() != 0.0  # a small channel keeps its resolution beside a large one


@pytest.mark.parametrize(("lo", "hi"), [(-0.3, 2.0), (0.0, 5.0)])
def test_activations_round_on_the_cpu_files_unsigned_grid(lo, hi):
    """The scale and zero point ONNX Runtime's quantiser gives a uint8 activation over the same
    MinMax range (its own ``compute_scale_zp``), so training sees the engine's rounding."""
    import numpy as np
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    from nscmonitor.training.int8_aware import _Ranges

    x = torch.linspace(lo, hi, 1001)
    q = _Ranges().fq(x, "t")
    zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255))
    levels = q / float(scale) + int(zp)
    assert torch.allclose(levels, torch.round(levels), atol=1e-3)
    assert levels.min() >= -1e-3 and levels.max() <= 255 + 1e-3
    assert (q - x).abs().max() <= float(scale) / 2 + 1e-5
    if lo == 0.0:  # after a ReLU: zero point 0, so all 256 steps cover [0, max]
        assert int(zp) == 0 and abs(float(scale) - hi / 255) < 1e-6


def test_finetune_trains_with_batchnorm_frozen_and_records_the_run():
    torch.manual_seed(1)
    model = build_model("resnet18", 2)
    bn = model.backbone.bn1
    before = (bn.running_mean.clone(), bn.running_var.clone())
    head = model.backbone.fc.weight.detach().clone()
    x, y = torch.rand(16, 1, 32, 32), torch.randint(0, 2, (16,))

    record = finetune(model, lambda epoch: iter([(x[:8], y[:8]), (x[8:], y[8:])]), nn.CrossEntropyLoss(),
                      steps=3, lr=1e-3, augment=lambda t: t)
    assert record["steps"] == 3 and record["lr"] == 1e-3 and record["last_loss"] > 0
    assert not torch.equal(model.backbone.fc.weight, head)  # it trained
    torch.testing.assert_close((bn.running_mean, bn.running_var), before)  # the export folds these
    assert not model.training and all("forward" not in vars(m) for m in model.modules())


@pytest.mark.parametrize(("field", "value"), [("int8_aware_steps", -1), ("int8_aware_steps", "150"),
                                              ("int8_aware_steps", 1.5), ("int8_aware_lr", 0.0),
                                              ("int8_aware_lr", "2e-5"), ("int8_aware_lr", float("nan"))])
def test_bad_int8_aware_settings_are_refused_before_training_starts(tmp_path, field, value):
    from nscmonitor.core.errors import UserFacingError
    from nscmonitor.training.train_data import TrainConfig

    with pytest.raises(UserFacingError, match=field):
        TrainConfig(data="d", out=str(tmp_path), **{field: value})
    cfg = tmp_path / "train.toml"
    cfg.write_text(f"{field} = -1\n")  # and through a config file, as scheduled retraining passes them
    with pytest.raises(UserFacingError, match=field):
        TrainConfig.from_sources(str(cfg))
