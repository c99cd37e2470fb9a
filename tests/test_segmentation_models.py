"""Spiking Unet / FPN on segmentation-models-pytorch: smp's encoder contract, spiking decoders over the
folded time axis, output shapes, classification weights loaded by value, no hub access, errors."""
import os

import pytest
import segmentation_models_pytorch as smp
import torch

from repro.models import LIF, create_model, spiking_layers
from repro.models.layers import fold, unfold
from repro.models.segmentation import (ENCODER_NAME, TimeFoldedNeuron, load_classification_weights,
                                       register_encoder)

TINY = dict(num_classes=5, num_steps=2, width=0.125)
DECODERS = {"spiking_unet": dict(decoder_channels=(32, 16, 16, 8, 8)),
            "spiking_fpn": dict(pyramid_channels=32, segmentation_channels=32)}


def build(name, **kwargs):
    return create_model(name, **TINY, **DECODERS[name], **kwargs)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("neuron,surrogate", [("lif", "atan"), ("plif", "triangle")])
def test_forward_backward_shapes(name, neuron, surrogate):
    model = build(name, neuron=neuron, surrogate=surrogate)
    static = model(torch.randn(2, 3, 64, 64))
    frames = model(torch.randn(2, 2, 3, 64, 96))
    assert static.shape == (2, 5, 64, 64) and frames.shape == (2, 5, 64, 96)
    frames.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(type(m.surrogate).__name__.lower() == surrogate for _, m in spiking_layers(model))


@pytest.mark.parametrize("name,decoder_neurons", [("spiking_unet", 10), ("spiking_fpn", 7)])
def test_decoder_is_spiking_and_neurons_are_linked_to_their_norm(name, decoder_neurons):
    model = build(name)
    decoder = model.network.decoder
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    folded = [m for m in decoder.modules() if isinstance(m, TimeFoldedNeuron)]
    assert len(folded) == decoder_neurons and all(isinstance(m.neuron, LIF) for m in folded)
    norm = torch.nn.BatchNorm2d if name == "spiking_unet" else torch.nn.GroupNorm
    assert all(isinstance(m.neuron.input_norm, norm) for m in folded)
    assert len(spiking_layers(model)) == 20 + decoder_neurons  # resnet18 encoder: 17 + 3 downsample neurons


def test_time_folded_neuron_unfolds_time_major():
    neuron = TimeFoldedNeuron(LIF(decay=0.5, threshold=1.0), num_steps=2)
    # rows t*B + b: sample 0 gets [0.8, 0.8] (u = 0.8, 1.2 -> spike at t=1), sample 1 gets [0.0, 0.8] (no spike)
    x = torch.tensor([0.8, 0.0, 0.8, 0.8]).view(4, 1)
    assert neuron(x)[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_encoder_follows_the_smp_contract():
    model = build("spiking_unet")
    encoder = model.encoder
    assert encoder.out_channels == [3, 8, 8, 16, 32, 64] and encoder.output_stride == 32 and encoder._depth == 5
    x = torch.randn(2 * 3, 3, 64, 64)  # folded [T*B] with T=2, B=3
    features = encoder(x)
    assert [tuple(f.shape) for f in features] == [(6, 3, 64, 64), (6, 8, 32, 32), (6, 8, 16, 16), (6, 16, 8, 8),
                                                  (6, 32, 4, 4), (6, 64, 2, 2)]
    assert features[0] is x
    with pytest.raises(ValueError, match=r"folded batch \[T\*B, C, H, W\] with T=2"):
        encoder(torch.randn(3, 3, 64, 64))


def test_choices_are_registered_in_smp_params_without_pretrained_weights():
    model = build("spiking_fpn", neuron="plif", surrogate="triangle", surrogate_kwargs={"width": 0.5})
    name = model.network.name.removeprefix("fpn-")
    entry = smp.encoders.encoders[name]
    assert name.startswith(ENCODER_NAME + "-") and entry["pretrained_settings"] == {}
    assert {k: entry["params"][k] for k in ("num_steps", "neuron", "surrogate", "surrogate_kwargs", "width")} == \
        {"num_steps": 2, "neuron": "plif", "surrogate": "triangle", "surrogate_kwargs": {"width": 0.5}, "width": 0.125}
    assert model.encoder.stem_neuron.surrogate.params == {"width": 0.5}
    assert register_encoder() == ENCODER_NAME and ENCODER_NAME in smp.encoders.get_encoder_names()


def test_no_hub_access(monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest, as in CI

    def no_download(*args, **kwargs):
        raise AssertionError(f"hub access attempted: {args}")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_download)
    for name in DECODERS:
        assert build(name)(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    plain = smp.Unet(ENCODER_NAME, encoder_weights=None, classes=3)  # the default entry, plain smp decoder
    assert sum(p.numel() for p in plain.encoder.parameters()) == 11_176_512  # torchvision resnet18 minus fc


def classification_checkpoint(**kwargs):
    torch.manual_seed(1)
    classifier = create_model("resnet18", num_classes=10, num_steps=2, width=0.125, **kwargs)
    classifier(torch.randn(4, 3, 64, 64))  # training-mode pass: running statistics away from their init
    return classifier.eval()


@pytest.mark.parametrize("form", ["path", "checkpoint", "state_dict"])
def test_encoder_loads_classification_weights_by_value(tmp_path, form):
    classifier = classification_checkpoint()
    state = classifier.state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "best_model.pt")
    source = {"path": tmp_path / "best_model.pt", "checkpoint": {"model": state, "epoch": 3}, "state_dict": state}
    model = build("spiking_unet").eval()
    report = load_classification_weights(model, source[form])
    assert report.missing_keys == [] and report.unexpected_keys == ["classifier.0.bias", "classifier.0.weight"]
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 2, 3, 64, 64) * 3
    with torch.no_grad():  # the classifier's own stem and blocks, stage by stage (2 blocks each)
        h = classifier.stem_neuron(classifier.stem(x))
        reference = [h]
        h = classifier.stem_pool(h)
        for stage in range(4):
            h = classifier.layers[2 * stage + 1](classifier.layers[2 * stage](h))
            reference.append(h)
        features = [unfold(f, 2) for f in model.encoder(fold(x))[1:]]
    assert all(torch.equal(f, r) for f, r in zip(features, reference)) and len(features) == 5
    assert reference[2].abs().sum() > 0  # eval mode at random init: the deepest stages may be silent


def test_weight_loading_errors():
    model = build("spiking_fpn")
    with pytest.raises(ValueError, match="shapes differ.*stem='imagenet'"):
        load_classification_weights(model, classification_checkpoint(stem="cifar").state_dict())
    with pytest.raises(ValueError, match="no entry of the checkpoint matches"):
        load_classification_weights(model, {"model": {"fc.weight": torch.zeros(1)}})


def test_clear_errors():
    model = build("spiking_unet")
    with pytest.raises(ValueError, match="multiples of 32, got 48x64; pad or resize to 64x64"):
        model(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"expected input \[T, B, C, H, W\] \(or static \[B, C, H, W\]\) with C=3"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="T=2"):
        model(torch.randn(3, 1, 3, 64, 64))
    with pytest.raises(ValueError, match="choose one of: .*spiking_fpn.*spiking_unet"):
        create_model("spiking_deeplab")
    with pytest.raises(ValueError, match="choose one of: .*plif"):
        create_model("spiking_fpn", neuron="hodgkin_huxley")
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("spiking_fpn", segmentation_channels=48)
    with pytest.raises(ValueError, match="unknown block"):
        build("spiking_unet", block="dense")
