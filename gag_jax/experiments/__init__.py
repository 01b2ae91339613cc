"""Experiments: the paper's table rows, a resumable runner, table writers, figures and the demo.

* :mod:`~gag_jax.experiments.specs`: ``MethodSpec`` rows of Tables 1-3 and the name parser.
* :mod:`~gag_jax.experiments.runner`: case x methods x metrics, one record per (method, batch),
  resumable.
* :mod:`~gag_jax.experiments.tables`: CSV + Markdown in the layout of Tables 1, 2, 3.
* :mod:`~gag_jax.experiments.figures`: Figure 1 grid, Figure 3 RCAP partitions, Figure 4
  propositions, Table 1 p-ablation curve, overlays.
* :mod:`~gag_jax.experiments.demo`: the zero-setup demo; :mod:`~gag_jax.experiments.explain_command`:
  the ``explain`` job; :mod:`~gag_jax.experiments.timing`: compile time of a block.
* :mod:`~gag_jax.experiments.tiny`: the small CNN of the synthetic case.
"""
from gag_jax.experiments.specs import (
    TABLE1_PERCENTS,
    MethodSpec,
    parse_methods,
    spec_from_name,
    table1_specs,
    table2_specs,
    table3_specs,
    table_specs,
)

__all__ = ["TABLE1_PERCENTS", "MethodSpec", "parse_methods", "spec_from_name", "table1_specs", "table2_specs",
           "table3_specs", "table_specs"]
