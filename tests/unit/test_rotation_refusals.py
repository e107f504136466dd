"""`govstack secret rotate` refuses the secrets that a new value would break, with the reason:
above all s3_sse_key (a new key-encryption key would leave every encrypted object unreadable)."""

from __future__ import annotations

import pytest

from govstack.rotation import NOT_ROTATED, RotationRefused, check_rotatable
from govstack.secrets import SECRET_SPECS


@pytest.mark.parametrize("name", sorted(NOT_ROTATED))
def test_a_secret_a_rotation_would_break_is_refused_with_its_reason(name):
    assert SECRET_SPECS[name].rotation is None, f"{name} has a rotation and a reason not to rotate it"
    with pytest.raises(RotationRefused) as refused:
        check_rotatable(name, [])
    assert str(refused.value) == f"{name} is not rotated by govstack: {NOT_ROTATED[name]}"


def test_the_object_encryption_key_is_among_them():
    with pytest.raises(RotationRefused, match="every encrypted object unreadable"):
        check_rotatable("s3_sse_key", [])


def test_an_unknown_name_is_refused_naming_the_list():
    with pytest.raises(RotationRefused, match="secret --list"):
        check_rotatable("no_such_secret", [])
