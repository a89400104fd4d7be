"""A depth-limited suffix tree over token sequences, with occurrence counts: SuffixDecoding's
data structure (arXiv 2411.04975). Every substring of up to `max_depth` tokens of every stored
sequence is a path from the root, and each node counts the occurrences that pass through it, so
the continuations of a matched pattern come with their empirical frequencies.

Layout (path-compressed, so a sequence costs O(its length) nodes, not O(length * depth)):

    root ──[a b]── N (count 3) ──[c]── (count 2)
                               └─[d e f]── (count 1)

- A node's label is `ref[start : start + length]`: a stored sequence (a list that only grows),
  or a private copy of the label once that sequence is removed.
- count: occurrences that reach the node's label. All positions along a label share it, because
  an occurrence only ever ends at a node's end (a node is split where one would end inside it),
  so count = occurrences ending here + the children's counts.
- Each sequence's occurrences starting in its last max_depth positions are still growing: their
  end nodes (`active`, oldest = longest first) move one token down per appended token, O(1)
  each, so appending costs O(max_depth). Longer occurrences stop at max_depth tokens.
- Removing a sequence walks its occurrences again (O(length * max_depth)); it does not re-merge
  nodes whose counts became equal (the tree stays correct, only less compact).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence


class Node:
    __slots__ = ("children", "count", "length", "parent", "ref", "start")

    def __init__(self, parent: Node | None, ref: Sequence[int], start: int, length: int,
                 count: int) -> None:
        self.parent = parent
        self.ref = ref
        self.start = start
        self.length = length
        self.count = count
        self.children: dict[int, Node] = {}
        """By the first token of the child's label."""

    def token(self, i: int) -> int:
        return self.ref[self.start + i]


class SuffixTree:
    def __init__(self, max_depth: int) -> None:
        assert max_depth >= 1
        self.max_depth = max_depth
        self.root = Node(None, (), 0, 0, 0)
        """root.count: occurrences in the tree, one per stored token."""
        self.seqs: dict[Hashable, list[int]] = {}
        self.active: dict[Hashable, deque[Node]] = {}
        """Per growing sequence: where its occurrences of lengths max_depth..1 end."""

    def extend(self, seq_id: Hashable, tokens: Iterable[int]) -> None:
        """Append tokens to the sequence (a new one if seq_id is new)."""
        seq = self.seqs.setdefault(seq_id, [])
        active = self.active.setdefault(seq_id, deque())
        for token in tokens:
            self._append(seq, active, int(token))

    def freeze(self, seq_id: Hashable) -> None:
        """The sequence will not grow any more: drop its growing-occurrence pointers."""
        self.active.pop(seq_id, None)

    def remove(self, seq_id: Hashable) -> None:
        """Forget a sequence: every occurrence it added is subtracted again."""
        seq = self.seqs.pop(seq_id)
        self.active.pop(seq_id, None)
        for begin in range(len(seq)):
            self._remove_occurrence(seq, begin, min(len(seq), begin + self.max_depth))

    def match(self, pattern: Sequence[int]) -> tuple[Node, int] | None:
        """Where `pattern` ends in the tree: (node, tokens of its label matched); None if the
        pattern never occurs."""
        node, idx = self.root, 0
        for token in pattern:
            if idx == node.length:
                child = node.children.get(token)
                if child is None:
                    return None
                node, idx = child, 1
            elif node.ref[node.start + idx] == token:
                idx += 1
            else:
                return None
        return node, idx

    def continuation(self, node: Node, idx: int, max_tokens: int, min_prob: float
                     ) -> tuple[list[int], float]:
        """The most frequent continuation from a match, token by token, while its estimated
        probability (the product of child count / parent count along the way) stays >= min_prob.
        Returns the tokens and their summed probabilities (the expected accepted count)."""
        tokens: list[int] = []
        score, prob = 0.0, 1.0
        while len(tokens) < max_tokens:
            if idx == node.length:
                if not node.children:
                    break
                child = max(node.children.values(), key=_count)
                prob *= child.count / node.count
                if prob < min_prob:
                    break
                node, idx = child, 0
            tokens.append(node.ref[node.start + idx])
            score += prob
            idx += 1
        return tokens, score

    # -- appending ---------------------------------------------------------------------------

    def _append(self, seq: list[int], active: deque[Node], token: int) -> None:
        pos = len(seq)
        seq.append(token)
        self.root.count += 1  # the occurrence starting at pos, empty so far
        active.append(self.root)
        if len(active) > self.max_depth:
            active.popleft()  # it is max_depth long: it stops growing
        for i in range(len(active)):
            active[i] = self._grow(active[i], seq, pos, token)

    def _grow(self, node: Node, seq: list[int], pos: int, token: int) -> Node:
        """Extend an occurrence that ends at `node`'s end (at seq position pos) by `token`
        (seq[pos]); return the node it ends at now."""
        child = node.children.get(token)
        if child is None:
            if node is not self.root and node.count == 1:
                # Only this occurrence reaches the node (so it has no children): grow it.
                node.ref, node.start = seq, pos - node.length
                node.length += 1
                return node
            leaf = Node(node, seq, pos, 1, 1)
            node.children[token] = leaf
            return leaf
        if node is not self.root and node.count == child.count + 1:
            return self._fuse(node, child, seq, pos)
        if child.length == 1:
            child.count += 1
            child.ref, child.start = seq, pos  # keep refs on sequences that are still stored
            return child
        # Split the child after its first token: the occurrence ends there.
        head = Node(node, seq, pos, 1, child.count + 1)
        child.start += 1
        child.length -= 1
        child.parent = head
        head.children[child.token(0)] = child
        node.children[token] = head
        return head

    def _fuse(self, node: Node, child: Node, seq: list[int], pos: int) -> Node:
        """This occurrence is the only one ending at `node` and every other one continues into
        `child`; now it continues too, so child's first token becomes as frequent as node."""
        parent = node.parent
        assert parent is not None and len(node.children) == 1
        if child.length == 1:
            # The child takes the node's place: pointers of occurrences ending at the child
            # stay valid, and none but this one ends at the node.
            child.ref, child.start = seq, pos - node.length
            child.length = node.length + 1
            child.count += 1
            child.parent = parent
            parent.children[child.token(0)] = child
            return child
        node.ref, node.start = seq, pos - node.length
        node.length += 1
        del node.children[child.token(0)]
        child.start += 1
        child.length -= 1
        node.children[child.token(0)] = child
        return node

    # -- removing ----------------------------------------------------------------------------

    def _remove_occurrence(self, seq: list[int], begin: int, end: int) -> None:
        node, pos = self.root, begin
        node.count -= 1
        while pos < end:
            child = node.children[seq[pos]]
            child.count -= 1
            if child.count == 0:  # only this occurrence reached it, and all below it
                del node.children[seq[pos]]
                return
            if child.ref is seq:  # the label must outlive the sequence
                child.ref = seq[child.start : child.start + child.length]
                child.start = 0
            pos += child.length
            node = child
        assert pos == end, "an occurrence ends inside a node"


def _count(node: Node) -> int:
    return node.count
