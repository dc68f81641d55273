"""Which PostgreSQL major each role of the embedded stack runs."""

import pytest

from reshard.errors import StackError
from reshard.stack import pg_binaries
from reshard.stack.stack import PgVersions


def test_roles_take_their_own_major_or_the_default():
    pg = PgVersions(default=16, targets=18)
    assert (pg.of("control"), pg.of("source1"), pg.of("target2")) == (16, 16, 18)
    assert PgVersions().of("source1") is None  # nothing asked: an existing cluster keeps its own
    assert PgVersions().source_major == PgVersions().target_major == pg_binaries.DEFAULT


def test_a_target_older_than_its_source_is_refused():
    with pytest.raises(StackError, match="targets on PostgreSQL 16 cannot take rows from sources on 17"):
        PgVersions(sources=17, targets=16)


def test_an_unsupported_major_is_refused_by_name():
    with pytest.raises(StackError, match="PostgreSQL 14 is not supported: reshard runs on 15, 16, 17, 18"):
        PgVersions(default=14)
