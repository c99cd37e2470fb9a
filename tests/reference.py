"""Independent plain-PyTorch references shared by the tests (written from the specs, not from the suite), and
the shared fused-vs-reference inference check."""
import math

import torch


def normal_cdf(z: float) -> float:
    """Phi(z) of the standard normal."""
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


class RectSpike(torch.autograd.Function):
    """The reference codes' spike function: forward x >= 0; backward (1/k) 1[|x| < k/2], k a plain number."""

    @staticmethod
    def forward(ctx, x, width):
        ctx.save_for_backward(x)
        ctx.width = width
        return (x >= 0).float()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < ctx.width / 2).float() / ctx.width, None


def assert_inference_matches(fused, reference, inputs):
    """A fused neuron equals its reference loop bitwise without autograd, in train and eval mode, and on bf16
    input (outputs bf16)."""
    with torch.no_grad():
        assert torch.equal(fused(inputs), reference(inputs))
        fused.eval(), reference.eval()
        assert torch.equal(fused(inputs), reference(inputs))
    half = inputs.bfloat16()
    out = fused(half)
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference(half))


def assert_fused_model_step_matches(image_size: int, **model_kwargs):
    """One ResNet-19 (T = 2, width 1/16) training step with fused neurons equals the reference loops: logits
    to 1e-5, every parameter gradient to 1e-4.  ``model_kwargs`` choose the neuron and surrogate."""
    from torch import nn

    from repro.models import create_model

    torch.manual_seed(17)
    images, targets = torch.randn(2, 3, image_size, image_size), torch.tensor([1, 3])
    grads, logits = [], []
    for fused in (True, False):
        torch.manual_seed(0)
        model = create_model("resnet19", num_steps=2, width=0.0625, neuron_kwargs={"fused": fused}, **model_kwargs)
        out = model(images)
        nn.functional.cross_entropy(out.mean(0), targets).backward()
        logits.append(out)
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-6)
    for fused_grad, reference_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-4, atol=1e-5)


def fused_test_loss_backward(neuron, inputs, upstream):
    """(outputs, input gradient) of sum(out * upstream), plus a term on the recorded potentials when the
    neuron records them: the loss the fused-vs-reference tests differentiate."""
    x = inputs.clone().requires_grad_()
    out = neuron(x)
    loss = (out * upstream).sum()
    if neuron.record_potentials:
        loss = loss + (torch.stack(neuron.potentials) * upstream.roll(1, 0)).sum() / 2
    loss.backward()
    return out, x.grad


def run_in_gloo_processes(work, directory, world: int = 2) -> list:
    """``work(rank)`` in ``world`` forked processes joined by a gloo process group; what each returned."""
    torch.multiprocessing.start_processes(_gloo_worker, args=(work, world, str(directory)), nprocs=world,
                                          start_method="fork")
    return [torch.load(f"{directory}/{rank}.pt") for rank in range(world)]


def _gloo_worker(rank: int, work, world: int, directory: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it would hang)
    torch.distributed.init_process_group("gloo", init_method=f"file://{directory}/init", rank=rank, world_size=world)
    torch.save(work(rank), f"{directory}/{rank}.pt")
    torch.distributed.barrier()  # no rank tears gloo down while the other is still in a collective (SIGABRT)
    torch.distributed.destroy_process_group()


def paper_sgv(delta: torch.Tensor, form: str = "variance") -> torch.Tensor:
    """A2SG's SGV[U] = Var(delta) / Mean(|delta|) over each row of delta[U, N] (population variance) [paper, via
    summary]; ``form="std"``: Std(delta) / Mean(|delta|)."""
    spread = delta.var(-1, correction=0)
    return (spread if form == "variance" else spread.sqrt()) / delta.abs().mean(-1)


def paper_tgc(delta: torch.Tensor, delta_next: torch.Tensor) -> torch.Tensor:
    """A2SG's TGC[U] = cos(delta[t], delta[t+1]) of each row of two [U, N] gradients [paper, via summary]."""
    return torch.nn.functional.cosine_similarity(delta, delta_next, dim=-1, eps=0.0)
