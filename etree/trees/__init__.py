"""Tree building and tree rounds: the tree, aggregation, tree timing, the hierarchical engine, KMA, public nodes."""

from etree.trees.aggregation import broadcast, segment_mean
from etree.trees.hierarchical import TreeProtocol
from etree.trees.tree import AggregationTree, star_tree

__all__ = ["AggregationTree", "TreeProtocol", "broadcast", "segment_mean", "star_tree"]
