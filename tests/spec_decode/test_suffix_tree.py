"""The suffix tree's counts against brute-force substring counting (random sequences, appends
in pieces, removals), and its continuations' probabilities."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pagedllm.spec_decode.suffix_tree import Node, SuffixTree


def brute_counts(seqs: list[list[int]], depth: int) -> Counter:
    """Occurrences of every substring of up to `depth` tokens."""
    counts: Counter = Counter()
    for seq in seqs:
        for i in range(len(seq)):
            for j in range(i + 1, min(len(seq), i + depth) + 1):
                counts[tuple(seq[i:j])] += 1
    return counts


def count_at(tree: SuffixTree, pattern) -> int:
    hit = tree.match(pattern)
    return 0 if hit is None else hit[0].count


def check(tree: SuffixTree, seqs: list[list[int]], vocab: int) -> None:
    want = brute_counts(seqs, tree.max_depth)
    for pattern, count in want.items():
        assert count_at(tree, pattern) == count, pattern
    assert tree.root.count == sum(len(s) for s in seqs)
    rng = random.Random(1)  # absent patterns are absent
    for _ in range(200):
        pattern = tuple(rng.randrange(vocab) for _ in range(rng.randint(1, 4)))
        if pattern not in want:
            assert tree.match(pattern) is None
    check_invariants(tree.root)


def check_invariants(node: Node) -> None:
    """count = occurrences ending here + children's counts >= children's; keys = first tokens."""
    for token, child in node.children.items():
        assert child.parent is node and child.token(0) == token and child.length >= 1
        assert 0 < child.count <= node.count
        check_invariants(child)
    assert sum(c.count for c in node.children.values()) <= node.count


@pytest.mark.parametrize("vocab, depth", [(2, 4), (3, 6), (5, 24), (40, 3)])
def test_counts_equal_brute_force_through_appends_and_removals(vocab, depth):
    rng = random.Random(vocab * 100 + depth)
    tree = SuffixTree(depth)
    seqs: dict[int, list[int]] = {}
    for seq_id in range(6):
        seq = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
        if seq_id == 3 and seqs:  # a copy of an earlier one (an edit of a given text)
            seq = list(seqs[0]) + seq[:5]
        seqs[seq_id] = seq
        pos = 0
        while pos < len(seq):  # fed in pieces, as a request is step by step
            step = rng.randint(1, 5)
            tree.extend(seq_id, seq[pos : pos + step])
            pos += step
        check(tree, list(seqs.values()), vocab)
    for seq_id in (1, 3, 0):
        tree.remove(seq_id)
        del seqs[seq_id]
        check(tree, list(seqs.values()), vocab)
    tree.extend(9, [rng.randrange(vocab) for _ in range(30)])  # appends after removals
    tree.extend(2, [rng.randrange(vocab) for _ in range(10)])  # and a removed-from one grows
    seqs[9], seqs[2] = tree.seqs[9], tree.seqs[2]
    check(tree, list(seqs.values()), vocab)
    for seq_id in list(seqs):
        tree.remove(seq_id)
    assert tree.root.count == 0 and not tree.root.children


def test_paths_are_compressed():
    """A long sequence and a copy of it: nodes grow with the length, not length * depth."""
    rng = random.Random(0)
    seq = [rng.randrange(1000) for _ in range(500)]
    tree = SuffixTree(24)
    tree.extend(0, seq)
    tree.extend(1, seq)
    nodes, stack = 0, [tree.root]
    while stack:
        node = stack.pop()
        nodes += 1
        stack.extend(node.children.values())
    assert nodes < 4 * 500


def test_continuation_follows_the_most_frequent_child_while_probable():
    tree = SuffixTree(8)
    # after "1 2": "3" three times, "4" once; after "1 2 3": "5" twice, "6" once
    tree.extend(0, [1, 2, 3, 5, 0, 1, 2, 3, 5, 0, 1, 2, 3, 6, 0, 1, 2, 4])
    node, idx = tree.match([1, 2])
    tokens, score = tree.continuation(node, idx, 4, 0.1)
    # P(3)=3/4, P(3 5)=3/4*2/3=1/2, P(3 5 0)=1/2 (0 always follows 5), then "1" 1/2
    assert tokens == [3, 5, 0, 1]
    assert score == pytest.approx(0.75 + 0.5 + 0.5 + 0.5)
    assert tree.continuation(node, idx, 4, 0.6)[0] == [3], "stops below min_token_prob"
    assert tree.continuation(node, idx, 2, 0.1)[0] == [3, 5], "and at max_tokens"
