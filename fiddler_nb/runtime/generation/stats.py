"""What a generation did: timings and, per MoE layer, where expert work ran.

`StatsRecorder` is the mutable tally the experts forward writes into; `GenerationStats` is the
frozen result handed to users. Counts are expert-token pairs (a token routed to k experts counts
k times), split by path: on a resident expert, on the CPU, or after a weight transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PATHS = ("resident", "cpu", "transfer")
PHASES = ("prefill", "decode")


class StatsRecorder:
    """Per-phase, per-layer tallies; reset at the start of each generation."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.phase = "prefill"
        self.reset()

    def reset(self) -> None:
        self.phase = "prefill"
        self.pairs = {(ph, p): [0] * self.num_layers for ph in PHASES for p in PATHS}
        self.transfers = {ph: [0] * self.num_layers for ph in PHASES}  # expert copies
        self.weight_bytes = {ph: 0 for ph in PHASES}  # expert weights copied to the fast device
        self.activation_bytes = {ph: 0 for ph in PHASES}  # activations to the CPU and back

    def add(self, layer: int, path: str, pairs: int) -> None:
        self.pairs[(self.phase, path)][layer] += pairs

    def add_transfer(self, layer: int, nbytes: int) -> None:
        self.transfers[self.phase][layer] += 1
        self.weight_bytes[self.phase] += nbytes

    def add_activations(self, nbytes: int) -> None:
        self.activation_bytes[self.phase] += nbytes

    def totals(self) -> dict[str, int]:
        """Pairs per path since the last reset, both phases and all layers together."""
        return {p: sum(sum(self.pairs[(ph, p)]) for ph in PHASES) for p in PATHS}


@dataclass(frozen=True)
class PhaseStats:
    seconds: float
    tokens: int  # tokens processed (prefill: prompt tokens x batch; decode: new tokens x batch)
    resident_pairs: tuple[int, ...]  # [L] expert-token pairs on resident experts
    cpu_pairs: tuple[int, ...]  # [L] on the CPU
    transfer_pairs: tuple[int, ...]  # [L] after copying the expert's weights
    transfers: tuple[int, ...]  # [L] expert weight copies
    weight_bytes: int
    activation_bytes: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def hit_rate(self) -> float:
        """Share of expert-token pairs that found their expert resident."""
        total = sum(self.resident_pairs) + sum(self.cpu_pairs) + sum(self.transfer_pairs)
        return sum(self.resident_pairs) / total if total else float("nan")


@dataclass(frozen=True)
class GenerationStats:
    batch_size: int
    prompt_tokens: int  # per sequence (padded length)
    new_tokens: int  # per sequence
    prefill: PhaseStats
    decode: PhaseStats
    device: str = "cpu"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def prefill_s(self) -> float:
        return self.prefill.seconds

    @property
    def decode_s(self) -> float:
        return self.decode.seconds

    @property
    def time_to_first_token_s(self) -> float:
        return self.prefill.seconds

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill.tokens_per_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode.tokens_per_s

    @property
    def bytes_moved(self) -> int:
        return (self.prefill.weight_bytes + self.prefill.activation_bytes
                + self.decode.weight_bytes + self.decode.activation_bytes)

    def table(self) -> str:
        """A plain-text summary: one row per phase."""
        head = f"{'phase':8} {'seconds':>9} {'tokens':>7} {'tok/s':>9} {'resident':>9} " \
               f"{'cpu':>7} {'transfer':>9} {'copies':>7} {'MB moved':>9}"
        rows = [head]
        for name, ph in (("prefill", self.prefill), ("decode", self.decode)):
            moved = (ph.weight_bytes + ph.activation_bytes) / 1e6
            rows.append(f"{name:8} {ph.seconds:9.4f} {ph.tokens:7d} {ph.tokens_per_s:9.2f} "
                        f"{sum(ph.resident_pairs):9d} {sum(ph.cpu_pairs):7d} "
                        f"{sum(ph.transfer_pairs):9d} {sum(ph.transfers):7d} {moved:9.2f}")
        return "\n".join(rows)


def phase_stats(rec: StatsRecorder, phase: str, seconds: float, tokens: int) -> PhaseStats:
    return PhaseStats(
        seconds=seconds, tokens=tokens,
        resident_pairs=tuple(rec.pairs[(phase, "resident")]),
        cpu_pairs=tuple(rec.pairs[(phase, "cpu")]),
        transfer_pairs=tuple(rec.pairs[(phase, "transfer")]),
        transfers=tuple(rec.transfers[phase]),
        weight_bytes=rec.weight_bytes[phase], activation_bytes=rec.activation_bytes[phase],
    )
