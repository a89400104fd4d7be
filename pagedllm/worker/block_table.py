"""BlockTable: each batch row's KV block ids, kept across steps and only appended to.

    row 0 | 7 3 9 0 0 |  num_blocks[0] = 3
    row 1 | 4 0 0 0 0 |  num_blocks[1] = 1
           <- width: max_blocks_per_req ->

Columns past a row's num_blocks are 0 (cleared when a request joins the row), so a step's view
of its rows is the same table a from-scratch build would give.
"""

from __future__ import annotations

import numpy as np

from pagedllm.worker.row_arrays import grown


class BlockTable:
    def __init__(self, max_num_reqs: int, max_blocks_per_req: int) -> None:
        self.table = np.zeros((max_num_reqs, max_blocks_per_req), dtype=np.int32)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int32)  # [max_num_reqs]

    def add_row(self, row: int, block_ids: list[int]) -> None:
        self.table[row] = 0
        self.num_blocks[row] = 0
        self.append(row, block_ids)

    def append(self, row: int, block_ids: list[int]) -> None:
        if not block_ids:
            return
        start = int(self.num_blocks[row])
        end = start + len(block_ids)
        if end > self.table.shape[1]:
            self.table = grown(self.table, 1, end)
        self.table[row, start:end] = block_ids
        self.num_blocks[row] = end

    def move_row(self, src: int, dst: int) -> None:
        self.table[dst] = self.table[src]
        self.num_blocks[dst] = self.num_blocks[src]

    def grow_rows(self, num_rows: int) -> None:
        self.table = grown(self.table, 0, num_rows)
        self.num_blocks = grown(self.num_blocks, 0, num_rows)

    def block_ids(self, row: int) -> list[int]:
        return self.table[row, : self.num_blocks[row]].tolist()

    def view(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), max blocks among rows] int32: the step's block table, a copy."""
        width = max(self.num_blocks[rows].tolist())  # (numpy's max costs more on a few rows)
        return self.table[rows, :width]


def slot_mapping(
    table: np.ndarray, row_of_token: np.ndarray, positions: np.ndarray, block_size: int
) -> np.ndarray:
    """[T] int64 cache slot of each token. table: a BlockTable.view; row_of_token: [T] its row
    of each token; positions: [T]."""
    block_ids = table[row_of_token, positions // block_size].astype(np.int64)
    return block_ids * block_size + positions % block_size
