"""Foreign checkpoints: the DeSTSeg teacher in timm / DeSTSeg layouts, the official DRAEM .pckl files."""

import pytest
import torch
from torchvision.models import resnet18

from anogen.detectors.destseg.network import DestsegNet, teacher_state_layout
from anogen.detectors.destseg.trainer import load_teacher_weights
from anogen.detectors.draem.network import DraemNet
from anogen.detectors.draem.official import load_official_draem, official_to_ours, ours_to_official
from anogen.errors import DataError

# ----------------------------------------------------------------------------- ResNet18 teacher


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(5)
    net = resnet18(weights=None)
    # non-trivial BN statistics, so that a mix-up of buffers would show
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net


def _teacher_matches(state, ref):
    net = DestsegNet(zero_init_last=False)
    net.teacher.load_torchvision_state(state)
    assert torch.equal(net.teacher.conv1.weight, ref.conv1.weight)
    assert torch.equal(net.teacher.layers[2][0].downsample[1].running_var, ref.layer3[0].downsample[1].running_var)
    assert torch.equal(net.teacher.layers[1][1].bn2.bias, ref.layer2[1].bn2.bias)
    x = torch.rand(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        y = ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        assert torch.allclose(net.teacher(x)[2], y, atol=1e-5)


def _timm_checkpoint(ref):
    """A timm training checkpoint, built from the torchvision-layout model by renaming.

    timm 0.6.12's ResNet names its tensors exactly like torchvision's (``conv1``, ``bn1``,
    ``layerN.i.conv1/bn1/conv2/bn2``, ``layerN.0.downsample.0/1``, ``fc``; its ``act1``,
    ``aa`` and ``drop_block`` hold no tensors); its training script saves
    ``{"state_dict": ..., "state_dict_ema": ...}`` of a DataParallel model (``module.``)."""
    plain = ref.state_dict()
    ema = {f"module.{k}": v.clone() for k, v in plain.items() if not k.endswith("num_batches_tracked")}
    noise = {f"module.{k}": v + 1 for k, v in plain.items() if not k.endswith("num_batches_tracked")}
    return {"epoch": 3, "arch": "resnet18", "state_dict": noise, "state_dict_ema": ema}


def test_torchvision_and_timm_layouts_load_the_same_teacher(reference, tmp_path):
    plain = tmp_path / "resnet18-tv.pth"
    torch.save(reference.state_dict(), plain)
    state, info = load_teacher_weights(plain)
    assert info["teacher"] == "imagenet" and info["teacher_layout"] == "torchvision"
    _teacher_matches(state, reference)

    timm_file = tmp_path / "timm-resnet18.pth.tar"
    torch.save(_timm_checkpoint(reference), timm_file)
    state, info = load_teacher_weights(timm_file)
    assert info["teacher_layout"] == "timm-checkpoint"
    _teacher_matches(state, reference)  # the EMA weights, not the (shifted) raw ones

    # timm's pretrained files: plain names, possibly without num_batches_tracked
    no_count = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert teacher_state_layout(no_count)[0] == "torchvision"
    _teacher_matches(no_count, reference)


def test_destseg_checkpoint_layout(reference, tmp_path):
    full = {
        f"teacher_net.encoder.{k}": v
        for k, v in reference.state_dict().items()
        if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")
    }
    full["student_net.encoder.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    full["segmentation_net.res.0.conv1.weight"] = torch.zeros(256, 448, 3, 3)
    path = tmp_path / "DeSTSeg_MVTec_5000_bottle.pckl"
    torch.save(full, path)
    state, info = load_teacher_weights(path)
    assert info["teacher_layout"] == "destseg-checkpoint"
    assert all(not k.startswith(("student", "segmentation")) for k in state)
    _teacher_matches(state, reference)


def test_wrong_weights_are_reported(tmp_path):
    path = tmp_path / "not-resnet.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    state, _ = load_teacher_weights(path)
    with pytest.raises(KeyError, match="do not match"):
        DestsegNet(zero_init_last=True).teacher.load_torchvision_state(state)
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with pytest.raises(DataError, match="not ResNet18"):
        load_teacher_weights(empty)


def test_teacher_layout_reaches_the_trainer(reference, tmp_path):
    """train.py copies ``teacher_info`` into the manifest's extra (``teacher_layout``)."""
    path = tmp_path / "t.pth"
    torch.save(_timm_checkpoint(reference), path)
    from anogen.config import validate_config
    from anogen.detectors.destseg.trainer import DestsegTrainer

    cfg = {**validate_config({"data_root": "x"})["detectors"]["destseg"], "teacher_weights": str(path)}
    cfg["zero_init_last"] = False
    tr = DestsegTrainer(cfg, seed=0, tau=1.0, device="cpu", n_train=4, mixed_precision="no")
    assert tr.teacher_info["teacher_layout"] == "timm-checkpoint"
    assert torch.equal(tr.model.teacher.layers[0][0].conv1.weight, reference.layer1[0].conv1.weight)


# ----------------------------------------------------------------------------- official DRAEM


def _official_layers(w: int):
    """The layer list of the official model_unet.py: (module prefix, cin, cout, kind).

    kind "block": Sequential(conv3x3(cin, cout), BN, ReLU, conv3x3(cout, c2), BN, ReLU) with
    c2 given as the 5th element; "up": Sequential(Upsample, conv3x3(cin, cout), BN, ReLU);
    "out": Sequential(conv3x3(cin, cout))."""
    recon = [
        ("encoder.block1", 3, w, w),
        ("encoder.block2", w, 2 * w, 2 * w),
        ("encoder.block3", 2 * w, 4 * w, 4 * w),
        ("encoder.block4", 4 * w, 8 * w, 8 * w),
        ("encoder.block5", 8 * w, 8 * w, 8 * w),
        ("decoder.up1", 8 * w, 8 * w, None),
        ("decoder.db1", 8 * w, 8 * w, 4 * w),
        ("decoder.up2", 4 * w, 4 * w, None),
        ("decoder.db2", 4 * w, 4 * w, 2 * w),
        ("decoder.up3", 2 * w, 2 * w, None),
        ("decoder.db3", 2 * w, 2 * w, w),
        ("decoder.up4", w, w, None),
        ("decoder.db4", w, w, w),
        ("decoder.fin_out", w, 3, "out"),
    ]
    return recon


def _official_seg_layers(w: int):
    return [
        ("encoder_segment.block1", 6, w, w),
        ("encoder_segment.block2", w, 2 * w, 2 * w),
        ("encoder_segment.block3", 2 * w, 4 * w, 4 * w),
        ("encoder_segment.block4", 4 * w, 8 * w, 8 * w),
        ("encoder_segment.block5", 8 * w, 8 * w, 8 * w),
        ("encoder_segment.block6", 8 * w, 8 * w, 8 * w),
        ("decoder_segment.up_b", 8 * w, 8 * w, None),
        ("decoder_segment.db_b", 16 * w, 8 * w, 8 * w),
        ("decoder_segment.up1", 8 * w, 4 * w, None),
        ("decoder_segment.db1", 12 * w, 4 * w, 4 * w),
        ("decoder_segment.up2", 4 * w, 2 * w, None),
        ("decoder_segment.db2", 6 * w, 2 * w, 2 * w),
        ("decoder_segment.up3", 2 * w, w, None),
        ("decoder_segment.db3", 3 * w, w, w),
        ("decoder_segment.up4", w, w, None),
        ("decoder_segment.db4", 2 * w, w, w),
        ("decoder_segment.fin_out", w, 2, "out"),
    ]


def _expected_shapes(layers):
    shapes = {}

    def conv(prefix, cin, cout):
        shapes[f"{prefix}.weight"] = (cout, cin, 3, 3)
        shapes[f"{prefix}.bias"] = (cout,)

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    for prefix, cin, cout, extra in layers:
        if extra == "out":
            conv(f"{prefix}.0", cin, cout)
        elif extra is None:  # up: Upsample 0, conv 1, BN 2
            conv(f"{prefix}.1", cin, cout)
            bn(f"{prefix}.2", cout)
        else:
            conv(f"{prefix}.0", cin, cout)
            bn(f"{prefix}.1", cout)
            conv(f"{prefix}.3", cout, extra)
            bn(f"{prefix}.4", extra)
    return shapes


@pytest.mark.parametrize("widths", [(8, 4), (128, 64)])
def test_inverse_map_gives_the_official_names_and_shapes(widths):
    rw, dw = widths
    net = DraemNet(rw, dw)
    recon, seg = ours_to_official(net.state_dict())
    assert {k: tuple(v.shape) for k, v in recon.items()} == _expected_shapes(_official_layers(rw))
    assert {k: tuple(v.shape) for k, v in seg.items()} == _expected_shapes(_official_seg_layers(dw))
    back = official_to_ours(recon, seg)
    assert list(back) == list(net.state_dict())  # same keys, same order


def test_load_official_draem_reproduces_the_model(tmp_path):
    torch.manual_seed(0)
    net = DraemNet(8, 4)
    # train-mode steps give the BN buffers non-default values
    net.train()
    for _ in range(2):
        net(torch.rand(2, 3, 32, 32))
    net.eval()
    recon, seg = ours_to_official(net.state_dict())
    # as the official script saves them (and with DataParallel's module. prefix, once)
    torch.save(recon, tmp_path / "DRAEM_test_0.0001_700_bs8_bottle_.pckl")
    torch.save({f"module.{k}": v for k, v in seg.items()}, tmp_path / "DRAEM_test_0.0001_700_bs8_bottle__seg.pckl")
    loaded = load_official_draem(
        tmp_path / "DRAEM_test_0.0001_700_bs8_bottle_.pckl", tmp_path / "DRAEM_test_0.0001_700_bs8_bottle__seg.pckl"
    )
    assert loaded.recon.encoder.stages[0][0].out_channels == 8
    assert loaded.disc.encoder.stages[0][0].out_channels == 4 and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        r1, l1 = net(x)
        r2, l2 = loaded(x)
    assert torch.equal(r1, r2) and torch.equal(l1, l2)


def test_official_loader_errors(tmp_path):
    recon, seg = ours_to_official(DraemNet(4, 4).state_dict())
    torch.save(recon, tmp_path / "r.pckl")
    torch.save(seg, tmp_path / "s.pckl")
    with pytest.raises(DataError, match="not a DRAEM discriminative"):
        load_official_draem(tmp_path / "r.pckl", tmp_path / "r.pckl")
    bad = dict(seg)
    bad["decoder_segment.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pckl")
    with pytest.raises(DataError, match="do not fit"):
        load_official_draem(tmp_path / "r.pckl", tmp_path / "bad.pckl")
    # weights_only=True: a pickle that would run code is refused
    torch.save({"x": DataError}, tmp_path / "code.pckl")  # a class: refused by weights_only
    with pytest.raises(DataError, match="cannot read"):
        load_official_draem(tmp_path / "code.pckl", tmp_path / "s.pckl")
