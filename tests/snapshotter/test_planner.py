"""Mount planning rules, checked as pure functions (no mounts, no daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshotter.layout import Layout
from snapshotter.metadata import Kind
from snapshotter.planner import (
    MODE_LABEL,
    MODE_REASON_LABEL,
    ChainUse,
    HostCapabilities,
    Mode,
    MountSpec,
    choose_mode,
    plan_mounts,
    required_mounts,
    stack_document,
)

LAYOUT = Layout(Path("/r"))
CAPABLE = HostCapabilities(erofs_in_kernel=True, privileged=True, in_user_namespace=False)


def test_no_parent_is_a_bind_of_the_upper_dir() -> None:
    for mode in (Mode.KERNEL, Mode.FUSE, None):
        assert plan_mounts(5, Kind.ACTIVE, [], mode, LAYOUT, userxattr=False) == [
            MountSpec("bind", "/r/snapshots/5/fs", ("rw", "rbind"))]
        assert plan_mounts(5, Kind.VIEW, [], mode, LAYOUT, userxattr=False) == [
            MountSpec("bind", "/r/snapshots/5/fs", ("ro", "rbind"))]


def test_kernel_mode_stacks_every_layer_nearest_first() -> None:
    assert plan_mounts(9, Kind.ACTIVE, [7, 3, 1], Mode.KERNEL, LAYOUT, userxattr=False) == [MountSpec(
        "overlay", "overlay", ("workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs",
                               "lowerdir=/r/snapshots/7/fs:/r/snapshots/3/fs:/r/snapshots/1/fs"))]
    assert plan_mounts(9, Kind.VIEW, [7, 3], Mode.KERNEL, LAYOUT, userxattr=False) == [MountSpec(
        "overlay", "overlay", ("lowerdir=/r/snapshots/7/fs:/r/snapshots/3/fs",))]


def test_a_view_of_one_lower_is_a_readonly_bind() -> None:
    assert plan_mounts(9, Kind.VIEW, [7], Mode.KERNEL, LAYOUT, userxattr=False) == [
        MountSpec("bind", "/r/snapshots/7/fs", ("ro", "rbind"))]
    # In fuse mode the whole chain is one merged tree, so every view is a bind of it.
    assert plan_mounts(9, Kind.VIEW, [7, 3, 1], Mode.FUSE, LAYOUT, userxattr=False) == [
        MountSpec("bind", "/r/snapshots/7/stack", ("ro", "rbind"))]


def test_fuse_mode_has_one_lowerdir_and_userxattr_in_a_user_namespace() -> None:
    assert plan_mounts(9, Kind.ACTIVE, [7, 3, 1], Mode.FUSE, LAYOUT, userxattr=True) == [MountSpec(
        "overlay", "overlay", ("userxattr", "workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs",
                               "lowerdir=/r/snapshots/7/stack"))]


def test_writable_root_moves_upper_and_work_only() -> None:
    layout = Layout(Path("/r"), Path("/w"))
    assert plan_mounts(9, Kind.ACTIVE, [7], Mode.KERNEL, layout, userxattr=False) == [MountSpec(
        "overlay", "overlay", ("workdir=/w/snapshots/9/work", "upperdir=/w/snapshots/9/fs",
                               "lowerdir=/r/snapshots/7/fs"))]


@pytest.mark.parametrize(("host", "refusal", "expected"), [
    (CAPABLE, None, Mode.KERNEL),
    (CAPABLE, "kernel refused layer /r/snapshots/3/layer.erofs: Invalid argument", Mode.FUSE),
    (HostCapabilities(erofs_in_kernel=False, privileged=True, in_user_namespace=False), None, Mode.FUSE),
    (HostCapabilities(erofs_in_kernel=True, privileged=False, in_user_namespace=False), None, Mode.FUSE),
    (HostCapabilities(erofs_in_kernel=True, privileged=True, in_user_namespace=True), None, Mode.FUSE),
])
def test_auto_mode_choice_and_reason(host: HostCapabilities, refusal: str | None, expected: Mode) -> None:
    choice = choose_mode(Mode.AUTO, host, refusal)
    assert choice.mode is expected
    reason = refusal or host.kernel_blocker()
    if reason:
        assert choice.reason == reason
    assert choice.labels() == {MODE_LABEL: expected.value, MODE_REASON_LABEL: choice.reason}


def test_configured_mode_wins() -> None:
    blocked = HostCapabilities(erofs_in_kernel=False, privileged=False, in_user_namespace=True)
    assert choose_mode(Mode.KERNEL, blocked).mode is Mode.KERNEL
    assert choose_mode(Mode.FUSE, CAPABLE).mode is Mode.FUSE


def test_required_mounts_count_users_per_chain() -> None:
    required = required_mounts([
        ChainUse(Mode.KERNEL, (4, 2, 1)),
        ChainUse(Mode.FUSE, (7, 5)),
        ChainUse(Mode.FUSE, (7, 5)),
        ChainUse(Mode.FUSE, (5,)),
    ])
    assert required.kernel_layers == {4, 2, 1}
    assert required.fuse_stacks == {7: (7, 5), 5: (5,)}
    assert required.users == {7: 2, 5: 1}


def test_stack_document_lists_layers_bottom_first() -> None:
    doc = stack_document([7, 3, 1], LAYOUT)
    assert [layer["image"] for layer in doc["layers"]] == [
        "/r/snapshots/1/layer.erofs", "/r/snapshots/3/layer.erofs", "/r/snapshots/7/layer.erofs"]
