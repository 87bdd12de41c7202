"""Pipelined placement group requests (``runtime/api/placement_group_calls.py``): what is
sent when, which answers are read before which request, and where a failure surfaces.
A fake host records sends and answers them when the test says."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from shoal.kernel.gcs.placement_group_protocol import (
    CreatePlacementGroup,
    GetPlacementGroup,
    PlacementGroupReply,
    PlacementGroupRequest,
    PlacementGroupSpec,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
)
from shoal.runtime.api import placement_group_calls
from shoal.runtime.api.placement_group_calls import PlacementGroupCalls


class FakeHost:
    """Logs ``sent X`` when a request is posted and ``read X`` when its reply is read."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.errors: dict[str, str] = {}  # request name -> the error its reply carries

    def send(self, request: PlacementGroupRequest) -> Callable[[], PlacementGroupReply]:
        name = _name(request)
        self.log.append(f"sent {name}")

        def read() -> PlacementGroupReply:
            self.log.append(f"read {name}")
            return PlacementGroupReply(request_id=0, error=self.errors.get(name, ""))
        return read


def _name(request: PlacementGroupRequest) -> str:
    kind = type(request).__name__.replace("PlacementGroup", "").replace("Ready", "")
    pg_id = request.spec.pg_id if isinstance(request, CreatePlacementGroup) else getattr(
        request, "pg_id", "")
    return f"{kind}:{pg_id}"


def create(pg_id: str) -> CreatePlacementGroup:
    return CreatePlacementGroup(request_id=0, spec=PlacementGroupSpec(
        pg_id=pg_id, bundles=({"CPU": 1.0},)))


def remove(pg_id: str) -> RemovePlacementGroup:
    return RemovePlacementGroup(request_id=0, pg_id=pg_id)


def wait(pg_id: str) -> WaitPlacementGroupReady:
    return WaitPlacementGroupReady(request_id=0, pg_id=pg_id, timeout_ns=1)


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def calls(host: FakeHost) -> PlacementGroupCalls:
    return PlacementGroupCalls(host.send)


def test_creates_are_sent_without_reading_and_the_next_call_reads_them_first(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    calls.pipeline(create("a"))
    calls.pipeline(create("b"))
    assert host.log == ["sent Create:a", "sent Create:b"]
    calls.call(wait("a"))
    assert host.log[2:] == ["read Create:a", "read Create:b", "sent Wait:a", "read Wait:a"]


def test_a_removal_reads_its_groups_creation_first_and_is_read_later(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    calls.pipeline(create("a"))
    calls.pipeline(create("b"))
    calls.pipeline(remove("b"))
    assert host.log == ["sent Create:a", "sent Create:b", "read Create:b", "sent Remove:b"]
    calls.call(GetPlacementGroup(request_id=0, pg_id="b"))
    assert host.log[4:] == ["read Create:a", "read Remove:b", "sent Get:b", "read Get:b"]


def test_a_failed_creation_is_raised_by_the_next_call_about_that_group(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    host.errors["Create:a"] = "gcs: cannot create placement group 'a': too many"
    calls.pipeline(create("a"))
    calls.pipeline(create("b"))
    calls.call(wait("b"))  # another group: fine
    with pytest.raises(ValueError, match="cannot create placement group 'a'"):
        calls.call(wait("a"))
    assert "sent Wait:a" not in host.log  # nothing asked about a group that is not there


def test_removing_a_group_whose_creation_failed_raises_that_failure(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    host.errors["Create:a"] = "gcs: cannot create placement group 'a': too many"
    calls.pipeline(create("a"))
    with pytest.raises(ValueError, match="cannot create placement group 'a'"):
        calls.pipeline(remove("a"))
    assert host.log == ["sent Create:a", "read Create:a"]


def test_a_removal_answer_with_an_error_is_not_raised(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    host.errors["Remove:zz"] = "gcs: there is no placement group 'zz' to remove"
    calls.pipeline(remove("zz"))
    calls.settle()
    assert host.log == ["sent Remove:zz", "read Remove:zz"]


def test_an_error_reply_to_a_waited_call_is_raised(
        host: FakeHost, calls: PlacementGroupCalls) -> None:
    host.errors["Wait:a"] = "gcs: placement group 'a' was removed"
    with pytest.raises(ValueError, match="was removed"):
        calls.call(wait("a"))


def test_unread_answers_are_bounded(host: FakeHost, calls: PlacementGroupCalls,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement_group_calls, "PIPELINED_MAX", 2)
    for pg_id in "abc":
        calls.pipeline(create(pg_id))
    assert host.log == ["sent Create:a", "sent Create:b", "sent Create:c", "read Create:a"]


def test_a_host_without_send_is_called_at_once() -> None:
    sent: list[str] = []

    class OldHost:
        def placement_group_call(self, request: PlacementGroupRequest) -> PlacementGroupReply:
            sent.append(_name(request))
            return PlacementGroupReply(request_id=0)

    calls = placement_group_calls.calls_of(OldHost())
    calls.pipeline(create("a"))
    assert sent == ["Create:a"]
    class NoGroups:
        pass

    with pytest.raises(NotImplementedError, match="does not support placement groups"):
        placement_group_calls.calls_of(NoGroups())
