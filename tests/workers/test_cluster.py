"""workers.cluster.shutdown: what get_client started is closed, client first; a client on
someone else's cluster is left alone unless the caller owns it."""

from __future__ import annotations

from workers.cluster import shutdown


class _Closable:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def close(self) -> None:
        self.log.append(self.name)


def test_shutdown_closes_what_get_client_started():
    log: list[str] = []
    shutdown(_Closable("client", log), _Closable("cluster", log))
    assert log == ["client", "cluster"]


def test_shutdown_leaves_a_joined_or_given_client_open_unless_owned():
    log: list[str] = []
    shutdown(_Closable("client", log), None)
    assert log == []
    shutdown(_Closable("client", log), None, own_client=True)
    assert log == ["client"]
    shutdown(None, None, own_client=True)  # a runner stopped before it started
    assert log == ["client"]
