"""A sans-IO model of Knative's Pod Autoscaler (KPA) decision, fed with queue-proxy `Stat`s.

Nothing here reads a clock or opens a socket: every call takes `now`, float seconds on one
monotonic clock (bucket boundaries fall on whole seconds of that clock). The pieces and the
Knative Serving source each one follows:

- `KpaConfig`: `config-autoscaler` names and defaults (`pkg/autoscaler/config/config.go`
  `defaultConfig`), the per-pod target (`pkg/reconciler/autoscaling/resources/target.go`
  `ResolveMetricTarget`) and the panic window (`pkg/reconciler/autoscaling/resources/metric.go`
  `MakeMetric`).
- `TimedBuckets` / `WeightedBuckets`: the 1 s bucket ring buffers that average the per-second
  samples over the stable and the panic window (`pkg/autoscaler/aggregation/bucketing.go`
  `TimedFloat64Buckets`, `WeightedFloat64Buckets`). Knative's default, the `linear` algorithm,
  is a plain mean over the valid buckets of the window; the `weighted-exponential` algorithm
  (opt-in per revision with `autoscaling.knative.dev/metric-aggregation-algorithm`) weighs the
  newest bucket most. Both are modelled; `linear` is the default here too.
- `KpaModel.record`: `pkg/autoscaler/metrics/collector.go` `collection.record` (the activator's
  proxied share is subtracted) and `MetricCollector.StableAndPanicConcurrency`.
- `KpaModel.decide`: `pkg/autoscaler/scaling/autoscaler.go` `autoscaler.Scale` (rate limits,
  panic mode, excess burst capacity), plus the parts of the KPA reconciler that turn its result
  into "is the activator in the path" (`pkg/reconciler/autoscaling/kpa/kpa.go`
  `ReconcileKind`, `computeNumActivators`) and "may this revision go to zero"
  (`pkg/reconciler/autoscaling/kpa/scaler.go` `handleScaleToZero`, simplified, see `decide`).

Not modelled: the RPS scaling metric (RPS averages are reported, never scaled on),
`scale-down-delay` (`aggregation/max.TimeWindow`), `activation-scale`, min/max scale bounds,
`scale-to-zero-pod-retention-period`, the activator probe and the SKS proxy-mode timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BUCKET_SECONDS = 1  # `pkg/autoscaler/config/config.go` `BucketSize`
TARGET_MIN = 0.01  # `pkg/apis/autoscaling/register.go` `TargetMin`
MIN_ACTIVATORS = 2  # `pkg/reconciler/autoscaling/kpa/kpa.go` `minActivators`
LINEAR = "linear"
WEIGHTED_EXPONENTIAL = "weighted-exponential"


@dataclass(frozen=True, slots=True)
class KpaConfig:
    """`config-autoscaler` keys (dashes become underscores; durations in seconds, percentages
    as in the ConfigMap) plus the revision's own knobs: `container_concurrency` (the spec's CC,
    0 = unlimited), `target` (the `autoscaling.knative.dev/target` annotation, None = unset),
    `reachable` (routed to), `aggregation_algorithm` (`linear` or `weighted-exponential`)."""

    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    container_concurrency_target_percentage: float = 70.0
    container_concurrency_target_default: float = 100.0
    target_burst_capacity: float = 211.0
    scale_to_zero_grace_period: float = 30.0
    activator_capacity: float = 100.0
    enable_scale_to_zero: bool = True
    container_concurrency: int = 0
    target: float | None = None
    reachable: bool = True
    aggregation_algorithm: str = LINEAR

    def __post_init__(self) -> None:
        # The checks of `config.go` `validate` that matter to this model.
        if self.stable_window != round(self.stable_window) or not 6 <= self.stable_window <= 3600:
            raise ValueError("stable-window must be whole seconds in [6s, 1h]")
        if not 1 <= self.panic_window_percentage <= 100:
            raise ValueError("panic-window-percentage must be in [1, 100]")
        if self.max_scale_up_rate <= 1 or self.max_scale_down_rate <= 1:
            raise ValueError("max-scale-up-rate and max-scale-down-rate must be > 1")
        if not 0 < self.target_fraction <= 1:
            raise ValueError("container-concurrency-target-percentage must be in (0, 100]")
        if self.target_burst_capacity < 0 and self.target_burst_capacity != -1:
            raise ValueError("target-burst-capacity must be >= 0 or -1")
        if self.scale_to_zero_grace_period <= 0:
            raise ValueError("scale-to-zero-grace-period must be positive")
        if self.container_concurrency < 0:
            raise ValueError("container concurrency must be >= 0")
        if self.aggregation_algorithm not in (LINEAR, WEIGHTED_EXPONENTIAL):
            raise ValueError(f"unknown aggregation algorithm {self.aggregation_algorithm!r}")

    @property
    def target_fraction(self) -> float:
        """0.7 from 70; values in (0, 1] are already fractions (`config.go` `NewConfigFromMap`)."""
        pct = self.container_concurrency_target_percentage
        return pct / 100.0 if pct > 1.0 else pct

    @property
    def total(self) -> float:
        """Concurrency one pod may take: CC, or the default 100 when CC = 0; the target
        annotation replaces it, capped at CC (`target.go` `ResolveMetricTarget`)."""
        total = float(self.container_concurrency or self.container_concurrency_target_default)
        if self.target is not None:
            total = self.target
            if self.container_concurrency:
                total = min(self.target, float(self.container_concurrency))
        return total

    @property
    def target_value(self) -> float:
        """Per-pod concurrency the KPA aims for: `max(0.01, total × fraction)` (70 by default)."""
        return max(TARGET_MIN, self.total * self.target_fraction)

    @property
    def panic_window(self) -> int:
        """Whole seconds, at least one bucket (`metric.go` `MakeMetric`: 60 s × 10% = 6 s)."""
        seconds = math.floor(self.stable_window * self.panic_window_percentage / 100.0 + 0.5)
        return max(BUCKET_SECONDS, seconds)

    @property
    def panic_threshold(self) -> float:
        """Desired panic pods / ready pods at which panic starts (200% → 2.0)."""
        return self.panic_threshold_percentage / 100.0


def _round6(value: float) -> float:
    """Go's `roundToNDigits(6, f)`: `math.Round` rounds halves away from zero."""
    return math.copysign(math.floor(abs(value) * 1e6 + 0.5), value) / 1e6


class TimedBuckets:
    """`bucketing.go` `TimedFloat64Buckets` with 1 s granularity: a ring of `window` buckets,
    indexed by whole second; samples in the same second add up. `average` is
    `TimedFloat64Buckets.WindowAverage`: the mean over the buckets between the first write
    (reset after a whole window without writes) and now; seconds with no write count as 0,
    and data older than a window is 0."""

    def __init__(self, window: float) -> None:
        self.size = math.ceil(window / BUCKET_SECONDS)
        self.buckets = [0.0] * self.size
        self.total = 0.0
        self.first_write: int | None = None
        self.last_write: int | None = None

    def record(self, now: float, value: float) -> None:
        """`TimedFloat64Buckets.Record`."""
        second = math.floor(now)
        last = self.last_write
        if last != second:
            if last is not None and second + self.size <= last:
                return  # more than a window older than the newest write: dropped
            if self.first_write is None or self.first_write > second:
                self.first_write = second
            if last is None or second > last:
                if last is None or second - last >= self.size:
                    self.first_write = second  # a whole window without data: start afresh
                    self.buckets = [0.0] * self.size
                    self.total = 0.0
                else:
                    for i in range(last + 1, second + 1):  # clear the seconds skipped over
                        self.total -= self.buckets[i % self.size]
                        self.buckets[i % self.size] = 0.0
                self.last_write = second
        self.buckets[second % self.size] += value
        self.total += value

    def is_empty(self, now: float) -> bool:
        """No write within the last window (`TimedFloat64Buckets.IsEmpty`)."""
        return self.last_write is None or math.floor(now) - self.last_write > self.size

    def average(self, now: float) -> float:
        second = math.floor(now)
        if self.last_write is None or self.first_write is None:
            return 0.0
        gap = second - self.last_write
        valid = self.last_write - self.first_write + 1
        if gap <= 0:
            return _round6(self.total / min(valid, self.size))
        if gap < self.size:
            # Buckets after the last write hold data a window old: leave them out.
            stale = sum(self.buckets[i % self.size] for i in range(self.last_write + 1, second + 1))
            return _round6((self.total - stale) / min(valid, self.size - gap))
        return 0.0


class WeightedBuckets(TimedBuckets):
    """`bucketing.go` `WeightedFloat64Buckets`: the same ring, averaged with exponentially
    decaying weights, newest first. The coefficient makes the weights of one window sum to
    0.9999, but is never below 0.2 (`computeSmoothingCoeff`); seconds since the last write count
    as zeros. No first-write bookkeeping: a young window averages in zeros."""

    def __init__(self, window: float) -> None:
        super().__init__(window)
        self.coefficient = max(1 - math.pow(1 - 0.9999, 1 / self.size), 0.2)

    def average(self, now: float) -> float:
        """`WeightedFloat64Buckets.WindowAverage`."""
        if self.is_empty(now) or self.last_write is None:
            return 0.0
        second = math.floor(now)
        multiplier, count = self.coefficient, self.size
        if second > self.last_write:
            zeros = second - self.last_write
            multiplier *= math.pow(1 - self.coefficient, zeros)
            count -= zeros
        result = 0.0
        for i in range(count):
            result += self.buckets[(self.last_write - i) % self.size] * multiplier
            multiplier *= 1 - self.coefficient
        return result


@dataclass(frozen=True, slots=True)
class Stat:
    """The autoscaler's `Stat` (`pkg/autoscaler/metrics/stat.proto`): concurrencies are
    time-weighted averages over the pod's last 1 s window, counts are per second."""

    pod_name: str = ""
    average_concurrent_requests: float = 0.0
    average_proxied_concurrent_requests: float = 0.0
    request_count: float = 0.0
    proxied_request_count: float = 0.0
    process_uptime: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One `decide`. Concurrencies and RPS are revision totals (all pods together); `target` and
    `total` are per pod. `valid` is False when no stat arrived for a whole stable window
    (Knative's `ErrNoData`: no scaling then); the numbers are 0 in that case.
    `desired_pods` is what the decider asks for; `scale_to_zero` tells whether the revision may
    actually go to zero now; `activator_in_path` is the SKS proxy mode of the KPA reconciler."""

    now: float
    valid: bool
    ready_pods: int
    stable_concurrency: float
    panic_concurrency: float
    stable_rps: float
    panic_rps: float
    target: float
    total: float
    desired_stable_pods: int
    desired_panic_pods: int
    desired_pods: int
    panicking: bool
    excess_burst_capacity: int
    activator_in_path: bool
    activators: int
    scale_to_zero: bool
    why: str


def _no_data(now: float, ready_pods: int, panicking: bool, why: str) -> Decision:
    return Decision(
        now=now,
        valid=False,
        ready_pods=ready_pods,
        stable_concurrency=0.0,
        panic_concurrency=0.0,
        stable_rps=0.0,
        panic_rps=0.0,
        target=0.0,
        total=0.0,
        desired_stable_pods=0,
        desired_panic_pods=0,
        desired_pods=0,
        panicking=panicking,
        excess_burst_capacity=0,
        activator_in_path=True,
        activators=0,
        scale_to_zero=False,
        why=why,
    )


class KpaModel:
    """One revision's collector buckets and decider state.

    `ready_pods` at construction is the ready count when the autoscaler starts: above 1 it
    starts in panic holding that many pods until it has a stable window of data
    (`autoscaler.go` `newAutoscaler`)."""

    def __init__(self, config: KpaConfig | None = None, now: float = 0.0, ready_pods: int = 0):
        self.config = config = config or KpaConfig()
        kind = {LINEAR: TimedBuckets, WEIGHTED_EXPONENTIAL: WeightedBuckets}[
            config.aggregation_algorithm
        ]
        self._stable, self._panic = kind(config.stable_window), kind(config.panic_window)
        self._stable_rps, self._panic_rps = kind(config.stable_window), kind(config.panic_window)
        self.panic_time: float | None = now if ready_pods > 1 else None
        self.max_panic_pods = ready_pods
        self.zero_since: float | None = None

    def record(self, now: float, stat: Stat) -> None:
        """Add one (aggregated) scrape at `now` (`collector.go` `collection.record`)."""
        concurrency = stat.average_concurrent_requests - stat.average_proxied_concurrent_requests
        rps = stat.request_count - stat.proxied_request_count
        self._stable.record(now, concurrency)
        self._panic.record(now, concurrency)
        self._stable_rps.record(now, rps)
        self._panic_rps.record(now, rps)

    def decide(self, now: float, ready_pods: int) -> Decision:
        """`autoscaler.go` `autoscaler.Scale`, then the reconciler's reading of the result.

        Scale-to-zero, simplified from `scaler.go` `handleScaleToZero`: the revision may go to
        zero once the decider has wanted 0 pods continuously for `scale-to-zero-grace-period`
        (Knative counts from when the PA is marked inactive, which follows a 0 decision)."""
        cfg = self.config
        if self._stable.is_empty(now):
            why = f"no data for the last {cfg.stable_window:g}s window: no decision"
            return _no_data(now, ready_pods, self.panic_time is not None, why)
        stable, panic = self._stable.average(now), self._panic.average(now)
        target = cfg.target_value
        ready = max(1.0, float(ready_pods))
        max_up = math.ceil(cfg.max_scale_up_rate * ready)
        max_down = math.floor(ready / cfg.max_scale_down_rate) if cfg.reachable else 0
        want_stable, want_panic = math.ceil(stable / target), math.ceil(panic / target)
        desired_stable = min(max(want_stable, max_down), max_up)
        desired_panic = min(max(want_panic, max_down), max_up)
        over = want_panic / ready >= cfg.panic_threshold
        ratio = f"panic wants {want_panic}/{ready:g} ready = {want_panic / ready:.2f}x"
        if over:
            if self.panic_time is None:
                reason = f"entered panic: {ratio} >= {cfg.panic_threshold:g}x"
            else:
                reason = f"panicking: {ratio} >= {cfg.panic_threshold:g}x"
            self.panic_time = now
        elif self.panic_time is not None and self.panic_time + cfg.stable_window < now:
            reason = f"left panic: {cfg.stable_window:g}s under {cfg.panic_threshold:g}x"
            self.panic_time, self.max_panic_pods = None, 0
        elif self.panic_time is not None:
            left = self.panic_time + cfg.stable_window - now
            reason = f"panicking: under {cfg.panic_threshold:g}x, {left:g}s until it may leave"
        else:
            reason = "stable mode"
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic, self.max_panic_pods)
            if desired > max(desired_stable, desired_panic):
                reason += f"; never scaling down in panic, holding {desired}"
            self.max_panic_pods = desired
        wanted = want_panic if self.panic_time is not None else want_stable
        if desired > wanted and desired == max_down and self.panic_time is None:
            reason += f"; scale-down limited by max-scale-down-rate {cfg.max_scale_down_rate:g}"
        elif desired < wanted and desired == max_up:
            reason += f"; scale-up limited by max-scale-up-rate {cfg.max_scale_up_rate:g}"
        tbc = cfg.target_burst_capacity
        ebc = -1 if tbc < 0 else 0 if tbc == 0 else math.floor(ready_pods * cfg.total - tbc - panic)
        activator = not (desired > 0 and ebc >= 0)
        if desired == 0:
            if self.zero_since is None:
                self.zero_since = now
            idle = now - self.zero_since
            to_zero = cfg.enable_scale_to_zero and idle >= cfg.scale_to_zero_grace_period
            reason += f"; 0 pods wanted for {idle:g}s" + (
                ", may scale to zero"
                if to_zero
                else f" (grace period {cfg.scale_to_zero_grace_period:g}s)"
                if cfg.enable_scale_to_zero
                else ", scale to zero disabled"
            )
        else:
            self.zero_since, to_zero = None, False
        capacity = ready_pods * cfg.total + max(tbc, 0.0)
        activators = max(MIN_ACTIVATORS, math.ceil(capacity / cfg.activator_capacity))
        if tbc == 0:
            activators = MIN_ACTIVATORS
        sums = f"stable {stable:g}/{target:g} -> {want_stable}"
        sums += f", panic {panic:g}/{target:g} -> {want_panic}"
        return Decision(
            now=now,
            valid=True,
            ready_pods=ready_pods,
            stable_concurrency=stable,
            panic_concurrency=panic,
            stable_rps=self._stable_rps.average(now),
            panic_rps=self._panic_rps.average(now),
            target=target,
            total=cfg.total,
            desired_stable_pods=desired_stable,
            desired_panic_pods=desired_panic,
            desired_pods=desired,
            panicking=self.panic_time is not None,
            excess_burst_capacity=ebc,
            activator_in_path=activator,
            activators=activators,
            scale_to_zero=to_zero,
            why=f"{reason} ({sums})",
        )
