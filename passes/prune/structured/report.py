"""What a structured pruning run did, group by group, and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GroupRecord:
    id: int
    chain: str
    channels_before: int
    channels_after: int
    reason: str | None = None  # why the group was left whole (None: it was cut, or kept all at this rate)
    importance: str | None = None  # the score actually used (after fallbacks)
    merged: int = 0  # merge: channels folded into a twin rather than dropped
    note: str | None = None  # e.g. why merge fell back to magnitude for this group
    key: str | None = None  # the group's stable name (``ChannelGroup.key``), as ``group_rates`` takes it
    rate: float | None = None  # the rate it was cut at (None: left whole); ``group_rates`` replays it

    @property
    def kept(self) -> int:
        return self.channels_after


@dataclass
class StructuredReport:
    method: str
    rate: float  # the uniform share of channels removed from each prunable group
    importance: str
    round_to: int
    target: str = "channels"
    target_value: float | None = None
    groups: list[GroupRecord] = field(default_factory=list)
    parameters_before: int = 0
    parameters_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    macs_input_shapes: dict | None = None
    # mean compensation (``compensate``): consumers whose biases kept the removed channels' means, of how many
    compensated: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[GroupRecord]:
        return [g for g in self.groups if g.channels_after < g.channels_before]

    @property
    def left_whole(self) -> list[GroupRecord]:
        return [g for g in self.groups if g.reason]

    @property
    def channels_before(self) -> int:
        return sum(g.channels_before for g in self.groups if not g.reason)

    @property
    def channels_after(self) -> int:
        return sum(g.channels_after for g in self.groups if not g.reason)

    def ratio(self, what: str) -> float:
        before, after = getattr(self, f"{what}_before"), getattr(self, f"{what}_after")
        return after / before if before else 1.0

    @property
    def summary(self) -> str:
        return (f"{self.method}: {len(self.pruned)} of {len(self.groups)} channel groups cut "
                f"(rate {self.rate:.3f}, {self.importance}, round_to {self.round_to}); "
                f"parameters ×{self.ratio('parameters'):.3f}, MACs ×{self.ratio('macs'):.3f}; "
                f"{len(self.left_whole)} group{'' if len(self.left_whole) == 1 else 's'} left whole"
                + (self._why_none() if not self.pruned and self.left_whole else "") + self._compensated())

    def _compensated(self) -> str:
        done = self.compensated
        if not done or not self.pruned:
            return ""
        if not done["consumers"]:
            return (f"; compensate: none of the {done['of']} consumers could keep the removed channels' means "
                    "(padded k×k Convs, or no bias of one value per output)")
        return (f"; removed channels' means kept in {done['consumers']} of {done['of']} consumers' biases "
                f"({done['examples']} examples)")

    def _why_none(self) -> str:
        """Why no group was cut, in the summary: openWakeWord's wake-word heads (LayerNorm spelled out in
        ReduceMean over the channels) read "0 of 3 channel groups cut; 3 groups left whole" and no reason."""
        return " (" + "; ".join(f"{why} ×{n}" for why, n in self._reasons().items()) + ")"

    def _reasons(self) -> dict[str, int]:
        reasons: dict[str, int] = {}
        for g in self.left_whole:
            key = g.reason.split(": ", 1)[-1]
            reasons[key] = reasons.get(key, 0) + 1
        return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict:
        """The report's details: everything but ``summary`` and ``notes``, which the pass returns as
        its typed fields."""
        data = asdict(self)
        del data["notes"]
        data["achieved"] = {"parameters_ratio": round(self.ratio("parameters"), 6),
                            "macs_ratio": round(self.ratio("macs"), 6),
                            "channels_before": self.channels_before, "channels_after": self.channels_after}
        data["left_whole_reasons"] = self._reasons()
        return data
