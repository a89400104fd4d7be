"""Multimodal inputs: images decoded and checked in the API process (`image.py`, `media.py`),
turned into pixel inputs and placeholder tokens (`processor.py`), carried to the worker as
`MultiModalFeature`s (`inputs.py`, plain data: no torch)."""
