"""FairQueue on its own: round-robin, FIFO, model affinity, starvation bound, batch filling."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass

from engine.queue import FairQueue

_ids = itertools.count(1)


@dataclass(frozen=True)
class Item:
    requester: str
    model: str = "m1"
    batch_key: Hashable = "64x64"
    images: int = 1
    queued_at: float = 0.0
    id: int = 0
    loras: str = ""

    @property
    def affinity(self) -> Hashable:
        """The model, or (model, LoRA set) as the engine's jobs have it."""
        return (self.model, self.loras) if self.loras else self.model

    @property
    def label(self) -> str:
        return f"{self.requester}{self.id}"


def make(spec: str, **kw: object) -> list[Item]:
    """'a a b' → items for requesters a, a, b (ids in that order)."""
    return [Item(requester=r, id=next(_ids), **kw) for r in spec.split()]  # type: ignore[arg-type]


def queue(*items: Item, wait: float = 60.0, priority: tuple[str, ...] = ()) -> FairQueue[Item]:
    q: FairQueue[Item] = FairQueue(max_model_wait_s=wait, priority_users=priority)
    for item in items:
        q.push(item)
    return q


def drain(q: FairQueue[Item], model: Hashable = "m1", now: float = 0.0, cap: int = 1) -> list[str]:
    """Requesters of each batch taken until empty, e.g. ['a', 'b', 'ab']."""
    out = []
    while batch := q.take(model, now, lambda item: cap):
        out.append("".join(item.requester for item in batch))
        model = batch[0].affinity
    return out


def test_round_robin_and_fifo_within_a_requester() -> None:
    items = make("a a a b b c")
    q = queue(*items)
    order = [b for batch in q.plan("m1", 0.0, lambda i: 1) for b in batch]
    assert [i.id for i in order] == [items[k].id for k in (0, 3, 5, 1, 4, 2)]
    assert drain(q) == ["a", "b", "c", "a", "b", "a"]


def test_plan_predicts_take() -> None:
    items = make("a a b", model="m1") + make("c a", model="m2")
    q = queue(*items)
    planned = [[i.id for i in batch] for batch in q.plan("m1", 0.0, lambda i: 2)]
    taken = []
    model: str | None = "m1"
    while batch := q.take(model, 0.0, lambda i: 2):
        taken.append([i.id for i in batch])
        model = batch[0].model
    assert planned == taken and len(q) == 0


def test_a_lora_set_is_served_like_a_model_of_its_own() -> None:
    # a: plain, b: LoRA x, c: plain, d: LoRA x. With the plain model loaded, the plain jobs go
    # first (no merge), then both LoRA jobs in one batch (one merge), not plain/x/plain/x.
    items = [
        Item(requester="a", id=next(_ids)),
        Item(requester="b", id=next(_ids), loras="x", batch_key="x"),
        Item(requester="c", id=next(_ids)),
        Item(requester="d", id=next(_ids), loras="x", batch_key="x"),
    ]
    assert drain(queue(*items), cap=2) == ["ac", "bd"]
    # With x merged (the last batch's), its jobs go first.
    assert drain(queue(*items), model=("m1", "x"), cap=2) == ["bd", "ac"]


def test_a_newcomer_goes_before_requesters_already_served() -> None:
    q = queue(*make("a a a"))
    assert drain_one(q) == "a"
    q.push(make("b")[0])
    assert drain(q) == ["b", "a", "a"]


def drain_one(q: FairQueue[Item]) -> str:
    return "".join(i.requester for i in q.take("m1", 0.0, lambda i: 1))


def test_priority_requesters_first() -> None:
    q = queue(*make("a b v v"), priority=("v",))
    assert drain(q) == ["v", "v", "a", "b"]


def test_the_loaded_model_goes_first_and_each_model_loads_once() -> None:
    items = [
        Item(requester=f"u{i % 4}", model=f"m{i % 3}", id=next(_ids), queued_at=0.0)
        for i in range(12)
    ]
    q = queue(*items)
    models = [batch[0].model for batch in q.plan("m2", 1.0, lambda i: 1)]
    assert models == ["m2"] * 4 + [models[4]] * 4 + [models[8]] * 4
    assert models[0] == "m2" and {models[4], models[8]} == {"m0", "m1"}


def test_another_model_gets_its_turn_after_max_model_wait_s() -> None:
    old = Item(requester="b", model="m2", id=next(_ids), queued_at=0.0)
    fresh = [Item(requester="a", model="m1", id=next(_ids), queued_at=100.0) for _ in range(3)]
    q = queue(old, *fresh, wait=60.0)
    assert [b[0].model for b in q.plan("m1", 59.0, lambda i: 1)] == ["m1", "m1", "m1", "m2"]
    assert [b[0].model for b in q.plan("m1", 60.0, lambda i: 1)] == ["m2", "m1", "m1", "m1"]


def test_batches_fill_round_robin_and_stop_at_an_incompatible_job() -> None:
    a1, a2 = make("a a")
    b1 = Item(requester="b", batch_key="other", id=next(_ids))
    b2, c1 = make("b c")
    q = queue(a1, a2, b1, b2, c1)
    first = q.take("m1", 0.0, lambda i: 4)
    # b's next job does not fit, so b contributes nothing (b2 never overtakes b1).
    assert [i.id for i in first] == [a1.id, c1.id, a2.id]
    assert [[i.id for i in b] for b in q.plan("m1", 0.0, lambda i: 4)] == [[b1.id], [b2.id]]


def test_images_count_toward_the_batch_limit() -> None:
    q = queue(Item(requester="a", images=3, id=next(_ids)), *make("b c"))
    assert drain(q, cap=4) == ["ab", "c"]


def test_remove_and_counts() -> None:
    a1, a2, b1 = make("a a b")
    q = queue(a1, a2, b1)
    assert q.count("a") == 2 and len(q) == 3 and a1.id in q
    assert q.remove(a1.id) == a1 and q.remove(a1.id) is None
    assert q.count("a") == 1 and [i.id for i in q.jobs()] == [a2.id, b1.id]
    assert q.remove_model("m1") == [a2, b1] and len(q) == 0


def test_sdxl_batches_are_limited_by_the_models_size() -> None:
    from engine.queue import QueueConfig, batch_limit
    from engine.request import GenerationRequest

    config = QueueConfig(max_batch=8)
    square = GenerationRequest(prompt="x", width=1024, height=1024)
    small = GenerationRequest(prompt="x", width=512, height=512)
    assert batch_limit(config, "cuda", square, "SD-1.x") == 8
    assert batch_limit(config, "cuda", square, "SDXL") == 2
    assert batch_limit(config, "cuda", small, "SDXL") == 8
    assert (
        batch_limit(QueueConfig(max_batch=8, max_batch_pixels=4 << 20), "cuda", square, "SDXL") == 4
    )
