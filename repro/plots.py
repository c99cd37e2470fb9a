"""Training curves and the results table printed at the end of a run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss (left) and accuracy (right) per epoch, train and test."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s-", label="test (CE of mean logits)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["test_accuracy"] for r in history], "s-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_table(history: list[dict], summary: dict) -> str:
    """Markdown table of the epochs and the final summary."""
    lines = ["| epoch | lr | train loss | train acc (%) | test acc (%) | best (%) | firing rate | time (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in history:
        lines.append(f"| {r['epoch']} | {r['lr']:.4g} | {r['train_loss']:.4f} | {r['train_accuracy']:.2f} | "
                     f"{r['test_accuracy']:.2f} | {r['best_test_accuracy']:.2f} | {r['firing_rate']:.4f} | "
                     f"{r['epoch_time_s']:.1f} |")
    lines.append("")
    lines.append(f"**{summary['model']} / {summary['neuron']} / {summary['surrogate']} / {summary['loss']} on "
                 f"{summary['dataset']}, T={summary['num_steps']}, seed {summary['seed']}:** final test accuracy "
                 f"{summary['test_accuracy']:.2f}%, best {summary['best_test_accuracy']:.2f}%, "
                 f"mean firing rate {summary['firing_rate']:.4f} ({summary['source']})")
    return "\n".join(lines)


@torch.no_grad()
def save_segmentation_examples(model, dataset, path: str | Path, count: int = 4, ignore_index: int = 255) -> None:
    """Rows of (image, ground truth, prediction overlaid on the image) for the first ``count`` samples;
    ignored (255) pixels are left blank in the ground truth."""
    model.eval()
    device = next(model.parameters()).device
    count = min(count, len(dataset))
    fig, axes = plt.subplots(count, 3, figsize=(9, 3 * count), squeeze=False)
    cmap = plt.get_cmap("tab20", dataset.num_classes)
    for row in range(count):
        image, mask = dataset[row]
        prediction = model(image[None].to(device)).argmax(1)[0].cpu()
        picture = image.permute(1, 2, 0).float().numpy()
        picture = (picture - picture.min()) / max(float(picture.max() - picture.min()), 1e-8)
        truth = np.ma.masked_equal(mask.numpy(), ignore_index)
        axes[row, 0].imshow(picture)
        axes[row, 1].imshow(truth, cmap=cmap, vmin=0, vmax=dataset.num_classes - 1, interpolation="nearest")
        axes[row, 2].imshow(picture)
        axes[row, 2].imshow(prediction.numpy(), cmap=cmap, vmin=0, vmax=dataset.num_classes - 1, alpha=0.5,
                            interpolation="nearest")
        for ax, title in zip(axes[row], ("image", "ground truth", "prediction (overlay)")):
            ax.set_title(f"{title}, sample {row}")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
