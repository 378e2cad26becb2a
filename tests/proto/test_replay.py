"""Replay filter: remembers, forgets only after rotation, stays bounded."""

import os

from sidecar.proto.replay import ReplayFilter


def test_replayed_salt_is_rejected_and_counted():
    f = ReplayFilter(capacity=1000)
    salt = os.urandom(32)
    assert f.check_and_add(salt, 0.0)
    assert not f.check_and_add(salt, 1.0)
    assert f.replays == 1


def test_salt_survives_one_rotation_and_ages_out_after_two():
    f = ReplayFilter(capacity=10, window_s=1e9)
    salt = os.urandom(16)
    f.check_and_add(salt, 0)
    for _ in range(10):
        f.check_and_add(os.urandom(16), 0)
    assert not f.check_and_add(salt, 0)  # rotated once: still remembered
    for _ in range(25):
        f.check_and_add(os.urandom(16), 0)
    assert f.check_and_add(salt, 0)


def test_time_window_rotates():
    f = ReplayFilter(capacity=1000, window_s=10)
    salt = os.urandom(16)
    f.check_and_add(salt, 0)
    f.check_and_add(os.urandom(16), 11)  # rotation: salt now in the older filter
    f.check_and_add(os.urandom(16), 22)  # second rotation clears it
    assert f.check_and_add(salt, 23)


def test_memory_is_fixed_and_false_positives_rare():
    f = ReplayFilter(capacity=20_000, error_rate=1e-6)
    size = f.size_bytes
    assert size < 200_000
    false_positives = sum(not f.check_and_add(os.urandom(32), 0) for _ in range(20_000))
    assert false_positives <= 2
    assert f.size_bytes == size
