"""Structured pruning: channel groups found on the ONNX graph, cut together, so tensors really shrink.

Three separate ideas (design §3):

- what is coupled: ``groups.find_groups`` follows each producer's channels through the graph
  (``ops`` holds the per-op rules, ``paths`` the Concat/Split/Flatten/head index maps,
  ``attention`` the transformer layouts: last-axis features and whole attention heads);
- what matters: ``scores.group_scores``, by a criterion of ``mcomp.passes.prune.criteria`` (L1/L2
  norms, BatchNorm scale, Taylor, random);
- how much: ``driver.prune_structured`` (a uniform rate, or a params/MACs target), and
  ``merge.merge_similar``, which folds near-duplicate filters into their twins instead;

``surgery.remove_channels`` does the cutting for all of them.
"""

from mcomp.passes.prune.structured.driver import DEFAULT_ROUND_TO, prune_structured
from mcomp.passes.prune.structured.groups import ChannelGroup, Member, find_groups
from mcomp.passes.prune.structured.report import GroupRecord, StructuredReport
from mcomp.passes.prune.structured.surgery import remove_channels

__all__ = ["DEFAULT_ROUND_TO", "ChannelGroup", "GroupRecord", "Member", "StructuredReport", "find_groups",
           "prune_structured", "remove_channels"]
