"""Checkpoint parsing (g2v_sklearn.backbones._backbone), on a backbone's own state_dict: no files from ../shared.

A geom2vec checkpoint is a plain state_dict: the backbone under
``representation_model.``, the denoising head under ``vec_out.``, and entries
of its pretraining (``output_model...``, ``mean``, ``std``) that are set aside.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from g2v_sklearn.backbones._backbone import BackboneConfig, DenoisingHead, build_backbone, load_checkpoint

CONFIG = BackboneConfig(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=5.0)
NAME = "visnet_l2_h16_rbf8_r50.pth"  # geom2vec's naming: layers, hidden, rbf, cutoff x 10


@pytest.fixture(scope="module")
def geom2vec_state():
    torch.manual_seed(0)
    block = build_backbone(CONFIG)
    head = DenoisingHead(CONFIG.hidden_channels)
    state = {f"representation_model.{k}": v for k, v in block.state_dict().items()}
    state.update({f"vec_out.{k}": v for k, v in head.state_dict().items()})
    state.update({"output_model.bias": torch.zeros(1), "mean": torch.zeros(()), "std": torch.ones(())})
    return block, head, state


def save(state, tmp_path, name=NAME):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_architecture_weights_and_head_are_read_from_the_file(geom2vec_state, tmp_path):
    block, head, state = geom2vec_state
    loaded, config, head_state = load_checkpoint(save(state, tmp_path))
    assert (config.hidden_channels, config.num_layers, config.num_rbf, config.max_z) == (16, 2, 8, 100)
    assert math.isclose(config.cutoff, 5.0, rel_tol=1e-6) and config.trainable_vecnorm
    for key, value in block.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    again = DenoisingHead(16)
    again.load_state_dict(head_state, strict=True)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    # a Lightning-style wrapper, and a file without a head, load too
    _, _, no_head = load_checkpoint(save({"state_dict": {k: v for k, v in state.items()
                                                          if not k.startswith("vec_out.")}}, tmp_path))
    assert no_head == {}


def test_explicit_parameters_must_agree_with_the_weights(geom2vec_state, tmp_path):
    path = save(geom2vec_state[2], tmp_path)
    with pytest.raises(ValueError, match="has hidden_channels=16, which conflicts with the explicit "
                                         "parameter hidden_channels=32"):
        load_checkpoint(path, {"hidden_channels": 32})
    _, config, _ = load_checkpoint(path, {"hidden_channels": 16, "max_num_neighbors": 12, "cutoff": None})
    assert config.max_num_neighbors == 12  # not in the file: the user's value is used


def test_a_file_named_for_another_architecture_is_refused(geom2vec_state, tmp_path):
    path = save(geom2vec_state[2], tmp_path, "visnet_l6_h16_rbf8_r50.pth")
    with pytest.raises(ValueError, match="is named for num_layers=6, but its weights have num_layers=2"):
        load_checkpoint(path)


def test_keys_that_do_not_fit_the_backbone_are_named(geom2vec_state, tmp_path):
    state = geom2vec_state[2]
    partial = {k: v for k, v in state.items() if k != "representation_model.vis_mp_layers.1.q_proj.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['vis_mp_layers.1.q_proj.weight'\] \(1 in all\)"):
        load_checkpoint(save(partial, tmp_path))
    extra = dict(state, **{"representation_model.extra.weight": torch.zeros(3), "stray": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight', 'stray'\]"):
        load_checkpoint(save(extra, tmp_path))
    reshaped = dict(state, **{"representation_model.vis_mp_layers.0.q_proj.weight": torch.zeros(16, 8)})
    with pytest.raises(ValueError, match=r"shape mismatches \['vis_mp_layers.0.q_proj.weight: file "
                                         r"\(16, 8\) vs model \(16, 16\)'\]"):
        load_checkpoint(save(reshaped, tmp_path))


def test_a_file_that_is_not_a_checkpoint_is_called_so_without_torchs_advice(geom2vec_state, tmp_path):
    """Random bytes had passed on torch's advice to load with weights_only=False: wrong for a
    damaged file, and dangerous (it runs whatever code a pickle holds)."""
    garbage = tmp_path / "random.pth"
    garbage.write_bytes(b"\x13" + np.random.default_rng(0).bytes(4999))
    not_torch = r"could not be read as a weights-only torch file: it is not a torch checkpoint \(neither a zip"
    with pytest.raises(ValueError, match=not_torch + r" archive nor a pickle.*Use a good copy") as info:
        load_checkpoint(str(garbage))
    truncated = tmp_path / "truncated.pth"
    data = Path(save(geom2vec_state[2], tmp_path)).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # a download cut short
    with pytest.raises(ValueError, match=r"it is damaged or not a torch checkpoint \(\w+Error: .*\), e.g. a "
                                         r"download cut short"):
        load_checkpoint(str(truncated))
    pickled = tmp_path / "pickled.pth"
    torch.save({"representation_model.settings": Path("x")}, pickled)  # an object, not a tensor
    with pytest.raises(ValueError, match=r"holds Python objects besides tensors \(first: pathlib\.\w*Path\)"
                                         r".*torch.save\(model.state_dict\(\), path\)") as unsafe:
        load_checkpoint(str(pickled))
    for message in (str(info.value), str(unsafe.value)):
        assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def test_files_that_are_not_a_visnet_state_dict(geom2vec_state, tmp_path):
    state = geom2vec_state[2]
    no_layers = {k: v for k, v in state.items() if "vis_mp_layers" not in k}
    with pytest.raises(ValueError, match="a backbone of an unknown architecture .*'embedding', .*"
                                         "GeomEmbedder reads geom2vec's ViSNet"):
        load_checkpoint(save(no_layers, tmp_path))
    no_backbone = {k: v for k, v in state.items() if not k.startswith("representation_model.")}
    with pytest.raises(ValueError, match="holds no geom2vec backbone: none of its keys starts with "
                                         "'representation_model.'"):
        load_checkpoint(save(no_backbone, tmp_path))
    no_embedding = {k: v for k, v in state.items() if k != "representation_model.embedding.weight"}
    with pytest.raises(ValueError, match="does not hold a complete ViSNet backbone: key "
                                         "'representation_model.embedding.weight' is missing"):
        load_checkpoint(save(no_embedding, tmp_path))
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="as a weights-only torch file"):
        load_checkpoint(str(tmp_path / "garbage.pth"))
    odd = dict(state, **{"representation_model.settings": {"cutoff": 7.5}})
    with pytest.raises(ValueError, match=r"entry 'representation_model.settings' is a dict\."):
        load_checkpoint(save(odd, tmp_path))
    with pytest.raises(ValueError, match=r"not a state_dict of tensors \(it holds a list\)"):
        load_checkpoint(save([1, 2], tmp_path))
    key = "representation_model.vis_mp_layers.1.k_proj.weight"
    poisoned = dict(state, **{key: state[key].clone()})
    poisoned[key][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"NaN or infinite weights in '{key}': every token would be NaN"):
        load_checkpoint(save(poisoned, tmp_path))
    with pytest.raises(IsADirectoryError, match="is a directory; give the checkpoint file in it"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nowhere.pth"))
