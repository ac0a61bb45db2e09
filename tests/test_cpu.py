"""The CPU process settings: freed memory is reused rather than faulted in afresh at every step; and the precision
`trainer.precision=auto` trains in on the hardware at hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

# As a training process is when it tunes itself: with pretraining's modules loaded. Whether glibc reuses a freed
# block depends on the heap's layout: with torch alone loaded (`import sharebench` loads no model), each step's
# block lands at a new address above the last and the heap grows, in some layouts even with the tuning.
PAGE_FAULTS_OF_LARGE_TENSORS = """
import resource, sys, torch
import sharebench.train.pretrain
from sharebench.run.cpu import tune_cpu_process
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
    assert plain > 74e6 / fault_granularity() * 0.9  # the allocation faulted in page by page
    assert tuned < plain / 20


def fault_granularity() -> int:
    """The bytes one page fault maps into a fresh anonymous allocation: a huge page where the kernel backs every
    such allocation with them (transparent huge pages `always`), else a base page."""
    import os
    from pathlib import Path

    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    huge = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
    if setting.is_file() and "[always]" in setting.read_text() and huge.is_file():
        return int(huge.read_text())
    return os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    "features, expected",
    [
        (("amx_bf16", "avx512_bf16"), ("bf16-mixed", "auto: the CPU has amx_bf16 and avx512_bf16")),
        (("avx512_bf16",), ("bf16-mixed", "auto: the CPU has avx512_bf16")),
        ((), ("32-true", "auto: the CPU has neither amx_bf16 nor avx512_bf16")),
    ],
)
def test_auto_precision_is_bf16_mixed_where_the_cpu_computes_bf16(features, expected, monkeypatch):
    from sharebench.run import cpu

    monkeypatch.setattr(cpu, "cpu_features", lambda: features)
    assert cpu.precision_here("auto", "cpu") == expected
    assert cpu.precision_here("32-true", "cpu") == ("32-true", "set by trainer.precision")  # given: used as given
    emulated = "bf16-mixed", f"set by trainer.precision; {cpu.BF16_EMULATED}"  # given: used, slow where emulated
    assert cpu.precision_here("bf16-mixed", "cpu") == (
        emulated if not features else ("bf16-mixed", "set by trainer.precision")
    )


def test_a_run_records_the_precision_it_used_and_why(nano_cfg, tmp_path):
    from sharebench.run.cpu import cpu_features
    from sharebench.train.tasks import run_task

    record = run_task(nano_cfg("trainer.precision=auto"), tmp_path / "run")
    used = "bf16-mixed" if cpu_features() else "32-true"
    assert record["precision"]["configured"] == "auto" and record["precision"]["used"] == used
    assert record["precision"]["why"].startswith("auto: the CPU has")
    assert record["hardware"]["cpu_bf16"] == list(cpu_features())
    assert record["status"] == "completed"


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_recorded_and_warned_about(nano_cfg, monkeypatch, capsys):
    """A CPU without AMX or AVX512-BF16 emulates bf16 (the AMD EPYC here: 7.9× slower per matmul), so a run told
    to use it trains as told, records why it is slow, and says so on the console."""
    from sharebench.run import cpu
    from sharebench.run.machine import precision_used
    from tests.conftest import spec_of

    trainer = spec_of(nano_cfg("trainer.precision=bf16-mixed")).trainer
    monkeypatch.setattr(cpu, "cpu_features", lambda: ())
    used = precision_used(trainer)
    assert used == {"configured": "bf16-mixed", "used": "bf16-mixed",
                    "why": f"set by trainer.precision; {cpu.BF16_EMULATED}"}  # fmt: skip
    assert capsys.readouterr().err == f"warning: trainer.precision=bf16-mixed: {cpu.BF16_EMULATED}\n"
    monkeypatch.setattr(cpu, "cpu_features", lambda: ("avx512_bf16",))
    assert precision_used(trainer)["why"] == "set by trainer.precision"
    assert capsys.readouterr().err == ""
