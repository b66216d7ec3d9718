"""bench/impair.py: the relay's parameters from the bench's, and its section of
docs/benchmarks.md rewritten without touching the rest."""

from __future__ import annotations

from pathlib import Path

from bench import impair
from bench.report import write_markdown
from bench.result import Params, Result

DOC = """# Benchmarks

intro

## Latest run: x

latest

## Audio under impairment

by hand, kept

### Bench runs with the relay

generated text

| date | ... |
|---|---|
| 2026-12-01 00:00 | old row |
"""


def test_impairment_from_params() -> None:
    p = Params(calls=20, seconds=10, loss=5, burst="2x60", jitter=20)
    assert impair.wanted(p) and not impair.wanted(Params())
    assert impair.wanted(Params(relay=True))
    a, back = impair.both_ways(p, 0)
    b, _ = impair.both_ways(p, 1)
    assert a.seed != b.seed and back.clean
    # bursts inside the window: after the ramp (0.5 s), warm-up (3 s) and 2 s more
    assert [x.start_ms for x in a.bursts] == [7166.666666666667, 10500.0]
    assert impair.describe(p) == ("5 % loss, 2 x 60 ms bursts in the window, 20 ms jitter / none")
    assert "--loss 5 --burst 2x60 --jitter 20" in impair.args(p)
    assert impair.added_delay_ms(p) == 80.0


def test_the_section_keeps_text_by_hand_and_adds_a_row(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text(DOC)
    r = Result(Params(calls=2, seconds=1, loss=5), started="2026-12-08 00:00:00 UTC")
    impair.write_markdown(path, r, "abc1234")
    text = path.read_text()
    assert "## Latest run: x\n\nlatest" in text and "by hand, kept" in text
    assert "generated text" not in text  # rewritten
    rows = [line for line in text.splitlines() if line.startswith("| 2026-")]
    assert rows[0] == "| 2026-12-01 00:00 | old row |"
    assert rows[1].startswith("| 2026-12-08 00:00 | abc1234 | 2 x 1 | 5 % loss / none |")
    # and a plain run keeps the section as it is
    write_markdown(path, Result(Params(calls=2, seconds=1), started="2026-12-08 01:00:00 UTC"))
    again = path.read_text()
    assert "by hand, kept" in again and rows[1] in again
