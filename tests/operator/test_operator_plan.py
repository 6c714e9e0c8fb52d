"""The plan: scaling, healing and rolling decisions (pure, property-based)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from reactive_operator.plan import PodView, plan

HASH = "new"


def pod(ordinal: int, **kw: object) -> PodView:
    base = PodView(
        name=f"demo-{ordinal}",
        ordinal=ordinal,
        spec_hash=HASH,
        replicas_annotation="3",
        phase="Running",
        ready=True,
        ip=f"10.0.0.{ordinal + 2}",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_steady_state_plans_nothing() -> None:
    todo = plan(
        replicas=3, spec_hash=HASH, pods=[pod(i) for i in range(3)], rbac_ordinals={0, 1, 2}
    )
    assert todo.empty


def test_missing_pod_is_recreated_with_its_rbac() -> None:
    todo = plan(replicas=3, spec_hash=HASH, pods=[pod(0), pod(2)], rbac_ordinals={0, 2})
    assert todo.create_pods == (1,)
    assert todo.create_rbac == (1,)
    assert todo.delete_pods == ()
    assert todo.roll is None


def test_scale_down_deletes_highest_first_and_touches_nobody_else() -> None:
    pods = [pod(i, replicas_annotation="5") for i in range(5)]
    todo = plan(replicas=2, spec_hash=HASH, pods=pods, rbac_ordinals=set(range(5)))
    assert todo.delete_pods == ("demo-4", "demo-3", "demo-2")
    assert todo.annotate_replicas == ("demo-0", "demo-1")
    # RBAC goes only once the pod is gone.
    assert todo.delete_rbac == ()
    gone = plan(replicas=2, spec_hash=HASH, pods=pods[:2], rbac_ordinals=set(range(5)))
    assert gone.delete_rbac == (4, 3, 2)


def test_scale_up_creates_only_new_ordinals() -> None:
    pods = [pod(i) for i in range(3)]
    todo = plan(replicas=5, spec_hash=HASH, pods=pods, rbac_ordinals={0, 1, 2})
    assert todo.create_pods == (3, 4)
    assert todo.delete_pods == ()
    assert todo.roll is None
    assert set(todo.annotate_replicas) == {"demo-0", "demo-1", "demo-2"}


def test_failed_pod_is_deleted_for_recreation() -> None:
    pods = [pod(0), pod(1, phase="Failed", ready=False), pod(2)]
    todo = plan(replicas=3, spec_hash=HASH, pods=pods, rbac_ordinals={0, 1, 2})
    assert todo.delete_pods == ("demo-1",)
    assert todo.create_pods == ()


def test_roll_one_at_a_time_and_only_when_all_ready() -> None:
    pods = [pod(i, spec_hash="old") for i in range(3)]
    todo = plan(replicas=3, spec_hash=HASH, pods=pods, rbac_ordinals={0, 1, 2})
    assert todo.roll == "demo-2"
    pods[1] = replace(pods[1], ready=False)
    blocked = plan(replicas=3, spec_hash=HASH, pods=pods, rbac_ordinals={0, 1, 2})
    assert blocked.roll is None
    assert blocked.notes


def test_terminating_pod_is_not_recreated_yet() -> None:
    pods = [pod(0), pod(1, deleting=True, ready=False), pod(2)]
    todo = plan(replicas=3, spec_hash=HASH, pods=pods, rbac_ordinals={0, 1, 2})
    assert todo.create_pods == ()
    assert todo.delete_pods == ()


worlds = st.dictionaries(
    st.integers(min_value=0, max_value=12),
    st.tuples(
        st.sampled_from(["Running", "Pending", "Failed"]),
        st.booleans(),
        st.sampled_from([HASH, "old"]),
        st.sampled_from(["1", "3", "12", None]),
    ),
    max_size=13,
)


@given(world=worlds, replicas=st.integers(min_value=1, max_value=12))
def test_repeated_planning_converges_to_the_desired_pods(
    world: dict[int, tuple[str, bool, str, str | None]], replicas: int
) -> None:
    pods = {
        o: pod(o, phase=ph, ready=ready and ph == "Running", spec_hash=h, replicas_annotation=a)
        for o, (ph, ready, h, a) in world.items()
    }
    rbac = set(world)
    touched_other = set()
    for _ in range(4 * 13 + 4):  # each step makes progress; bounded
        todo = plan(replicas=replicas, spec_hash=HASH, pods=list(pods.values()), rbac_ordinals=rbac)
        if todo.empty and all(p.ready for p in pods.values()):
            break  # (an empty plan with a pod not ready waits for it to start)
        assert todo.roll is None or all(p.ready for p in pods.values() if p.ordinal < replicas)
        for name in todo.delete_pods:
            ordinal = int(name.rsplit("-", 1)[1])
            if ordinal < replicas:
                touched_other.add(ordinal)
                assert pods[ordinal].phase in ("Failed", "Succeeded")
            del pods[ordinal]
        if todo.roll:
            del pods[int(todo.roll.rsplit("-", 1)[1])]
        rbac |= set(todo.create_rbac)
        rbac -= set(todo.delete_rbac)
        for o in todo.create_pods:
            assert o in rbac, "RBAC is created no later than its pod"
            pods[o] = pod(o, replicas_annotation=str(replicas), ready=False, phase="Pending")
        for name in todo.annotate_replicas:
            o = int(name.rsplit("-", 1)[1])
            pods[o] = replace(pods[o], replicas_annotation=str(replicas))
        # pods start eventually
        pods = {o: replace(p, phase="Running", ready=True) for o, p in pods.items()}
    else:
        raise AssertionError("plan did not settle")
    assert sorted(pods) == list(range(replicas))
    assert rbac == set(range(replicas))
    assert all(
        p.spec_hash == HASH and p.replicas_annotation == str(replicas) for p in pods.values()
    )
    # Healthy pods below `replicas` are only ever deleted to roll them.
    assert all(world[o][0] == "Failed" for o in touched_other)
