"""Model zoo (foundation part): ResNet-19 structure, shapes, errors."""
import pytest
import torch

from repro.models import MODELS, create_model, spiking_layers


def test_resnet19_matches_common_md():
    model = create_model("resnet19", num_classes=10, num_steps=2)
    params = sum(p.numel() for p in model.parameters())
    assert 12.6e6 <= params <= 12.8e6  # reference: about 12.6M with the 128-channel stem
    assert len(spiking_layers(model)) == 20
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs[:1]] == [128] and all(c.bias is None for c in convs)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 256), (256, 10)]
    assert all(l.bias is None for l in linears)


@pytest.mark.parametrize("neuron,surrogate,block", [("lif", "atan", "sew_add"), ("plif", "triangle", "spiking")])
def test_resnet19_forward_backward_shapes(neuron, surrogate, block):
    model = create_model("resnet19", num_classes=7, num_steps=3, width=0.125, neuron=neuron, surrogate=surrogate,
                         block=block)
    static = model(torch.randn(2, 3, 32, 32))
    frames = model(torch.randn(3, 2, 3, 32, 32))
    assert static.shape == frames.shape == (3, 2, 7)
    frames.mean(0).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sew_add_residual_stream_is_integer_valued():
    model = create_model("resnet19", num_steps=2, width=0.125).eval()
    outputs = []
    hook = model.layers[1].register_forward_hook(lambda m, i, o: outputs.append(o))
    model(torch.randn(2, 3, 32, 32) * 3)
    hook.remove()
    assert torch.equal(outputs[0], outputs[0].round()) and outputs[0].max() >= 1


def test_clear_errors():
    model = create_model("resnet19", num_steps=4, width=0.125)
    with pytest.raises(ValueError, match=r"expected input \[T, B, C, H, W\]"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(3, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="choose one of: .*resnet19"):
        create_model("resnet1000")
    with pytest.raises(ValueError, match="choose one of: .*plif"):
        create_model("resnet19", neuron="hodgkin_huxley")
    with pytest.raises(ValueError, match="unknown block"):
        create_model("resnet19", block="dense")
    assert "resnet19" in MODELS.names()
