"""Model groups: one pool of replicas per model, and how a request finds its group.

A worker may run several models, each on its own servers (a 70B for QA, an 8B for
paraphrase). Each model is a :class:`ModelGroup`: an :class:`EndpointPool` whose
endpoints carry their own adaptive limit, breaker and rate budget, so a group that
is saturated or failing leaves the others alone. The request's ``model`` picks the
group; a model no group is named after goes to the default group (the one-group
shorthand serves whatever model a stage names).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from streamsynth.llm.pool import EndpointPool
from streamsynth.llm.types import ChatRequest

__all__ = ["ModelGroup", "ModelGroups", "affinity_key"]


@dataclass(eq=False)
class ModelGroup:
    """The replicas serving one model, and how to talk to them."""

    name: str
    pool: EndpointPool
    #: Send the stage's priority as vLLM's ``priority`` body field (servers started
    #: with ``--scheduling-policy priority``; others reject any value but 0).
    send_priority: bool = False


class ModelGroups:
    """The groups by model name; the first one is the default."""

    def __init__(self, groups: Sequence[ModelGroup]) -> None:
        if not groups:
            raise ValueError("at least one model group is needed")
        self._by_name: dict[str, ModelGroup] = {g.name: g for g in groups}
        if len(self._by_name) != len(groups):
            raise ValueError("model group names must be unique")
        self.default = groups[0]

    def __iter__(self) -> Iterator[ModelGroup]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def by_name(self) -> Mapping[str, ModelGroup]:
        return self._by_name

    def for_model(self, model: str) -> ModelGroup:
        return self._by_name.get(model, self.default)


def affinity_key(request: ChatRequest) -> str | None:
    """What decides a request's home replica: its stage and system prompt.

    A stage's requests share the system prompt and the prompt template's text, the
    prefix a server's prefix cache can reuse, so they should meet on one replica.
    Requests with neither a stage nor a system prompt have no key (least loaded).
    """
    messages = request.messages
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if not request.stage and not system:
        return None
    return f"{request.model}\0{request.stage}\0{system}"
