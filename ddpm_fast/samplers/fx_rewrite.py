"""The one FX step the compiled sampler's graph passes share (samplers/attention_pass.py,
samplers/conv_pass.py): a call to ddpm_fast's op inserted where ATen's was."""
from __future__ import annotations

import torch


def call_before(graph: torch.fx.Graph, node: torch.fx.Node, target, args: tuple, val) -> torch.fx.Node:
    """A call of ``target`` on ``args`` inserted before ``node``, carrying ``node``'s metadata (stack
    trace, source) with ``val`` as its fake value; rewiring ``node``'s users is the caller's."""
    with graph.inserting_before(node):
        new = graph.call_function(target, args)
    new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
    new.meta["val"] = val
    return new
