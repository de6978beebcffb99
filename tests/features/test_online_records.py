"""Online records hold plain data only: a record that references code is refused on read."""

from __future__ import annotations

import os
import pickle

import pytest

from closedloop.features.online import decode, encode


def test_records_round_trip() -> None:
    record = [1, True, 2, [1.5, None, "x", float("inf")]]
    assert decode(encode(record)) == record


def test_a_record_that_references_code_is_refused() -> None:
    evil = pickle.dumps(os.getcwd)          # would call back into the os module on load
    with pytest.raises(pickle.UnpicklingError, match="may not reference"):
        decode(evil)
