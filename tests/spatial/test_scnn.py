"""SCNN: the slice sweep, the lane scenes, the models and the span IoU."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from labkit.spatial.scnn import LaneNet, SpatialConv, lane_scenes, receptive_field, span_iou
from labkit.spatial.train import evaluate_lanes, train_lane_net


def _loop_sweep(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """Eq. 1 written with the convolution itself, row by row (the oracle of the matmul form)."""
    rows = list(x.unbind(2))
    for i in range(1, len(rows)):
        rows[i] = rows[i] + F.relu(conv(rows[i - 1]))
    return torch.stack(rows, 2)


def test_sweep_by_hand() -> None:
    # one channel, one column, a 1-tap kernel of weight 1 and bias 0: rows [1, -3, 2]
    # row 1 = -3 + relu(1) = -2; row 2 = 2 + relu(-2) = 2 (the updated row 1 sends the message)
    conv = torch.nn.Conv1d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    x = torch.tensor([1.0, -3.0, 2.0]).view(1, 1, 3, 1)
    out = SpatialConv.sweep(x, conv, reverse=False)
    assert out.flatten().tolist() == [1.0, -2.0, 2.0]
    up = SpatialConv.sweep(x, conv, reverse=True)  # row 1 = -3 + relu(2) = -1; row 0 = 1 + 0
    assert up.flatten().tolist() == [1.0, -1.0, 2.0]


def test_sweep_matches_the_convolution_loop() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(3, 3, 5, padding=2)
    x = torch.randn(2, 3, 7, 11)
    torch.testing.assert_close(SpatialConv.sweep(x, conv, reverse=False), _loop_sweep(x, conv))
    flipped = _loop_sweep(x.flip(2), conv).flip(2)
    torch.testing.assert_close(SpatialConv.sweep(x, conv, reverse=True), flipped)


@pytest.mark.parametrize("direction, moved", [("down", "last_row"), ("up", "none"),
                                              ("right", "none"), ("left", "none")])
def test_one_direction_carries_information_one_way(direction: str, moved: str) -> None:
    """A change in the top row reaches the bottom row through a downward sweep only."""
    torch.manual_seed(1)
    layer = SpatialConv(2, kernel=3, directions=(direction,))
    with torch.no_grad():
        for conv in layer.convs.values():
            conv.bias.fill_(1.0)  # keep the ReLU open
    x = torch.rand(1, 2, 6, 5)
    y = x.clone()
    y[:, :, 0] += 1.0
    diff = (layer(x) - layer(y)).abs()[0, :, -1].max()
    assert (diff > 0) == (moved == "last_row")


def test_spatial_conv_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kernel"):
        SpatialConv(4, kernel=4)
    with pytest.raises(ValueError, match="directions"):
        SpatialConv(4, directions=("diagonal",))
    with pytest.raises(TypeError, match="channels"):
        SpatialConv(2.5)  # type: ignore[arg-type]


def test_lane_scenes_shapes_bands_and_seed() -> None:
    s = lane_scenes(5, height=32, width=16, gap=(4, 6), seed=3)
    assert s.images.shape == (5, 1, 32, 16) and s.masks.shape == s.occluded.shape == (5, 32, 16)
    band_rows = s.occluded[:, :, 0].sum(dim=1)
    assert torch.equal(band_rows, s.gap) and ((4 <= s.gap) & (s.gap <= 6)).all()
    assert (s.images[:, 0][s.occluded] == 0.5).all()  # hidden: a flat grey
    assert (s.masks & s.occluded).any(dim=(1, 2)).all()  # every band hides some lane
    again = lane_scenes(5, height=32, width=16, gap=(4, 6), seed=3)
    assert torch.equal(s.images, again.images)
    assert not torch.equal(s.images, lane_scenes(5, height=32, width=16, gap=(4, 6), seed=4).images)


def test_lane_scenes_bad_arguments() -> None:
    with pytest.raises(ValueError, match="occlusion length"):
        lane_scenes(2, gap=(-1, 3))
    with pytest.raises(ValueError, match="gap"):
        lane_scenes(2, height=16, gap=(2, 30))
    with pytest.raises(ValueError, match="n must be"):
        lane_scenes(0)
    with pytest.raises(TypeError, match="gap"):
        lane_scenes(2, gap=5)  # type: ignore[arg-type]


def test_three_models_have_equal_parameters_and_scnn_sees_everything() -> None:
    models = {k: LaneNet(k, channels=4, height=64, width=8) for k in ("plain", "dilated", "scnn")}
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert len(set(counts.values())) == 1, counts
    rf = {k: receptive_field(m, height=64, width=8) for k, m in models.items()}
    assert rf["plain"] < rf["dilated"] < rf["scnn"] == 64


def test_receptive_field_of_one_conv_by_hand() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(0, 1))  # (1, 1, H, W) -> (1, H, W)
    assert receptive_field(model, height=9, width=9) == 3


def test_lane_net_rejects_wrong_sizes() -> None:
    model = LaneNet("scnn", channels=2, height=16, width=8)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 16, 8\)"):
        model(torch.zeros(1, 1, 16, 10))
    with pytest.raises(TypeError, match="images"):
        model(torch.zeros(1, 1, 16, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="even"):
        LaneNet("plain", height=15, width=8)
    with pytest.raises(ValueError, match="kind"):
        LaneNet("renet")


def test_span_iou_by_hand_and_errors() -> None:
    pred = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.bool)
    mask = torch.tensor([[[0, 1, 1, 0]]], dtype=torch.bool)
    everywhere = torch.ones_like(pred)
    assert span_iou(pred, mask, everywhere) == pytest.approx(1 / 3)
    right = torch.tensor([[[0, 0, 1, 1]]], dtype=torch.bool)
    assert span_iou(pred, mask, right) == 0.0  # one true pixel there, missed
    assert span_iou(pred, mask, torch.zeros_like(pred)) == 1.0  # nothing to score
    with pytest.raises(ValueError, match="one shape"):
        span_iou(pred, mask, torch.ones(1, 1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="pred"):
        span_iou(pred.float(), mask, everywhere)


def test_training_lowers_the_loss_and_beats_the_empty_mask() -> None:
    torch.manual_seed(0)
    scenes = lane_scenes(32, height=16, width=8, gap=(2, 3), n_lanes=1, seed=0)
    model = LaneNet("plain", channels=4, height=16, width=8)
    losses = train_lane_net(model, scenes, steps=40, batch_size=8, lr=1e-2)
    assert sum(losses[-5:]) < sum(losses[:5])
    scores = evaluate_lanes(model, scenes)
    assert scores.empty == 0.0 and scores.visible > 0.3
