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
    for name in ("resnet18", "resnet19", "vgg13", "vggsnn", "spiking_fpn", "spiking_unet"):
        for width in (0, -0.5, float("nan")):
            with pytest.raises(ValueError, match="width scales every channel count and must be a finite number > 0"):
                create_model(name, num_steps=2, width=width)


def test_resnet18_imagenet_has_torchvision_parameter_count():
    import torchvision

    ours = create_model("resnet18", num_classes=1000)
    reference = torchvision.models.resnet18(weights=None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert isinstance(ours.stem_pool[0], torch.nn.MaxPool2d) and ours.stem[0].kernel_size == (7, 7)
    assert len(spiking_layers(ours)) == 20


@pytest.mark.parametrize("name,kwargs,shape,out", [
    ("resnet18", {"stem": "cifar", "width": 0.125, "num_classes": 100}, (2, 3, 32, 32), (2, 2, 100)),
    ("resnet18", {"width": 0.125, "block": "spiking"}, (2, 3, 64, 64), (2, 2, 1000)),
    ("vggsnn", {}, (2, 2, 2, 48, 48), (2, 2, 10)),
    ("vgg13", {"input_size": 32}, (2, 3, 32, 32), (2, 2, 200)),
])
@pytest.mark.parametrize("neuron,surrogate", [("lif", "atan"), ("plif", "rectangular")])
def test_zoo_forward_backward(name, kwargs, shape, out, neuron, surrogate):
    model = create_model(name, num_steps=2, neuron=neuron, surrogate=surrogate, **kwargs)
    logits = model(torch.randn(*shape))
    assert logits.shape == out
    logits.mean(0).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_vgg_layer_lists_match_common_md():
    vggsnn = create_model("vggsnn")
    assert len(spiking_layers(vggsnn)) == 8
    convs = [m.out_channels for m in vggsnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 128, 256, 256, 512, 512, 512, 512]
    linear = [m for m in vggsnn.modules() if isinstance(m, torch.nn.Linear)][0]
    assert (linear.in_features, linear.out_features) == (4608, 10) and linear.bias is not None
    vgg13 = create_model("vgg13")
    linear = [m for m in vgg13.modules() if isinstance(m, torch.nn.Linear)][0]
    assert (linear.in_features, linear.out_features) == (2048, 200) and len(spiking_layers(vgg13)) == 10
    with pytest.raises(ValueError, match=r"C=2"):
        vggsnn(torch.randn(10, 2, 3, 48, 48))
