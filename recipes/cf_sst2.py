"""Circulate-firing neurons + time-step-wise learnable surrogate + balanced loss in the spiking text
Transformer on SST-2, T=32 (Zhou et al., arXiv 2605.27412, published SST-2 accuracy 81.31 [published,
unverified]; docs/methods.md section "Circulate-firing recipes") [reconstructed].

The model and the training setup are the directly trained text Spikformer of SpikeBERT (Lv et al.;
models/spikformer_text.py): depth 6, dim 768, max length 64, bert-base-cased tokens, batch 12, lr 1e-4,
100 epochs [reference code]; AdamW, weight decay 0.01 and the cosine schedule are ours [reconstructed].
Every SN (token encoder, Q/K/V, attention output at theta / 2, MLP) becomes a CF neuron with the method's
defaults (signed, D = 4, theta = 1, tau = 2) and its own TLSG sharpness; the reset is detached, as in the
baseline.

    accelerate launch recipes/cf_sst2.py --download               # fetches SetFit/sst2 and the tokenizer once
    accelerate launch recipes/cf_sst2.py --vanilla                # the baseline: SpikeBERT's LIF (tau 10), atan, CE
    accelerate launch recipes/cf_sst2.py --num_steps 4            # T = 4 when compute is tight
    accelerate launch recipes/cf_sst2.py --dataset mr             # also sst5, subj
    accelerate launch recipes/cf_sst2.py --dataset.tokenizer trained   # a vocabulary trained offline on SST-2
"""
from repro.cli import main
from repro.config import Config

config = Config(
    model="spikformer_text", model_options={"attn_threshold_option": "theta"}, num_steps=32,
    neuron="circulate_firing", neuron_options={"mode": "signed", "D": 4, "theta": 1.0, "tau": 2.0, "reset_detach": True},
    surrogate="learnable", surrogate_options={"shape": "sigmoid", "granularity": "per_layer_t", "k0": 4.0},
    loss="pnb", loss_options={"cls": "ce", "lam": 0.05, "warmup_epochs": 5},
    dataset="sst2", dataset_options={"tokenizer": "bert-base-cased", "max_length": 64},
    batch_size=12, eval_batch_size=64, epochs=100,
    optimizer="adamw", lr=1e-4, weight_decay=0.01, schedule="cosine",
    seed=2025, output_dir="runs/cf_sst2",
)
VANILLA = {"model_options": {}, "neuron": "lif", "neuron_options": {}, "surrogate": "atan", "surrogate_options": {},
           "loss": "ce", "loss_options": {}}
SMOKE = {"num_steps": 2, "model_options": {"depth": 1, "dim": 32, "heads": 2}}  # on top of the run's

if __name__ == "__main__":
    main(config, vanilla=VANILLA, smoke=SMOKE, description=__doc__)
