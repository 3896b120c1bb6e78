"""take_turns: every timer once per round, the order rotating, the samples kept per round."""

from __future__ import annotations

from tvm_sparse.timing import take_turns


def test_take_turns_rotates_the_order_and_keeps_rounds_apart():
    calls = []

    def timer(name, offset):
        def run():
            calls.append(name)
            return offset + len(calls)  # a different answer per call: samples keep their round

        return run

    samples = take_turns({"a": timer("a", 0), "b": timer("b", 100), "c": timer("c", 200)}, 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert samples == {"a": [1, 6, 8], "b": [102, 104, 109], "c": [203, 205, 207]}


def test_take_turns_with_nothing_to_time():
    assert take_turns({}, 5) == {}
    assert take_turns({"a": lambda: 1.0}, 0) == {"a": []}
