"""The CPU process settings: freed memory is reused rather than faulted in afresh at every step."""

from __future__ import annotations

import subprocess
import sys

import pytest

# As a training process is when it tunes itself: with pretraining's modules loaded. Whether glibc reuses a freed
# block depends on the heap's layout: with torch alone loaded (`import sharebench` loads no model), each step's
# block lands at a new address above the last and the heap grows, in some layouts even with the tuning.
PAGE_FAULTS_OF_LARGE_TENSORS = """
import resource, sys, torch
import sharebench.pretrain
from sharebench.cpu import tune_cpu_process
if sys.argv[1] == "tuned":
    tune_cpu_process()
x = torch.randn(608, 30522)  # a step's logits: 74 MB
x.exp()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x.exp()  # allocated, written and freed again, as every step does
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median allocation: now and then the tuned heap grows once, a one-off that later steps do not repeat.
print(sorted(faults)[len(faults) // 2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc's")
@pytest.mark.slow
def test_tuned_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", PAGE_FAULTS_OF_LARGE_TENSORS, mode],
                                capture_output=True, text=True, check=True)  # fmt: skip
        return int(result.stdout.strip().splitlines()[-1])

    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 74e6 / 4096 * 0.9  # the allocation faulted in page by page
    assert tuned < plain / 20
