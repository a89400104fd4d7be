"""LLaVA-NeXT's AnyRes layout, as plain arithmetic shared by the API process (how many tokens an
image takes) and the model (how its tile features are packed).

An image of (height, width) is resized into the best of `image_grid_pinpoints` (the resolution
keeping the most of the image, then wasting the least: transformers' select_best_resolution)
and cut into tiles of the tower's size, after a base tile of the whole image. The tiles'
features form a (rows x side) x (cols x side) map whose padding rows or columns (where the
aspect ratio differed) are cut off ("unpadding"), then one image_newline token ends each row.
Tokens: the base tile's patches + rows * (cols + 1) of the unpadded map.
"""

from __future__ import annotations

from typing import Any


def best_resolution(image_size: tuple[int, int], pinpoints: list[Any]) -> tuple[int, int]:
    from transformers.image_processing_utils import select_best_resolution

    height, width = select_best_resolution(list(image_size), [list(p) for p in pinpoints])
    return int(height), int(width)


def tile_grid(image_size: tuple[int, int], pinpoints: list[Any],
              tile_size: int) -> tuple[int, int]:
    """(tile rows, tile columns) of the image's best resolution."""
    height, width = best_resolution(image_size, pinpoints)
    return height // tile_size, width // tile_size


def unpadded_shape(image_size: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """The (height, width) of a (height, width) feature map once the padding that fitted an
    image of image_size into it is cut off (HF's unpad_image, the same rounding)."""
    original_height, original_width = image_size
    if original_width / original_height > width / height:
        new_height = int(round(original_height * (width / original_width), 7))
        padding = (height - new_height) // 2
        return height - 2 * padding, width
    new_width = int(round(original_width * (height / original_height), 7))
    padding = (width - new_width) // 2
    return height, width - 2 * padding


def num_anyres_tokens(image_size: tuple[int, int], pinpoints: list[Any], tile_size: int,
                      patches_per_side: int, base_tokens: int) -> int:
    rows, cols = tile_grid(image_size, pinpoints, tile_size)
    height, width = unpadded_shape(image_size, rows * patches_per_side, cols * patches_per_side)
    return base_tokens + height * (width + 1)
