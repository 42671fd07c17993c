"""Habits every torch module keeps (torch-geometric's): reset_parameters, one return type.

The trainable networks of g2v_sklearn.nn and the frozen backbones' modules of g2v_sklearn.backbones alike.
"""

import inspect
import math

import pytest
import torch
from torch import nn

import g2v_sklearn.backbones._backbone
import g2v_sklearn.backbones._neighbors
import g2v_sklearn.nn._lobes
import g2v_sklearn.nn._merger
import g2v_sklearn.nn._spib
from g2v_sklearn import MergeSpec
from g2v_sklearn.backbones._backbone import DenoisingHead
from g2v_sklearn.backbones._neighbors import RadiusDistance
from g2v_sklearn.nn._lobes import EquivariantMixerBlock, MixerBlock, MLPLobe, TokenLobe
from g2v_sklearn.nn._merger import GraphConv, ResGatedGraphConv, TokenMergerModule, VectorLinear
from g2v_sklearn.nn._spib import SPIBModule

SPEC = MergeSpec(window=3, operator="rggc", cutoff=8.0, in_channels=8, hidden_channels=8,
                 n_residues=10, n_fragments=math.ceil(10 / 3))

MODULES = {
    "VectorLinear": lambda: VectorLinear(8, 4),
    "GraphConv": lambda: GraphConv(8),
    "ResGatedGraphConv": lambda: ResGatedGraphConv(8, cutoff=8.0),
    "TokenMergerModule": lambda: TokenMergerModule(SPEC),
    "MixerBlock": lambda: MixerBlock(16, 2),
    "TokenLobe(cls, merged)": lambda: TokenLobe(in_channels=8, n_tokens=10, merge=SPEC, d_model=16, n_heads=2,
                                               n_layers=2, pooling="cls", n_outputs=3),
    "TokenLobe(mean)": lambda: TokenLobe(in_channels=8, n_tokens=10, merge=None, d_model=16, n_heads=2,
                                         n_layers=1, pooling="mean", n_outputs=3),
    "EquivariantMixerBlock": lambda: EquivariantMixerBlock(16, 2),
    "TokenLobe(equivariant, merged)": lambda: TokenLobe(in_channels=8, n_tokens=10, merge=SPEC, d_model=16,
                                                        n_heads=2, n_layers=2, pooling="cls", n_outputs=3,
                                                        mixer="equivariant"),
    "MLPLobe": lambda: MLPLobe(5, (16, 8), 3),
    "SPIBModule": lambda: SPIBModule(MLPLobe(5, (16,), 4), z_dim=2, n_states=6),
    "DenoisingHead": lambda: DenoisingHead(16),
}
# torch-geometric's GatedEquivariantBlock draws Xavier weights in reset_parameters but
# torch's defaults when built, so a reset head is re-drawn but not equal to a new one.
NOT_AS_BUILT = {"DenoisingHead"}
PARAMETER_FREE = {"RadiusDistance": lambda: RadiusDistance(cutoff=5.0)}


@pytest.mark.parametrize("name", MODULES)
def test_reset_parameters_redraws_every_parameter_as_a_fresh_module_would(name):
    make = MODULES[name]
    torch.manual_seed(0)
    fresh = make()
    module = make()  # other draws
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(3.0)
    torch.manual_seed(0)
    module.reset_parameters()
    for key, p in module.named_parameters():
        assert not torch.all(p == 3.0), f"{name}.{key} was not reset"
    if name in NOT_AS_BUILT:
        return
    state = module.state_dict()
    assert state.keys() == fresh.state_dict().keys()
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{name}.{key} was not reset")


def test_every_module_with_parameters_has_reset_parameters():
    # The list above must not fall behind the package: every nn.Module class defined
    # in g2v_sklearn.nn (or a backbone's module) that owns parameters defines reset_parameters itself.
    missing = []
    for module in (g2v_sklearn.backbones._backbone, g2v_sklearn.nn._lobes, g2v_sklearn.nn._merger,
                   g2v_sklearn.backbones._neighbors, g2v_sklearn.nn._spib):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, nn.Module):
                if "reset_parameters" not in vars(cls) and name not in PARAMETER_FREE:
                    missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no reset_parameters: {missing}"
    for name, make in PARAMETER_FREE.items():
        assert not list(make().parameters()), f"{name} has parameters: it needs reset_parameters"
    tested = {type(make()).__name__ for make in MODULES.values()}
    assert {"GraphConv", "ResGatedGraphConv", "TokenMergerModule", "MixerBlock", "TokenLobe",
            "MLPLobe", "SPIBModule"} <= tested


def test_token_lobe_returns_one_type():
    torch.manual_seed(0)
    lobe = MODULES["TokenLobe(cls, merged)"]().eval()
    features = torch.randn(4, 10, 4, 8)
    positions = torch.cumsum(torch.randn(4, 10, 3), dim=1) * 2.2
    out = lobe(features, positions)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 3)
    maps = lobe.attention_maps(features, positions)
    assert len(maps) == 2 and all(m.shape == (4, 2, 1 + SPEC.n_fragments, 1 + SPEC.n_fragments) for m in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(4, 2, 1 + SPEC.n_fragments))
