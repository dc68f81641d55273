"""Verification's verdict from what it found (the comparisons run against live servers in e2e)."""

from reshard.proof.verify import TableCheck


def check(**kw):
    base = dict(move="g:a->b", table="public.t", source="a", target="b", source_rows=10, target_rows=10,
                source_checksum="1", target_checksum="1")
    return TableCheck(**{**base, **kw})


def test_equal_summaries_are_equal():
    assert check().equal


def test_differing_summaries_without_key_comparison_are_not_equal():
    assert not check(target_rows=9).equal


def test_keys_compared_after_a_stale_summary_decide():
    # under load the checksums differed, then every key compared equal: the change was in flight
    assert check(target_rows=9, target_checksum="2", keys_compared=True).equal
    assert not check(target_rows=9, keys_compared=True, differences=[{"key": ["3"], "problem": "values differ"}]).equal


def test_misplaced_rows_are_never_equal():
    assert not check(misplaced_rows=1).equal
