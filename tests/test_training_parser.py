"""The kohya output parser against the real recorded logs (`fixtures/kohya/*.log`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sidecar.training.parser import BarUpdate, CheckpointSaved, KohyaOutputParser

FIXTURES = Path(__file__).parent / "fixtures" / "kohya"


def parse(name: str, chunk: int = 0) -> tuple[KohyaOutputParser, list]:
    data = (FIXTURES / name).read_bytes()
    p = KohyaOutputParser()
    events: list = []
    step = chunk or len(data)
    for i in range(0, len(data), step):
        events += p.feed(data[i:i + step])
    events += p.close()
    return p, events


@pytest.mark.parametrize("chunk", [0, 1, 7, 4096])
def test_progress_and_checkpoints_of_a_real_run(chunk: int) -> None:
    # Chunk sizes: a pipe delivers arbitrary pieces, even single bytes of a multi-byte bar glyph.
    p, events = parse("train-run.log", chunk)
    bars = [e for e in events if isinstance(e, BarUpdate)]
    assert len(bars) == 14  # two redraws per step plus the opening and closing bars
    last = bars[-1]
    assert (last.step, last.total, last.elapsed_s, last.eta_s, last.loss) == (6, 6, 19.0, 0.0, 1.08)
    assert last.seconds_per_step == pytest.approx(3.23)
    assert [b.step for b in bars[:3]] == [0, 1, 1] and bars[1].loss is None and bars[2].loss == 1.09
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert [c.step for c in saved] == [2, 4, 6, None]
    assert saved[0].path.endswith("/out/run1/spyke-step00000002.safetensors")
    assert saved[-1].path.endswith("/spyke.safetensors")
    assert p.total == 6 and p.error is None and not p.no_data and not p.nan_seen
    assert p.device == "cpu"  # `accelerator device: cpu`: what LORA-04 checks before a long run
    assert not any("steps:" in line for line in p.tail) and any("model saved." in line for line in p.tail)


def test_resumed_run_adds_the_skipped_steps() -> None:
    p, events = parse("train-resume-skip.log")
    bars = [e for e in events if isinstance(e, BarUpdate)]
    assert p.offset == 4
    assert bars[0].step == 4 and bars[0].total == 6  # the bar itself shows 0/2
    assert (bars[-1].step, bars[-1].total, bars[-1].loss) == (6, 6, 1.12)
    assert [c.step for c in p.checkpoints] == [6, None]


def test_no_data_is_recognised_although_nothing_failed() -> None:
    p, events = parse("train-nodata.log")
    assert p.no_data and p.error is None and p.last is None and not events


def test_crash_reports_the_trainers_exception_not_accelerates_echo() -> None:
    p, _ = parse("train-bad-model.log")
    assert p.error is not None and p.error.type == "ValueError"
    assert "neither a valid local path nor a valid repo id" in p.error.message
    assert [e.type for e in p.errors] == ["ValueError", "subprocess.CalledProcessError"]
    assert any("Traceback" in line for line in p.error.traceback)


def test_sigint_cancel_leaves_the_last_checkpoint_and_keyboard_interrupts() -> None:
    p, _ = parse("train-cancelled-sigint.log")
    assert [c.step for c in p.checkpoints] == [2]
    assert {e.type for e in p.errors} == {"KeyboardInterrupt"}
    assert p.last is not None and (p.last.step, p.last.total) == (3, 40)


def test_nan_loss_is_flagged() -> None:
    p = KohyaOutputParser()
    events = p.feed("\rsteps:  50%|█████     | 3/6 [00:09<00:09,  3.10s/it, avr_loss=nan]".encode())
    assert p.nan_seen and math.isnan(events[0].loss)


def test_a_pending_bar_is_reported_without_waiting_for_the_next_redraw() -> None:
    p = KohyaOutputParser()
    first = p.feed("\rsteps:  17%|█▋        | 1/6 [00:03<00:18,  3.75s/it, avr_loss=1.09]".encode())
    assert [(e.step, e.loss) for e in first] == [(1, 1.09)]
    again = p.feed(b"\r")  # the same redraw, now terminated: not reported twice
    assert again == []


def test_state_dict_mismatch_keeps_the_lines_naming_the_keys() -> None:
    # The real output of train_network.py given a checkpoint of another architecture (the tiny test
    # model): torch's message continues on tab-indented lines after the exception line.
    log = (b"Traceback (most recent call last):\n"
           b'  File "/x/train_network.py", line 1913, in <module>\n'
           b"    trainer.train(args)\n"
           b"RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel:\n"
           b'\tMissing key(s) in state_dict: "down_blocks.0.attentions.0.norm.weight", ' + b'"k", ' * 400 + b'"z".\n'
           b"\tsize mismatch for conv_in.weight: copying a param with shape torch.Size([32, 4, 3, 3]) from checkpoint, "
           b"the shape in current model is torch.Size([320, 4, 3, 3]).\n"
           b"2026-11-27 07:57:45 INFO something else\n")
    p = KohyaOutputParser()
    p.feed(log)
    p.close()
    err = p.error
    assert err is not None and err.type == "RuntimeError"
    assert [c[:20] for c in err.continued] == ["Missing key(s) in st", "size mismatch for co"]
    assert len(err.continued[0]) <= 503  # kilobytes of key names are cut
    assert err.summary.startswith("RuntimeError: Error(s) in loading state_dict for UNet2DConditionModel: "
                                  'Missing key(s) in state_dict: "down_blocks.0')
    assert len(err.summary) < 300
    assert all(len(line) <= 1003 for line in p.tail)  # a log tail line never carries the whole key list
