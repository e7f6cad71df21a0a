"""Weights a decode step streams, on 2 MB pages.

A one-token step reads every weight of a decoder once, so it runs at the speed memory streams, and with 4 KB pages
that stream crosses a page every 4 KB: a TLB miss each time, and the hardware prefetchers stop at each boundary.
On 2 MB pages (Linux's transparent huge pages, asked for with madvise before the memory is first touched) the
same one-row products stream faster: on a 2-core Zen 4, sensorium's kernel 1.06-1.14x over 256 MB to 525 MB of
weights (a Llama-1B bf16 decode 1.13x), its int8 kernel 1.38x, and a plain streaming read 1.12-1.23x (one process,
interleaved rounds; BENCHMARKS.md, "third pass").

Where huge pages cannot be asked for (not Linux, transparent huge pages set to "never", a tensor under two huge
pages, not on the CPU) the tensor stays as it is. Nothing else changes: same values, dtype and shape, a contiguous
CPU tensor either way (the copy's storage cannot be resized, as a weight's never is).
"""

from __future__ import annotations

import math
import mmap
import threading

import torch

HUGE_PAGE = 2 << 20


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `tensor` in fresh anonymous memory the kernel was asked to back with 2 MB pages, or
    `tensor` itself where that cannot be asked (see the module docstring) or it already starts on a 2 MB boundary
    (in practice one this function made: a model laid out twice). The copy's memory is freed with it."""
    nbytes = tensor.numel() * tensor.element_size()
    if (tensor.device.type != "cpu" or tensor.is_mkldnn or tensor.is_sparse or nbytes < 2 * HUGE_PAGE
            or not hasattr(mmap, "MADV_HUGEPAGE")):
        return tensor
    if tensor.is_contiguous() and tensor.data_ptr() % HUGE_PAGE == 0:  # moved already
        return tensor
    moved = empty_on_huge_pages(tensor.shape, tensor.dtype)
    if moved is None:  # huge pages not available to this process: the copy would gain nothing
        return tensor
    return moved.copy_(tensor)


def empty_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """An uninitialized contiguous CPU tensor in fresh anonymous memory the kernel was asked to back with 2 MB pages
    (its memory freed with it), or None where that cannot be asked (not Linux, THP "never") or it is under two huge
    pages."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes < 2 * HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    # over-allocated by one huge page so the tensor can start on a 2 MB boundary; the slack is never touched, so it
    # costs address space, not memory
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # holds `region` alive as long as any view of it lives
    offset = -raw.data_ptr() % HUGE_PAGE
    whole_pages = nbytes // HUGE_PAGE * HUGE_PAGE  # the tail under 2 MB stays on small pages (no page half wasted)
    try:
        region.madvise(mmap.MADV_HUGEPAGE, offset, whole_pages)
    except OSError:
        return None
    return raw[offset : offset + nbytes].view(dtype).view(shape)


_scratch_buffers = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A buffer reused by every call in this thread that asks for `name` (a prefill's layers run one after another,
    each dequantizing its weight into it): a fresh tensor of a big weight's size costs its page
    faults on every call. Its contents are the last caller's."""
    count = math.prod(shape)
    buffer = getattr(_scratch_buffers, name, None)
    if buffer is None or buffer.numel() < count or buffer.dtype != dtype:
        # a plain tensor even when made under torch.inference_mode(): an inference tensor could not be written
        # outside it (a later call under torch.no_grad() would fail)
        with torch.inference_mode(False):
            buffer = empty_on_huge_pages((count,), dtype)  # read as a weight is: on 2 MB pages too
            buffer = torch.empty(count, dtype=dtype) if buffer is None else buffer
        setattr(_scratch_buffers, name, buffer)
    return buffer[:count].view(shape)
