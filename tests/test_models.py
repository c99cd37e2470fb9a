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


@pytest.mark.parametrize("sync", [False, True])
def test_tdbn_keeps_the_input_dtype_and_equals_its_closed_form(sync):
    """tdBN: y = scale gamma (x - mean) / sqrt(var + eps) + beta per channel over (N, H, W), computed in fp32 and
    returned in x's dtype (``sync``: the --sync_bn path), running statistics updated with momentum 0.1; under bf16
    autocast a bf16 activation stays bf16 (an fp32 affine after it would promote it, and every layer after it)."""
    from repro.models import TDBatchNorm

    torch.manual_seed(0)
    norm = TDBatchNorm(3, scale=0.5)
    norm.sync = sync
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    mean = x.double().mean((0, 2, 3), keepdim=True)
    var = x.double().var((0, 2, 3), keepdim=True, unbiased=False)
    expected = ((x.double() - mean) / torch.sqrt(var + 1e-5) * 0.5 * norm.weight.double().view(1, -1, 1, 1)
                + norm.bias.double().view(1, -1, 1, 1))
    y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.norm.running_mean.double(), 0.1 * mean.flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.norm.running_var.double(), 0.9 + 0.1 * x.double().var((0, 2, 3)), rtol=1e-5,
                               atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = norm(torch.nn.functional.conv2d(x, torch.eye(3).view(3, 3, 1, 1)))  # a bf16 activation
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, rtol=2e-2, atol=4e-2)  # bf16 rounding of x and of y
    norm.norm.momentum = None  # the cumulative average over the batches, as nn.BatchNorm's (then evaluation)
    reference = torch.nn.BatchNorm2d(3, momentum=None, affine=False)
    reference.load_state_dict(norm.norm.state_dict())
    for batch in (x, x * 0.5 + 1):
        norm(batch), reference(batch)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(norm.norm.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    norm.eval(), reference.eval()
    gamma, beta = norm.weight.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), 0.5 * gamma * reference(x) + beta, rtol=1e-5, atol=1e-6)


def test_recipe_neurons_get_bf16_activations_under_bf16_autocast():
    """A ResNet-19 recipe model under bf16 autocast: every spiking layer receives the bf16 activation of its tdBN,
    which the kernels read as it is."""
    model = create_model("resnet19", num_classes=10, num_steps=2, width=0.0625, neuron="plif")
    seen = []
    for _, layer in spiking_layers(model):
        layer.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 8, 8))
    assert len(seen) == 20 and set(seen) == {torch.bfloat16}
