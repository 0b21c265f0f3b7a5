"""Splitting a failed batch down to the job at fault."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded

from gpu_worker.analyzer import Analyzer, InvalidInput, Item, OutOfMemory
from gpu_worker.isolation import predict_isolating


class Recording(Analyzer):
    name = "recording"

    def __init__(self, fails_with=None, capacity=None):
        self.calls: list[list[str]] = []
        self.fails_with = fails_with or {}
        self.capacity = capacity

    def predict(self, batch):
        self.calls.append([item.data for item in batch])
        if self.capacity is not None and len(batch) > self.capacity:
            raise OutOfMemory(f"{len(batch)} do not fit")
        for item in batch:
            if item.data in self.fails_with:
                raise self.fails_with[item.data]
        return [item.data.upper() for item in batch]


def items(*names: str) -> list[Item]:
    return [Item(job_id=name, data=name, media_type=None) for name in names]


def test_a_batch_that_succeeds_runs_once():
    analyzer = Recording()
    assert predict_isolating(analyzer, items("a", "b", "c")) == ["A", "B", "C"]
    assert analyzer.calls == [["a", "b", "c"]]


def test_the_culprit_gets_the_error_and_the_others_their_results():
    error = InvalidInput("unreadable")
    analyzer = Recording(fails_with={"c": error})
    out = predict_isolating(analyzer, items("a", "b", "c", "d", "e"))
    assert out[:2] == ["A", "B"] and out[2] is error and out[3:] == ["D", "E"]
    assert ["c"] in analyzer.calls and len(analyzer.calls) <= 2 * 5


def test_running_out_of_memory_is_answered_by_smaller_batches():
    analyzer = Recording(capacity=2)
    assert predict_isolating(analyzer, items("a", "b", "c", "d", "e")) == ["A", "B", "C", "D", "E"]
    assert analyzer.calls == [list("abcde"), list("ab"), list("cde"), list("c"), list("de")]


def test_a_single_job_out_of_memory_fails_with_it():
    analyzer = Recording(capacity=0)
    [out] = predict_isolating(analyzer, items("a"))
    assert isinstance(out, OutOfMemory)


def test_a_time_limit_is_not_split():
    limit = SoftTimeLimitExceeded()
    analyzer = Recording(fails_with={"b": limit})
    assert predict_isolating(analyzer, items("a", "b", "c")) == [limit] * 3
    assert len(analyzer.calls) == 1


def test_a_wrong_number_of_results_is_an_analyzer_error_found_by_splitting():
    class DropsOne(Recording):
        def predict(self, batch):
            out = super().predict(batch)
            return out[:-1] if any(item.data == "b" for item in batch) else out

    out = predict_isolating(DropsOne(), items("a", "b", "c"))
    assert out[0] == "A" and out[2] == "C"
    assert "predict returned 0 results for 1 inputs" in str(out[1])
