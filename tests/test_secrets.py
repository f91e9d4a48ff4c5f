from taskplatform import secrets


def setup_function() -> None:
    secrets.forget_all()


def teardown_function() -> None:
    secrets.forget_all()


def test_nothing_registered_leaves_values_alone():
    value = {"a": ["x", 1, None]}
    assert secrets.redact(value) is value
    assert secrets.redact_text("hunter2") == "hunter2"


def test_registered_values_are_masked_everywhere():
    secrets.register(["hunter2", "ab"])  # too short to mask: "ab" stays
    assert secrets.redact_text("pw=hunter2; ab") == "pw=***; ab"
    assert secrets.redact({"hunter2": ["say hunter2", 3], "t": ("hunter2",)}) == {
        "***": ["say ***", 3], "t": ("***",)}


def test_longer_secret_containing_a_shorter_one_is_masked_whole():
    secrets.register("token")
    secrets.register("token-extra")
    assert secrets.redact_text("x token-extra y token") == "x *** y ***"
