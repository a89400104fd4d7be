"""What still does not run split over ranks is refused at model build with its reason: -pp for
the Mamba-based families (their state cache is not split by stage; -tp runs them, in
test_tensor_parallel_mamba.py), and -pp for the encoder-decoders (tested beside their -tp
run)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pagedllm.model_executor.model_loader import _check_tensor_parallel
from pagedllm.model_executor.models.registry import get_model_class


@pytest.mark.parametrize("architecture", ["MambaForCausalLM", "Mamba2ForCausalLM",
                                          "JambaForCausalLM", "BambaForCausalLM",
                                          "GraniteMoeHybridForCausalLM"])
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_mamba_families_pp_refused_with_reason(monkeypatch, architecture, tp, pp):
    import pagedllm.distributed as distributed

    # The class (and every module it imports) is loaded before the patch: a module that binds
    # `from pagedllm.distributed import get_tensor_model_parallel_world_size` at import would
    # otherwise keep the patched world size for the rest of the process.
    model_cls = get_model_class(architecture)
    monkeypatch.setattr(distributed, "get_tensor_model_parallel_world_size", lambda: tp)
    monkeypatch.setattr(distributed, "get_pp_group", lambda: SimpleNamespace(world_size=pp))
    if tp == 2:  # -tp is accepted
        _check_tensor_parallel(model_cls, SimpleNamespace(architecture=architecture))
        return
    with pytest.raises(ValueError, match=f"{architecture} does not run with "
                                         f"pipeline_parallel_size=2 .*state cache that is not "
                                         f"split by pipeline stage"):
        _check_tensor_parallel(model_cls,
                               SimpleNamespace(architecture=architecture))
