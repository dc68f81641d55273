import io

from reshard.observe.progress import Progress, human_seconds


def test_plain_lines_carry_rate_and_eta():
    out = io.StringIO()
    p = Progress("plain", stream=out)
    t = p.task("copy", total=1000, unit="rows")
    t.started -= 2.0  # pretend two seconds passed
    t.advance(500)
    t.close()
    text = out.getvalue()
    assert "copy: 500/1,000 rows (50%)" in text
    assert "rows/s" in text and "ETA" in text and text.strip().endswith("done")


def test_off_prints_nothing():
    out = io.StringIO()
    p = Progress("off", stream=out)
    p.step("hello")
    p.task("x", total=3).advance(3)
    assert out.getvalue() == ""


def test_human_seconds():
    assert human_seconds(5) == "5s"
    assert human_seconds(125) == "2m05s"
    assert human_seconds(None) == "?"
