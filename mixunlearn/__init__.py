"""MixUnlearn: a machine-unlearning lab in pure PyTorch.

The library never imports Streamlit. Main entry points:

- :mod:`mixunlearn.data` -- datasets, forget specifications, splits;
- :mod:`mixunlearn.models` -- the model zoo;
- :mod:`mixunlearn.training` -- original model and retrained oracle, with a cache;
- :mod:`mixunlearn.methods` -- the unlearning-method registry;
- :mod:`mixunlearn.metrics` -- accuracies, membership-inference attacks, gap to Retrain;
- :mod:`mixunlearn.experiment` -- one config in, every method run and scored;
- :mod:`mixunlearn.store` -- the run store;
- :mod:`mixunlearn.cli` -- ``python -m mixunlearn``.
"""

import os as _os

# Idle OpenMP threads that spin burn the CPU the other threads need: on 2 shared cores digits
# training ran several times slower with the default (active) policy. Must be set before torch
# loads OpenMP, so importing the package first is enough; an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
