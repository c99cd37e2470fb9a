"""snn-repro: reproduce and combine A2SG, DS-ATGO, MPD-AGL and circulate-firing SNN training.

Subpackages: ``repro.surrogates`` (surrogate gradients), ``repro.models`` (neurons and models),
``repro.datasets`` (datasets), ``repro.engine`` (training), ``repro.config`` (configuration).
"""
__version__ = "0.1.0"
