"""Weights on 2 MB pages (sensorium/nn/memory.py): the same tensor in other memory, actually backed by huge pages
where Linux offers them, freed with the tensor, and a bf16 decoder's streamed weights moved there by the loader."""

import copy
import gc
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sensorium.nn import Linear, gemv, stream_linears
from sensorium.nn.memory import HUGE_PAGE, on_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
huge_pages_offered = pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(),
    reason="this kernel offers no transparent huge pages (not Linux, or set to never)")


def mapping_of(pointer: int) -> dict[str, str] | None:
    """The /proc/self/smaps entry of the mapping holding `pointer` (its fields), None when no mapping does."""
    entry = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(part, 16) for part in head.split("-"))
            entry = {} if start <= pointer < end else None
        elif entry is not None:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
            if key == "VmFlags":
                return entry
    return None


def test_the_copy_holds_the_same_tensor_on_a_2mb_boundary():
    weight = torch.randn(2048, 1536).bfloat16()  # 6 MB
    moved = on_huge_pages(weight)
    assert moved is not weight and moved.data_ptr() != weight.data_ptr()
    assert torch.equal(moved, weight) and moved.dtype == weight.dtype and moved.shape == weight.shape
    assert moved.is_contiguous() and moved.data_ptr() % HUGE_PAGE == 0


def test_a_moved_tensor_is_not_moved_again():
    moved = on_huge_pages(torch.randn(2048, 1536).bfloat16())
    assert on_huge_pages(moved) is moved


def test_a_non_contiguous_or_float32_tensor_is_copied_contiguous():
    weight = torch.randn(1536, 2048).t()
    moved = on_huge_pages(weight)
    assert moved.is_contiguous() and torch.equal(moved, weight)


def test_small_tensors_stay_where_they_are():
    small = torch.randn(1000, 1000).bfloat16()  # 2 MB: not two whole huge pages
    assert on_huge_pages(small) is small


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
@huge_pages_offered
def test_huge_pages_back_the_copy():
    moved = on_huge_pages(torch.ones(3 * HUGE_PAGE // 4 + 1000))  # 6 MB and a bit: 3 whole huge pages
    entry = mapping_of(moved.data_ptr())
    assert entry is not None and "hg" in entry["VmFlags"].split()  # madvise(MADV_HUGEPAGE) took
    assert int(entry["AnonHugePages"].split()[0]) * 1024 >= 2 * HUGE_PAGE  # and the kernel backed it so


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_the_memory_goes_with_the_tensor():
    moved = on_huge_pages(torch.ones(4 * HUGE_PAGE // 4))
    view = moved[10:20]
    pointer = moved.data_ptr()
    del moved
    gc.collect()
    assert mapping_of(pointer) is not None  # a view keeps it
    assert float(view.sum()) == 10.0
    del view
    gc.collect()
    assert mapping_of(pointer) is None


def test_a_moved_weight_saves_loads_and_copies_as_any(tmp_path):
    layer = Linear(1024, 4096, bias=True).bfloat16().requires_grad_(False)
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    layer.weight = nn.Parameter(on_huge_pages(layer.weight.detach()), requires_grad=False)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    saved = load_file(tmp_path / "layer.safetensors")
    assert saved.keys() == before.keys() and all(torch.equal(saved[key], before[key]) for key in before)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    pickled = torch.load(buffer)
    assert pickled.keys() == before.keys() and all(torch.equal(pickled[key], before[key]) for key in before)
    assert torch.equal(copy.deepcopy(layer).weight, before["weight"])


@pytest.mark.skipif(not gemv.available(), reason=f"the one-row bf16 kernel is not available here: {gemv.why_not()}")
def test_a_streamed_decoder_keeps_its_outputs_on_huge_pages():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(2048, 1024), Linear(1024, 4096, bias=False), Linear(4096, 1024, bias=False),
                          Linear(1024, 64, bias=False)).bfloat16().requires_grad_(False)
    ids = torch.tensor([[3, 1999]])
    expected = model(ids)
    small = model[3].weight
    assert stream_linears(model) == 3
    for part in (model[0], model[1], model[2]):  # 4 MB and up: moved; the 128 KB layer stays on small pages
        assert part.weight.data_ptr() % HUGE_PAGE == 0 and not part.weight.requires_grad
    assert all(part.blocked for part in model[1:])  # the linears in the kernel's blocks of rows (nn/gemv.py)
    assert model[3].weight.untyped_storage().nbytes() == small.untyped_storage().nbytes()  # no huge-page slack
    assert torch.equal(model(ids), expected)


@pytest.mark.parametrize("size", [1000, 3 * HUGE_PAGE // 4])  # under two huge pages, and on them
def test_a_scratch_buffer_made_under_inference_mode_serves_calls_outside_it(size):
    """The first call that asks for a scratch buffer may run under torch.inference_mode(); a later one under
    torch.no_grad() writes into the same buffer (it failed: an inference tensor cannot be written outside it). A bf16
    model run under inference_mode, then another under no_grad, on a CPU without native bf16 did that."""
    from sensorium.nn.memory import scratch

    name = f"test buffer {size}"
    with torch.inference_mode():
        scratch(name, (size,), torch.float32).fill_(1.0)
    with torch.no_grad():
        buffer = scratch(name, (size,), torch.float32)
        buffer.copy_(torch.arange(size, dtype=torch.float32))
    assert not buffer.is_inference() and float(buffer[-1]) == size - 1
