"""Rendezvous placement of tenants over nodes: every node computes the same owner, and a node
joining or leaving moves only the tenants it must."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from taskyard.domain.leases import owner_among

tenants = st.lists(st.uuids(), min_size=1, max_size=50, unique=True)
names = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True)


def placement(keys: list[uuid.UUID], nodes: list[str]) -> dict[uuid.UUID, str | None]:
    return {key: owner_among(key, nodes) for key in keys}


@given(tenants, names)
def test_the_owner_does_not_depend_on_the_order_nodes_are_listed_in(
    keys: list[uuid.UUID], nodes: list[str]
) -> None:
    assert placement(keys, nodes) == placement(keys, list(reversed(nodes)))


@given(tenants, names, st.text(min_size=1, max_size=12))
def test_a_joining_node_takes_tenants_only_for_itself(
    keys: list[uuid.UUID], nodes: list[str], joining: str
) -> None:
    before = placement(keys, nodes)
    after = placement(keys, [*nodes, joining] if joining not in nodes else nodes)
    for key in keys:
        assert after[key] in (before[key], joining)


@given(tenants, names.filter(lambda nodes: len(nodes) > 1), st.data())
def test_a_leaving_node_moves_its_own_tenants_only(
    keys: list[uuid.UUID], nodes: list[str], data: st.DataObject
) -> None:
    leaving = data.draw(st.sampled_from(nodes))
    before = placement(keys, nodes)
    after = placement(keys, [node for node in nodes if node != leaving])
    for key in keys:
        if before[key] != leaving:
            assert after[key] == before[key]
        assert after[key] != leaving


def test_no_nodes_means_no_owner() -> None:
    assert owner_among(uuid.uuid4(), []) is None
